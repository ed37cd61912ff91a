"""LoRA names as users write them -> the file in `<models_dir>/loras/` (and where to download it).

A name may be a URL or a path (its file name counts), a file stem with or without `.safetensors`,
a short name from the alias table `defaults/loras.json` (`{"CausVid": {"file": ..., "url": ...}}`),
or a distinctive part of a file stem. Resolution, case-insensitive throughout:
1. a file whose stem equals the name's stem;
2. the alias table's file for that name;
3. the one file whose stem contains the name; several such files are an error listing them.
This module does not import torch (the parameter schema resolves names with it).
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

from wan_engine.errors import InvalidRequest
from wan_engine.hub import HubFile, parse_hub_url

DEFAULT_DEFINITIONS_DIR = Path(__file__).resolve().parent.parent / "defaults"
LORAS_FOLDER = "loras"  # inside models_dir
LORA_SUFFIX = ".safetensors"
LORA_ALIASES_FILE = "loras.json"  # inside the definitions folder


@dataclass(frozen=True)
class LoraAlias:
    """A short name's file (in the loras folder) and its source."""

    name: str
    file: str
    source: HubFile | None


@dataclass(frozen=True)
class LoraFile:
    """Where a named LoRA is, or would be once downloaded: `name` is relative to models_dir."""

    name: str
    source: HubFile | None
    present: Path | None


def read_lora_aliases(defaults_dir: str | Path = DEFAULT_DEFINITIONS_DIR) -> dict[str, LoraAlias]:
    """The alias table of a definitions folder, keyed by lower-case short name (empty without one)."""
    return dict(_read_aliases(Path(defaults_dir) / LORA_ALIASES_FILE))


@lru_cache(maxsize=8)
def _read_aliases(path: Path) -> tuple[tuple[str, LoraAlias], ...]:
    if not path.is_file():
        return ()
    try:
        table = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from None
    aliases = []
    for name, entry in table.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("file"), str):
            raise ValueError(f"{path}: {name!r} needs a \"file\" (and a \"url\" to be downloadable)")
        source = parse_hub_url(entry["url"]) if "url" in entry else None
        if "url" in entry and source is None:
            raise ValueError(f"{path}: {name!r}: url is not a hub resolve URL: {entry['url']}")
        aliases.append((name.lower(), LoraAlias(name, entry["file"], source)))
    return tuple(aliases)


def lora_file_stem(name: str) -> str:
    """The file stem a LoRA name stands for: a URL or a path by its file name, with or without
    the .safetensors extension."""
    path = urlsplit(name).path if "://" in name else name
    file = PurePosixPath(path.replace("\\", "/")).name
    return file[: -len(LORA_SUFFIX)] if file.lower().endswith(LORA_SUFFIX) else file


def resolve_lora_name(
    name: str, loras_dir: str | Path, aliases: Mapping[str, LoraAlias] | None = None
) -> Path:
    """The file in `loras_dir` that `name` means (see the module docstring); InvalidRequest on the
    field lora_names when there is none, or more than one by part of a stem."""
    loras_dir = Path(loras_dir)
    aliases = read_lora_aliases() if aliases is None else aliases
    present = sorted(loras_dir.glob(f"*{LORA_SUFFIX}")) if loras_dir.is_dir() else []
    stem = lora_file_stem(name)
    by_stem = {path.stem.lower(): path for path in present}
    if stem.lower() in by_stem:
        return by_stem[stem.lower()]
    alias = aliases.get(stem.lower())
    if alias is not None:
        found = by_stem.get(lora_file_stem(alias.file).lower())
        if found is not None:
            return found
        raise InvalidRequest("lora_names", f"LoRA {name!r} is {alias.file}, which is not in {loras_dir}; "
                                           f"download it with: {_download_hint(name, loras_dir)}")
    candidates = [path for path in present if stem.lower() in path.stem.lower()] if stem else []
    if len(candidates) == 1:
        return candidates[0]
    if candidates:
        listing = ", ".join(path.name for path in candidates)
        raise InvalidRequest("lora_names", f"LoRA {name!r} is ambiguous in {loras_dir}: it matches {listing}")
    listing = ", ".join(path.stem for path in present) or "none"
    hint = f"; download it with: {_download_hint(name, loras_dir)}" if parse_hub_url(name) else ""
    raise InvalidRequest("lora_names", f"no LoRA {name!r} in {loras_dir} (present: {listing}){hint}")


def lora_file(name: str, loras_dir: str | Path, aliases: Mapping[str, LoraAlias] | None = None) -> LoraFile:
    """Where the LoRA `name` is (when resolve_lora_name finds it) or would be downloaded to, and its
    source: the URL itself, else the alias table's; a plain unknown name has none."""
    aliases = read_lora_aliases() if aliases is None else aliases
    source = parse_hub_url(name)
    alias = aliases.get(lora_file_stem(name).lower())
    if source is not None:
        file = source.file_name
    elif alias is not None:
        file, source = alias.file, alias.source
    else:
        file = lora_file_stem(name) + LORA_SUFFIX
    try:
        present: Path | None = resolve_lora_name(name, loras_dir, aliases)
    except InvalidRequest:
        present = None
    return LoraFile(f"{LORAS_FOLDER}/{file}", source, present)


def _download_hint(name: str, loras_dir: Path) -> str:
    return f"wan-worker models download --lora {name} --models-dir {loras_dir.parent}"
