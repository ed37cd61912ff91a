"""`wan-worker models list | download | verify`: what each model needs, fetching it from the hub, and
checking the files present (safetensors headers only).

    wan-worker models list [--json]
    wan-worker models download KEY-or-PRESET... [--with-loras | --no-loras] [--lora NAME ...] [--layout L]
                               [--annotator canny|depth|flow ...]
    wan-worker models verify KEY-or-PRESET...

Downloads honour HF_ENDPOINT and HF_TOKEN; on a terminal each file gets a progress bar, otherwise
one JSON line per file is printed. Exit status: 0 done, 1 a file failed (or verify found a bad one),
2 an unknown model.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any, Callable

from wan_engine.annotator_files import KINDS as ANNOTATORS
from worker.config import WorkerConfig, add_setting_arguments

MODELS_SETTINGS = ("models_dir", "log_format", "log_level")


def add_models_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="models_action", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="every model and preset, its files and whether they are present")
    listing.add_argument("--json", action="store_true", help="print JSON instead of a table")
    download = actions.add_parser("download", help="fetch the files models need from the Hugging Face hub")
    download.add_argument("keys", nargs="*", metavar="KEY", help="model definitions or presets")
    loras = download.add_mutually_exclusive_group()
    loras.add_argument("--with-loras", dest="with_loras", action="store_true", default=True,
                       help="also fetch the LoRAs the models apply by default [default]")
    loras.add_argument("--no-loras", dest="with_loras", action="store_false", help="skip the default LoRAs")
    download.add_argument("--lora", action="append", default=[], metavar="NAME",
                          help="also fetch this LoRA (alias, file name or URL); repeatable")
    download.add_argument("--annotator", action="append", default=[], choices=ANNOTATORS,
                          help="also fetch a structure-guidance annotator's weights (docs/guidance.md); repeatable")
    download.add_argument("--layout", help="which published checkpoint layout to fetch (`models list` names each "
                                           "model's layouts) [wan2gp: Wan2GP's single files]")
    verify = actions.add_parser("verify", help="check the files of models from their safetensors headers")
    verify.add_argument("keys", nargs="+", metavar="KEY")
    for sub in (listing, download, verify):
        add_setting_arguments(sub, MODELS_SETTINGS)


def models_command(args: argparse.Namespace, config: WorkerConfig) -> int:
    from wan_engine.errors import InvalidRequest
    from wan_engine.registry import ModelRegistry

    registry = ModelRegistry(config.models_dir)
    try:
        specs = [registry.get(key) for key in getattr(args, "keys", [])]
        if getattr(args, "layout", None):
            specs = [registry.with_layout(spec, args.layout) for spec in specs]
    except InvalidRequest as error:  # an unknown model, or a layout the model does not offer
        print(f"wan-worker models {args.models_action}: {error.rule}", file=sys.stderr)
        return 2
    if args.models_action == "list":
        return list_models(registry, as_json=args.json)
    if args.models_action == "download":
        if not specs and not args.lora and not args.annotator:
            print("wan-worker models download: name at least one model, preset, --lora or --annotator", file=sys.stderr)
            return 2
        return download_models(registry, specs, with_loras=args.with_loras, extra_loras=args.lora,
                               annotators=args.annotator)
    return verify_models(registry, specs)


# ---- list -----------------------------------------------------------------------------------------

def model_listing(registry: Any) -> list[dict[str, Any]]:
    """One entry per definition and preset (the JSON of `models list --json`)."""
    entries = []
    for key in registry.known_keys:
        spec = registry.get(key)
        files = [
            {"role": f.role, "name": f.download_name, "alternatives": list(f.names[1:]),
             "present": f.present is not None,
             "path": str(f.present) if f.present else None,
             "size": f.present.stat().st_size if f.present else None,
             "source": f.source.url if f.source else None}
            for f in registry.needed_files(spec)
        ]  # fmt: skip
        layouts = {name: all(f.present is not None for f in registry.needed_files(layout, with_loras=False))
                   for name, layout in registry.layouts(spec).items()}  # fmt: skip
        entries.append({
            "key": key, "definition": spec.key, "preset": spec.preset, "name": spec.name, "family": spec.family,
            "architecture": spec.architecture, "vace": spec.is_vace, "dual_expert": spec.is_dual_expert,
            "default_loras": list(spec.loras), "complete": all(f["present"] for f in files), "files": files,
            "layouts": [{"layout": name, "complete": complete} for name, complete in layouts.items()],
        })  # fmt: skip
    return entries


def list_models(registry: Any, *, as_json: bool) -> int:
    entries = model_listing(registry)
    if as_json:
        print(json.dumps({"models_dir": str(registry.models_dir), "models": entries}, indent=2))
        return 0
    header = ("model", "family", "architecture", "vace", "experts", "files present", "loras", "layouts (* complete)")
    rows = [(e["key"] + (f" -> {e['definition']}" if e["preset"] else ""), e["family"], e["architecture"],
             "yes" if e["vace"] else "no", "2" if e["dual_expert"] else "1",
             f"{sum(f['present'] for f in e['files'])}/{len(e['files'])}", str(len(e["default_loras"])),
             " ".join(f"{l['layout']}{'*' if l['complete'] else ''}" for l in e["layouts"]))
            for e in entries]  # fmt: skip
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]
    for row in (header, *rows):
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip())
    print(f"\nfolder: {registry.models_dir}; `wan-worker models list --json` names every file and its source")
    return 0


# ---- download -------------------------------------------------------------------------------------

def download_models(registry: Any, specs: list[Any], *, with_loras: bool, extra_loras: list[str],
                    annotators: Sequence[str] = ()) -> int:
    from wan_engine.annotator_files import needed_annotator_files
    from wan_engine.hub import fetch_needed

    needed: dict[str, Any] = {}
    for spec in specs:
        for file in registry.needed_files(spec, with_loras=with_loras):
            needed.setdefault(file.download_name, file)
    for file in registry.needed_loras(extra_loras):
        needed.setdefault(file.download_name, file)
    for kind in annotators:
        for file in needed_annotator_files(kind, registry.models_dir):
            needed.setdefault(file.download_name, file)
    terminal = sys.stdout.isatty()
    failures = fetch_needed(list(needed.values()), registry.models_dir, on_file=_file_reporter(terminal),
                            show_progress=terminal, stop_on_failure=False)  # fmt: skip
    if failures:
        print(f"wan-worker models download: {len(failures)} of {len(needed)} files failed", file=sys.stderr)
        return 1
    return 0


def _file_reporter(terminal: bool) -> Callable[[dict[str, Any]], None]:
    """One JSON line per file for logs and scripts; a short line on a terminal (progress bars come
    from huggingface_hub)."""

    def report(event: dict[str, Any]) -> None:
        if not terminal:
            print(json.dumps(event), flush=True)
            return
        size = f"{event['bytes'] / 2**20:.1f} MiB" if event.get("bytes") is not None else ""
        detail = event.get("error") or size
        print(f"[{event['index']}/{event['files']}] {event['status']:<10} {event['file']}  {detail}", flush=True)

    return report


# ---- verify ---------------------------------------------------------------------------------------

def verify_models(registry: Any, specs: list[Any]) -> int:
    from wan_engine.checkpoints import verify_model_files
    from wan_engine.errors import LoadError, WeightsMissing

    status = 0
    for spec in specs:
        try:
            files = registry.files_for(spec)  # the first complete layout
            verify_model_files(spec, files)
        except (WeightsMissing, LoadError) as error:
            print(json.dumps({"model": spec.preset or spec.key, "ok": False, "error": str(error)}))
            status = 1
            continue
        print(json.dumps({"model": spec.preset or spec.key, "ok": True, "layout": files.layout}))
    return status
