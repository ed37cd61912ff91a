"""Which file a LoRA name stands for: torch-free, so a request can be checked (and its LoRAs found)
without importing torch.

A name is matched by file stem, case-insensitively, against `<models_dir>/loras/*.safetensors`; a
URL or a path stands for its file name. This is the one place that maps names to files (an alias
table of short names can replace `resolve_lora` without touching its callers).
"""
from __future__ import annotations

from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

from wan_engine.errors import InvalidRequest, echo

LORA_SUFFIX = ".safetensors"


def lora_file_stem(name: str) -> str:
    """The file stem a LoRA name stands for: a URL or a path by its file name, with or without
    the .safetensors extension."""
    path = urlsplit(name).path if "://" in name else name
    file = PurePosixPath(path.replace("\\", "/")).name
    return file[: -len(LORA_SUFFIX)] if file.lower().endswith(LORA_SUFFIX) else file


def resolve_lora(name: str, loras_dir: str | Path) -> Path:
    """The file in `loras_dir` whose stem equals the name's stem, case-insensitively."""
    loras_dir = Path(loras_dir)
    present = sorted(loras_dir.glob(f"*{LORA_SUFFIX}")) if loras_dir.is_dir() else []
    wanted = lora_file_stem(name).lower()
    for path in present:
        if path.stem.lower() == wanted:
            return path
    listing = ", ".join(p.stem for p in present) or "none"
    raise InvalidRequest("lora_names", f"no LoRA {echo(name)} in {loras_dir} (present: {listing})")
