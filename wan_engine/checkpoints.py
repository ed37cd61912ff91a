"""Check a model's checkpoint files against the networks they must fill, from the safetensors headers
alone (no tensor is read): every key the architecture needs, once, with its shape and a usable dtype.

A wrong, truncated or mismatched file fails here within a second, with the file and the first bad
key named, instead of after minutes of loading. `wan-worker models verify` and the engine (before
every load) run the same check.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from wan_engine.errors import LoadError
from wan_engine.registry import ModelFiles, ModelSpec
from wan_engine.weights import KeyMap

# safetensors dtype names a floating-point tensor may be stored in (cast to the compute dtype at load)
FLOAT_DTYPES = frozenset({"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"})
_TORCH_TO_SAFETENSORS = {torch.int64: "I64", torch.int32: "I32", torch.bool: "BOOL", torch.uint8: "U8"}


@dataclass(frozen=True)
class NetworkFiles:
    """One network and the files (in load order) that must fill it exactly."""

    label: str  # "dit high", "vae", ...
    build: Callable[[], nn.Module]
    files: Sequence[Path]
    key_map: KeyMap | None = None


def model_networks(spec: ModelSpec, files: ModelFiles) -> list[NetworkFiles]:
    """The networks of `spec` with the files `files` located for each."""
    from wan_engine.nn.dit import WanDiT
    from wan_engine.nn.t5 import UMT5Encoder
    from wan_engine.nn.vae import WanVAE

    experts = [
        NetworkFiles("dit" if len(files.experts) == 1 else f"dit {name}", lambda: WanDiT(**spec.dit_config), paths)
        for name, paths in files.experts.items()
    ]
    return [
        *experts,
        NetworkFiles("vae", lambda: WanVAE(**spec.vae_config), [files.vae]),
        NetworkFiles("text encoder", lambda: UMT5Encoder(**spec.text_encoder_config), [files.text_encoder]),
    ]


def verify_model_files(spec: ModelSpec, files: ModelFiles) -> None:
    """Check every network of `spec` against its files; LoadError names the first bad file and key."""
    for network in model_networks(spec, files):
        verify_network_files(network)


def verify_network_files(network: NetworkFiles) -> None:
    """Check one network's files from their headers (see the module docstring)."""
    with torch.device("meta"):
        expected = network.build().state_dict()
    seen: dict[str, Path] = {}
    for path in network.files:
        for file_key, shape, dtype in _header(path):
            name = network.key_map(file_key) if network.key_map is not None else file_key
            if name is None:
                continue
            where = f"{network.label} file {path}: key {file_key}"
            if name not in expected:
                raise LoadError(f"{where} is not a tensor of the {network.label} network (wrong file?)")
            if name in seen:
                raise LoadError(f"{where} is also in {seen[name]}")
            want = expected[name]
            if shape != tuple(want.shape):
                raise LoadError(f"{where} has shape {list(shape)}, the network needs {list(want.shape)}")
            if not _dtype_fits(dtype, want):
                raise LoadError(f"{where} has dtype {dtype}, the network needs {want.dtype}")
            seen[name] = path
    missing = [name for name in expected if name not in seen]
    if missing:
        names = ", ".join(str(p) for p in network.files)
        more = f" (+{len(missing) - 1} more)" if len(missing) > 1 else ""
        raise LoadError(f"{network.label} files {names} lack key {missing[0]}{more}")


def _header(path: Path) -> list[tuple[str, tuple[int, ...], str]]:
    """(key, shape, dtype name) of every tensor in a safetensors file, from its header."""
    try:
        with safe_open(str(path), framework="pt", device="cpu") as reader:
            return [(key, tuple(s.get_shape()), s.get_dtype()) for key in reader.keys() for s in [reader.get_slice(key)]]
    except (SafetensorError, OSError) as error:
        raise LoadError(f"{path} is not a readable safetensors file (truncated or corrupt?): {error}") from None


def _dtype_fits(stored: str, like: torch.Tensor) -> bool:
    if like.is_floating_point():
        return stored in FLOAT_DTYPES
    return stored == _TORCH_TO_SAFETENSORS.get(like.dtype, str(like.dtype))
