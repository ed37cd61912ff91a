"""Tensors of a checkpoint as the layouts publish them, read lazily one tensor at a time:

- a `.safetensors` file (Wan2GP, ComfyUI, a diffusers or Wan-AI shard);
- a sharded checkpoint's `*.safetensors.index.json` (its `weight_map` names the shards, which sit
  beside it), as the Wan-AI and diffusers repos publish the DiT and the umT5 encoder;
- a `.pth` state dict (the Wan-AI VAE and umT5), opened with `torch.load(weights_only=True,
  mmap=True)`: tensors only, never unpickled code, and no tensor read until asked for.

ComfyUI's fp8 files are read as published: a weight stored in float8 with a `<module>.scale_weight`
("fp8_scaled": one scale per tensor, or per output row) reads as weight * scale in float32
(`dequantize_scaled`, the rule fp8 mode uses too), to be cast to the compute dtype by the loader;
the `scaled_fp8` marker and `<module>.scale_input` are dropped. Plain fp8 weights (`fp8_e4m3fn`) are
just cast. Keeping fp8 on the device is not this module's business.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from wan_engine.errors import LoadError
from wan_engine.hub import is_index, shard_names

SCALE_SUFFIX = ".scale_weight"  # ComfyUI fp8_scaled: weight = fp8 tensor * scale_weight
COMFY_EXTRAS = re.compile(r"(^|\.)(scaled_fp8|scale_input)$")  # the marker key; static input scales (unused)
_TORCH_DTYPE_NAMES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2", torch.int64: "I64", torch.int32: "I32",
    torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8", torch.bool: "BOOL",
}  # fmt: skip


@dataclass(frozen=True)
class StoredTensor:
    """One tensor of a checkpoint: its key and header facts, and how to read it."""

    key: str
    shape: tuple[int, ...]
    dtype: str  # safetensors name: F32, BF16, F8_E4M3, I64, ...
    file: Path
    read: Callable[[], torch.Tensor]


def dequantize_scaled(weight: torch.Tensor, scale: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    """A stored fp8 tensor times its scale (a scalar, or one per output row), in `dtype`."""
    value = weight.float()
    if scale is not None:
        value = value * (scale.float().reshape(-1, *[1] * (weight.ndim - 1)) if scale.numel() > 1 else scale.float())
    return value.to(dtype)


def dtype_name(dtype: torch.dtype) -> str:
    return _TORCH_DTYPE_NAMES.get(dtype, str(dtype))


@contextmanager
def open_checkpoints(paths: Sequence[str | Path], *, fold_fp8_scales: bool = True) -> Iterator[list[StoredTensor]]:
    """Every tensor of `paths`, in file order; the files stay open (memory-mapped) inside the block.
    With `fold_fp8_scales` False the fp8 weights, their scales and ComfyUI's marker come as stored
    (the fp8 mode keeps them). LoadError names a file that cannot be read (truncated, corrupt, not a
    checkpoint)."""
    with ExitStack() as stack:
        tensors: list[StoredTensor] = []
        for path in map(Path, paths):
            files = [path.parent / name for name in shard_names(path)] if is_index(path) else [path]
            for file in files:
                tensors += _read_pth(file) if file.suffix == ".pth" else _read_safetensors(file, stack)
        yield _fold_fp8_scales(tensors) if fold_fp8_scales else tensors


def _read_safetensors(path: Path, stack: ExitStack) -> list[StoredTensor]:
    try:
        reader = stack.enter_context(safe_open(str(path), framework="pt", device="cpu"))
        headers = [(key, reader.get_slice(key)) for key in reader.keys()]
        return [StoredTensor(key, tuple(s.get_shape()), s.get_dtype(), path, lambda r=reader, k=key: r.get_tensor(k))
                for key, s in headers]  # fmt: skip
    except (SafetensorError, OSError) as error:
        raise LoadError(f"{path} is not a readable safetensors file (truncated or corrupt?): {error}") from None


def _read_pth(path: Path) -> list[StoredTensor]:
    state = None
    for mmap in (True, False):  # files in torch's legacy (pre-zip) format cannot be memory-mapped
        try:
            state = torch.load(str(path), map_location="cpu", weights_only=True, mmap=mmap)
            break
        except Exception as error:  # noqa: BLE001 - torch raises many types for a bad file; all mean the same here
            failure = error
    if state is None:
        raise LoadError(f"{path} is not a readable tensors-only .pth state dict: {type(failure).__name__}: {failure}")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise LoadError(f"{path} does not hold a flat state dict of tensors")
    return [StoredTensor(key, tuple(t.shape), dtype_name(t.dtype), path, lambda t=t: t) for key, t in state.items()]


def _fold_fp8_scales(tensors: list[StoredTensor]) -> list[StoredTensor]:
    """Read each scaled fp8 weight as weight * scale (float32) and drop the scale and marker tensors."""
    scales = {t.key[: -len(SCALE_SUFFIX)]: t for t in tensors if t.key.endswith(SCALE_SUFFIX)}
    folded = []
    for tensor in tensors:
        if tensor.key.endswith(SCALE_SUFFIX) or COMFY_EXTRAS.search(tensor.key):
            continue
        module, _, leaf = tensor.key.rpartition(".")
        scale = scales.get(module) if leaf == "weight" else None
        if scale is not None:
            tensor = replace(tensor, read=lambda w=tensor.read, s=scale.read: dequantize_scaled(w(), s(), torch.float32))
        folded.append(tensor)
    return folded
