"""What getting a model ready costs: the download of its files (optional), the header check the engine
runs before every load, and the load itself.

    python bench/models.py tiny_vace_2_2 --models-dir DIR                 # files already there (CPU)
    python bench/models.py vace_22_14b --models-dir /srv/wan/models --download --device cuda

--download fetches the missing files of the model's own (wan2gp) layout first (wan_engine.hub, so
HF_ENDPOINT / HF_TOKEN apply) and times it; otherwise the first complete layout is measured, as the
engine would load it. The header check (wan_engine.checkpoints.verify_model_files) is timed cold, the first in
the process (it imports the network code), and warm. The load is Engine.load on --device (bf16 on a
GPU, float32 on the CPU). Prints one JSON object.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from wan_engine.checkpoints import verify_model_files
from wan_engine.engine import Engine
from wan_engine.hub import fetch_needed
from wan_engine.registry import ModelRegistry


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="definition key or preset")
    parser.add_argument("--models-dir", type=Path, required=True)
    parser.add_argument("--download", action="store_true", help="fetch missing files first, and time it")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    registry = ModelRegistry(args.models_dir)
    spec = registry.get(args.model)
    report: dict[str, object] = {"model": args.model, "device": args.device}
    if args.download:
        started = time.perf_counter()
        events: list[dict] = []
        fetch_needed(registry.needed_files(spec), args.models_dir, on_file=events.append)
        seconds = time.perf_counter() - started
        fetched = sum(e["bytes"] for e in events if e["status"] == "downloaded")
        report.update(download_seconds=round(seconds, 3), downloaded_bytes=fetched,
                      download_mb_per_second=round(fetched / 1e6 / seconds, 1) if fetched else None)  # fmt: skip
    files = registry.files_for(spec)
    sizes = [p.stat().st_size for paths in files.experts.values() for p in paths] + [
        files.vae.stat().st_size, files.text_encoder.stat().st_size
    ]
    report.update(layout=files.layout, checkpoint_bytes=sum(sizes))
    for label in ("verify_seconds_cold", "verify_seconds_warm"):
        started = time.perf_counter()
        verify_model_files(spec, files)
        report[label] = round(time.perf_counter() - started, 4)
    dtype = torch.float32 if args.device == "cpu" else torch.bfloat16
    engine = Engine(args.models_dir, device=args.device, dtype=dtype)
    started = time.perf_counter()
    engine.load(spec.preset or spec.key)
    report["load_seconds"] = round(time.perf_counter() - started, 3)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
