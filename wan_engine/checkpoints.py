"""A model's checkpoint files as the networks they fill: which key names each network accepts, and a
check of the files from their headers alone (no tensor is read): every key the architecture needs,
once, with its shape and a usable dtype.

Key names: each network takes every published naming as downloaded. The official Wan names (Wan2GP,
Wan-AI, ComfyUI, with ComfyUI's `model.diffusion_model.` prefix removed), the diffusers names of the
DiT and VAE, and the transformers names of the umT5 encoder all map to the official names; the maps
leave official names unchanged, so no layout needs to be declared. Wan 2.1 I2V's CLIP image encoder
is read from the Wan / Wan2GP checkpoint of the whole CLIP, keeping only its vision tower, or from a
transformers CLIPVisionModel file (diffusers, ComfyUI), whose separate q, k, v are joined
(wan_engine.nn.clip.key_map).

A wrong, truncated or mismatched file fails the check within a second, with the file and the first
bad key named, instead of after minutes of loading. `wan-worker models verify` and the engine (before
every load) run the same check.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from wan_engine.errors import LoadError
from wan_engine.registry import ModelFiles, ModelSpec
from wan_engine.tensor_files import dtype_name, open_checkpoints
from wan_engine.weights import KeyMap, Piece

# safetensors dtype names a floating-point tensor may be stored in (cast to the compute dtype at load)
FLOAT_DTYPES = frozenset({"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"})
_DIT_PREFIXES = ("model.diffusion_model.", "diffusion_model.")  # ComfyUI


@dataclass(frozen=True)
class KeyMaps:
    """Published key name -> official name, per network of a model."""

    dit: KeyMap
    vae: KeyMap
    text_encoder: KeyMap
    image_encoder: KeyMap | None  # None for a model without one


def key_maps(spec: ModelSpec) -> KeyMaps:
    from wan_engine.nn import clip, dit, t5, vae

    def dit_names(key: str) -> str | None:
        for prefix in _DIT_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix):]
                break
        return dit.diffusers_to_official(key)

    image = spec.image_encoder_config
    return KeyMaps(dit_names, vae.diffusers_key_map(spec.vae_config["num_res_blocks"]), t5.transformers_to_official,
                   None if image is None else clip.key_map(image["num_layers"]))


@dataclass(frozen=True)
class NetworkFiles:
    """One network and the files (in load order) that must fill it exactly."""

    label: str  # "dit high", "vae", ...
    build: Callable[[], nn.Module]
    files: Sequence[Path]
    key_map: KeyMap | None = None


def model_networks(spec: ModelSpec, files: ModelFiles) -> list[NetworkFiles]:
    """The networks of `spec` with the files `files` located for each."""
    from wan_engine.nn.clip import ClipVisionEncoder
    from wan_engine.nn.dit import WanDiT
    from wan_engine.nn.t5 import UMT5Encoder
    from wan_engine.nn.vae import WanVAE

    maps = key_maps(spec)
    experts = [
        NetworkFiles("dit" if len(files.experts) == 1 else f"dit {name}", lambda: WanDiT(**spec.dit_config), paths,
                     maps.dit)  # fmt: skip
        for name, paths in files.experts.items()
    ]
    return [
        *experts,
        NetworkFiles("vae", lambda: WanVAE(**spec.vae_config), [files.vae], maps.vae),
        NetworkFiles("text encoder", lambda: UMT5Encoder(**spec.text_encoder_config), [files.text_encoder],
                     maps.text_encoder),
        *([NetworkFiles("image encoder", lambda: ClipVisionEncoder(**spec.image_encoder_config), [files.image_encoder],
                        maps.image_encoder)] if files.image_encoder is not None else []),
    ]


def verify_model_files(spec: ModelSpec, files: ModelFiles) -> None:
    """Check every network of `spec` against its files; LoadError names the first bad file and key."""
    for network in model_networks(spec, files):
        verify_network_files(network)


def verify_network_files(network: NetworkFiles) -> None:
    """Check one network's files from their headers (see the module docstring)."""
    with torch.device("meta"):
        expected = network.build().state_dict()
    seen: dict[str, Path] = {}  # network name -> the file that gave it whole
    pieces: dict[str, dict[int, Path]] = {}  # network name -> the files that gave its pieces, by index
    counts: dict[str, int] = {}  # network name -> how many pieces fill it
    with open_checkpoints(network.files) as tensors:
        for stored in tensors:
            mapped = network.key_map(stored.key) if network.key_map is not None else stored.key
            if mapped is None:
                continue
            piece = mapped if isinstance(mapped, Piece) else None
            name = piece.name if piece is not None else mapped
            where = f"{network.label} file {stored.file}: key {stored.key}"
            if name not in expected:
                raise LoadError(f"{where} is not a tensor of the {network.label} network (wrong file?)")
            given = pieces.get(name, {})
            if name in seen or (piece is None and given) or (piece is not None and piece.index in given):
                raise LoadError(f"{where} is also in {seen.get(name) or next(iter(given.values()))}")
            want = expected[name]
            if not (piece.fits(stored.shape, want.shape) if piece is not None else stored.shape == tuple(want.shape)):
                raise LoadError(f"{where} has shape {list(stored.shape)}, the network needs {list(want.shape)}"
                                + (f" (piece {piece.index + 1} of {piece.count})" if piece is not None else ""))
            if not _dtype_fits(stored.dtype, want):
                raise LoadError(f"{where} has dtype {stored.dtype}, the network needs {want.dtype}")
            if piece is None:
                seen[name] = stored.file
            else:
                pieces.setdefault(name, {})[piece.index] = stored.file
                counts[name] = piece.count
    filled = set(seen) | {name for name, given in pieces.items() if len(given) == counts[name]}
    missing = [name for name in expected if name not in filled]
    if missing:
        names = ", ".join(str(p) for p in network.files)
        more = f" (+{len(missing) - 1} more)" if len(missing) > 1 else ""
        raise LoadError(f"{network.label} files {names} lack key {missing[0]}{more}")


def _dtype_fits(stored: str, like: torch.Tensor) -> bool:
    if like.is_floating_point():
        return stored in FLOAT_DTYPES
    return stored == dtype_name(like.dtype)
