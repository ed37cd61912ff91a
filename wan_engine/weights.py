"""Load checkpoints into a network without building a random-initialised copy first.

The network is constructed on the meta device (no memory, no init kernels), the files (safetensors,
a sharded checkpoint's index, a tensors-only .pth: wan_engine.tensor_files) are read one tensor at a
time, renamed through an optional key map, checked against the network's own names and shapes, cast
and moved to the target device, and finally assigned in place of the meta tensors.
Host memory therefore stays near one copy of the checkpoint (less when the target is a GPU).

Precision policy: floating-point parameters take the requested dtype, except those under a
submodule whose name the network lists in its class attribute `keep_in_fp32` (small, precision
sensitive pieces such as the time embedding and the modulation tables). Buffers keep the dtype the
network gave them.

A key map may also say that a stored tensor is a piece of a network tensor (`Piece`): chunk i of n
along its first dimension (q, k and v stored apart where the network fuses them), or the whole
tensor stored in another shape (a class embedding kept flat); the pieces are joined once all are read.

A network loaded this way has no non-persistent buffers: constants derived from the config (RoPE
tables, latent statistics) are computed in forward or kept as plain attributes, since nothing here
could fill a buffer that the checkpoint does not carry.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from wan_engine.errors import LoadError
from wan_engine.tensor_files import open_checkpoints


@dataclass(frozen=True)
class Piece:
    """A stored tensor that fills part of network tensor `name`: chunk `index` of `count` along its first
    dimension, or (count 1) all of it in another shape with as many elements."""

    name: str
    index: int = 0
    count: int = 1

    def fits(self, stored: Sequence[int], want: Sequence[int]) -> bool:
        if self.count == 1:
            return math.prod(stored) == math.prod(want)
        return len(want) > 0 and want[0] % self.count == 0 and tuple(stored) == (want[0] // self.count, *want[1:])


KeyMap = Callable[[str], "str | Piece | None"]

_LISTED_KEYS = 8  # how many offending keys an error message names before it summarises


def load_model(
    build: Callable[[], nn.Module],
    files: Sequence[str | Path],
    *,
    dtype: torch.dtype,
    device: str | torch.device = "cpu",
    key_map: KeyMap | None = None,
) -> nn.Module:
    """Build the network on the meta device and fill it from `files` (a base model, then modules).

    `key_map` renames each checkpoint key to the network's name (None drops the key). Every network
    tensor must be provided exactly once with its exact shape; otherwise LoadError names the missing,
    unexpected, duplicated and wrong-shape keys. Returns the module on `device`, in eval mode and
    without gradients (an inference engine never trains it).
    """
    with torch.device("meta"):
        model = build()
    expected = model.state_dict(keep_vars=True)
    keep_fp32 = tuple(getattr(model, "keep_in_fp32", ()))
    buffer_names = {name for name, _ in model.named_buffers()}
    device = torch.device(device)

    loaded: dict[str, torch.Tensor] = {}
    pieces: dict[str, dict[int, torch.Tensor]] = {}  # network name -> the pieces read so far, by index
    unexpected: list[str] = []
    duplicated: list[str] = []
    wrong_shape: list[str] = []
    with open_checkpoints(files) as tensors:
        for stored in tensors:
            mapped = key_map(stored.key) if key_map is not None else stored.key
            if mapped is None:
                continue
            piece = mapped if isinstance(mapped, Piece) else None
            name = piece.name if piece is not None else mapped
            if name not in expected:
                unexpected.append(_describe(stored.key, name))
                continue
            if name in loaded or (piece is not None and piece.index in pieces.get(name, {})):
                duplicated.append(f"{name} (again in {stored.file.name})")
                continue
            want = tuple(expected[name].shape)
            if not (piece.fits(stored.shape, want) if piece is not None else stored.shape == want):
                wrong_shape.append(f"{_describe(stored.key, name)}: file {list(stored.shape)}, network {list(want)}")
                continue
            target = _target_dtype(name, expected[name], dtype, keep_fp32, name in buffer_names)
            tensor = stored.read().to(device).to(target)
            if piece is None:
                loaded[name] = tensor
                continue
            parts = pieces.setdefault(name, {})
            parts[piece.index] = tensor
            if len(parts) == piece.count:
                loaded[name] = torch.cat([parts[i] for i in range(piece.count)]).reshape(want)
                del pieces[name]

    missing = [name for name in expected if name not in loaded]
    problems = [
        _listing("missing", missing),
        _listing("unexpected", unexpected),
        _listing("duplicated", duplicated),
        _listing("wrong shape", wrong_shape),
    ]
    problems = [p for p in problems if p]
    if problems:
        names = ", ".join(Path(p).name for p in files)
        raise LoadError(f"checkpoint {names} does not fit {type(model).__name__}: " + "; ".join(problems))

    model.load_state_dict(loaded, strict=True, assign=True)
    left_on_meta = [name for name, t in _all_tensors(model) if t.is_meta]
    if left_on_meta:
        raise LoadError(
            f"{type(model).__name__} has tensors no checkpoint can fill (non-persistent buffers?): "
            + ", ".join(left_on_meta[:_LISTED_KEYS])
        )
    return model.requires_grad_(False).eval()


def apply_dtype_policy(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Cast an already-built network in place the way load_model casts a loaded one."""
    keep_fp32 = tuple(getattr(model, "keep_in_fp32", ()))
    for name, param in model.named_parameters():
        param.data = param.data.to(_target_dtype(name, param, dtype, keep_fp32, is_buffer=False))
    return model


def save_state_dict(state: Mapping[str, torch.Tensor], path: str | Path) -> Path:
    """Write tensors to a safetensors file (contiguous CPU copies; shared storage is not an issue)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    save_file(tensors, str(path), metadata={"format": "pt"})
    return path


def _target_dtype(
    name: str, like: torch.Tensor, dtype: torch.dtype, keep_fp32: tuple[str, ...], is_buffer: bool
) -> torch.dtype:
    """The dtype a loaded tensor takes under the precision policy in the module docstring."""
    if is_buffer or not like.is_floating_point():
        return like.dtype
    if any(part in keep_fp32 for part in name.split(".")):
        return torch.float32
    return dtype


def _all_tensors(model: nn.Module) -> Iterable[tuple[str, torch.Tensor]]:
    yield from model.named_parameters()
    yield from model.named_buffers()


def _describe(file_key: str, name: str) -> str:
    return file_key if file_key == name else f"{file_key} -> {name}"


def _listing(kind: str, keys: list[str]) -> str:
    if not keys:
        return ""
    shown = ", ".join(keys[:_LISTED_KEYS])
    more = f" (+{len(keys) - _LISTED_KEYS} more)" if len(keys) > _LISTED_KEYS else ""
    return f"{len(keys)} {kind}: {shown}{more}"
