"""Tiny random Wan checkpoints, in the official file layout, for tests, the demo and anyone without
real weights: `python -m wan_engine.testing DIR` (or `write_tiny_models(DIR)`).

Every network is built at its tiny configuration and filled from a seeded generator, so the files
are byte-for-byte reproducible. The scale of each tensor keeps activations O(1) through the tiny
networks (weights ~ N(0, 1/fan_in), norm gains ~ 1, small biases) so that outputs depend visibly on
every input: a degenerate model (all zeros, all saturated) would let pipeline bugs pass unnoticed.

Files (names fixed by the model definitions in defaults/; the folder is laid out as the hub repo
`wan-worker/tiny-models` that the tiny definitions name as their source, so serving it as that repo
runs the whole download path):
    tiny_t2v.safetensors                      Wan 2.1 DiT, no VACE keys
    tiny_vace_module.safetensors              its VACE blocks (vace_patch_embedding.*, vace_blocks.*)
    tiny_t2v_2_2_{high,low}.safetensors       the two Wan 2.2 experts
    tiny_vace_2_2_module_{high,low}.safetensors
    tiny_i2v_2_2_{high,low}.safetensors       the two Wan 2.2 image-to-video experts (input 36 channels)
    tiny_i2v.safetensors                      Wan 2.1 image-to-video DiT (36 channels, CLIP image branch)
    tiny_flf2v.safetensors                    Wan 2.1 first-last-frame DiT (the same, with CLIP positions)
    tiny_clip.safetensors                     its CLIP, as the Wan checkpoint holds it: the whole vision
                                              tower (visual.*, with the unused last block, norm and head)
                                              and a text-tower stand-in (textual.*, log_scale)
    tiny_vae.safetensors, tiny_umt5.safetensors, tiny_umt5/tokenizer.json
    loras/tiny_kohya.safetensors              kohya layout (lora_unet_ prefix, lora_down/lora_up/alpha)
    loras/tiny_peft.safetensors               PEFT layout (diffusion_model. prefix, lora_A/lora_B)
    scribble/netG_A_latest.pth                the canny annotator's contour network (narrow, one block),
                                              under its real name, as Wan2GP's checkpoint (a torch file)
    depth_anything_v2_large_hf/               the depth annotator: a tiny Depth Anything V2 in
                                              transformers' layout, under the real model's folder name
    flow/raft-things.pth                      the flow annotator: RAFT (its only size) with random
                                              weights, saved as the released file (module. prefix)
Serving this folder as the annotators' hub repos (DeepBeepMeep/Wan2.1, depth-anything/...) runs their
download path too.
"""
from __future__ import annotations

import argparse
import filecmp
import os
import zlib
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from wan_engine.annotator_files import CONTOUR_FILE, DEPTH_FOLDER, RAFT_FILE
from wan_engine.nn.clip import TINY_CLIP, ClipVisionEncoder
from wan_engine.nn.dit import (
    TINY_DIT,
    TINY_FLF2V_DIT,
    TINY_I2V_CLIP_DIT,
    TINY_I2V_DIT,
    TINY_VACE_LAYERS,
    VACE_IN_DIM,
    WanDiT,
)
from wan_engine.nn.t5 import TINY_UMT5, UMT5Encoder
from wan_engine.nn.vae import TINY_VAE, WanVAE
from wan_engine.tokenizer import write_tiny_tokenizer
from wan_engine.weights import save_state_dict

VACE_KEY_PREFIX = "vace_"  # vace_patch_embedding.*, vace_blocks.*
LORA_RANK = 4
LORA_TARGETS = ("self_attn.q", "self_attn.v", "cross_attn.k", "cross_attn.o", "ffn.0", "ffn.2")
LORA_BLOCKS = (0, 1)

TINY_T5_FOLDER = "tiny_umt5"


def tiny_dit(vace: bool = False) -> WanDiT:
    """The tiny DiT architecture (with its VACE blocks when `vace`)."""
    if vace:
        return WanDiT(**TINY_DIT, vace_layers=TINY_VACE_LAYERS, vace_in_dim=VACE_IN_DIM)
    return WanDiT(**TINY_DIT)


def tiny_i2v_dit() -> WanDiT:
    """The tiny image-to-video DiT (36 input channels)."""
    return WanDiT(**TINY_I2V_DIT)


def tiny_clip_i2v_dit() -> WanDiT:
    """The tiny Wan 2.1 image-to-video DiT (36 input channels and the CLIP image branch)."""
    return WanDiT(**TINY_I2V_CLIP_DIT)


def tiny_flf2v_dit() -> WanDiT:
    """The tiny Wan 2.1 first-last-frame DiT (the CLIP branch with positions for two frames' tokens)."""
    return WanDiT(**TINY_FLF2V_DIT)


def tiny_clip() -> ClipVisionEncoder:
    return ClipVisionEncoder(**TINY_CLIP)


def wan_clip_checkpoint(seed: int) -> dict[str, torch.Tensor]:
    """A tiny CLIP as the Wan checkpoint stores it: every vision tensor under `visual.`, the last block,
    final norm and head the encoder never builds, and text-tower tensors it never reads."""
    with torch.device("meta"):
        encoder = tiny_clip()
    state = {f"visual.{name}": tensor for name, tensor in random_state(encoder, seed).items()}
    generator = torch.Generator().manual_seed(seed + 1)
    last = TINY_CLIP["num_layers"] - 1
    for name, tensor in list(state.items()):
        if name.startswith("visual.transformer.0."):
            unused = name.replace(".transformer.0.", f".transformer.{last}.")
            state[unused] = scaled_noise(unused, torch.randn(tensor.shape, generator=generator))
    dim = TINY_CLIP["dim"]
    state.update({"visual.post_norm.weight": torch.ones(dim), "visual.post_norm.bias": torch.zeros(dim),
                  "visual.head": torch.randn(dim, 16, generator=generator) / dim**0.5,
                  "textual.token_embedding.weight": torch.randn(8, 16, generator=generator), "log_scale": torch.zeros(())})
    return state


def tiny_vae() -> WanVAE:
    return WanVAE(**TINY_VAE)


def tiny_text_encoder() -> UMT5Encoder:
    return UMT5Encoder(**TINY_UMT5)


def random_state(model: nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """Deterministic float32 values for every tensor of `model`'s state dict (see the module docstring).

    Only names and shapes are read, so `model` may live on the meta device.
    """
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, like in sorted(model.state_dict().items()):
        if not like.is_floating_point():
            state[name] = torch.zeros(like.shape, dtype=like.dtype)
            continue
        noise = torch.randn(like.shape, generator=generator, dtype=torch.float32)
        state[name] = scaled_noise(name, noise)
    return state


def scaled_noise(name: str, noise: torch.Tensor) -> torch.Tensor:
    """Scale standard normal noise to the role the tensor named `name` plays in its network."""
    leaf = name.rsplit(".", 1)[-1]
    if "modulation" in name:  # [1, 6, dim] shift/scale/gate tables, official init randn / sqrt(dim)
        return noise / noise.shape[-1] ** 0.5
    if noise.ndim >= 2:  # linear, convolution, embedding: unit gain on O(1) inputs
        return noise / (noise.numel() // noise.shape[0]) ** 0.5
    if leaf in ("weight", "gamma"):  # norm gains
        return 1.0 + 0.1 * noise
    return 0.1 * noise  # biases


def tiny_lora_state(model: nn.Module, seed: int, layout: str) -> dict[str, torch.Tensor]:
    """A rank-4 LoRA over a few linear layers of `model`, in 'kohya' or 'peft' key layout.

    up/down are scaled so the merged update is a sizeable fraction of each weight (outputs change
    visibly) without swamping it.
    """
    generator = torch.Generator().manual_seed(seed)
    weights = dict(model.named_parameters())
    state: dict[str, torch.Tensor] = {}
    for block in LORA_BLOCKS:
        for target in LORA_TARGETS:
            module = f"blocks.{block}.{target}"
            out_dim, in_dim = weights[f"{module}.weight"].shape
            down = torch.randn(LORA_RANK, in_dim, generator=generator) / in_dim**0.5
            up = torch.randn(out_dim, LORA_RANK, generator=generator) / LORA_RANK**0.5 * 0.5
            if layout == "kohya":
                prefix = "lora_unet_" + module.replace(".", "_")
                state[f"{prefix}.lora_down.weight"] = down
                state[f"{prefix}.lora_up.weight"] = up
                state[f"{prefix}.alpha"] = torch.tensor(float(LORA_RANK) / 2)
            elif layout == "peft":
                state[f"diffusion_model.{module}.lora_A.weight"] = down
                state[f"diffusion_model.{module}.lora_B.weight"] = up
            else:
                raise ValueError(f"unknown LoRA layout {layout!r}")
    return state


def split_vace(state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(base keys, VACE keys) of a VACE DiT's state: the two files users have (Wan2GP ships them apart)."""
    base = {k: v for k, v in state.items() if not k.startswith(VACE_KEY_PREFIX)}
    vace = {k: v for k, v in state.items() if k.startswith(VACE_KEY_PREFIX)}
    return base, vace


def _seed(name: str) -> int:
    """A stable seed per file name, so each file's content is independent of the others."""
    return zlib.crc32(name.encode())


def _write(state: Mapping[str, torch.Tensor], path: Path) -> None:
    """Write atomically, leaving an identical existing file untouched (idempotent, safe for readers)."""
    scratch = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_state_dict(state, scratch)
    _settle(scratch, path)


def _settle(scratch: Path, path: Path) -> None:
    """Move a freshly written file to `path`, unless an identical one is already there."""
    scratch.chmod(0o644)  # a models folder is read by other users (the worker service)
    if path.is_file() and filecmp.cmp(scratch, path, shallow=False):
        scratch.unlink()
    else:
        os.replace(scratch, path)


TINY_CONTOUR = {"width": 4, "blocks": 1}


def tiny_depth_model() -> nn.Module:
    """Depth Anything V2 at a tiny size (a 4-layer ViT of width 16 with patch 14), random weights."""
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # its saving bar would fill test and CLI output
    backbone = Dinov2Config(hidden_size=16, num_hidden_layers=4, num_attention_heads=2, mlp_ratio=2, patch_size=14,
                            image_size=518, out_indices=[1, 2, 3, 4], reshape_hidden_states=False)
    config = DepthAnythingConfig(backbone_config=backbone, reassemble_hidden_size=16, neck_hidden_sizes=[8, 8, 16, 16],
                                 fusion_hidden_size=8, head_hidden_size=8)
    torch.manual_seed(_seed(DEPTH_FOLDER))
    return DepthAnythingForDepthEstimation(config).eval()


def raft_state(seed: int) -> dict[str, torch.Tensor]:
    """Random weights for RAFT at its one size (5.3 M parameters), as the released file holds them:
    positive batch-norm variances, and each shared norm under both its names with one value."""
    from wan_engine.nn.raft import RAFT

    with torch.device("meta"):
        net = RAFT()
    state = random_state(net, seed)
    for name in state:
        if name.endswith("running_var"):
            state[name] = 0.5 + state[name].abs()
    for name in [key for key in state if ".norm3." in key]:
        state[name] = state[name.replace(".norm3.", ".downsample.1.")]
    return state


def write_tiny_annotators(folder: str | Path) -> Path:
    """The tiny canny, depth and flow annotators under their real names in `folder`; returns it (RAFT
    has one size: its file is the real network's, with random weights)."""
    from wan_engine.annotators import ContourNet

    folder = Path(folder)
    with torch.device("meta"):
        net = ContourNet(**TINY_CONTOUR)
    raft = {f"module.{key}": value for key, value in raft_state(_seed(RAFT_FILE)).items()}  # a DataParallel save
    for name, state in ((CONTOUR_FILE, random_state(net, _seed(CONTOUR_FILE))), (RAFT_FILE, raft)):
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        scratch = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        torch.save(state, scratch)
        _settle(scratch, path)
    depth = folder / DEPTH_FOLDER
    staging = folder / f".{DEPTH_FOLDER}.{os.getpid()}.tmp"
    tiny_depth_model().save_pretrained(staging)
    depth.mkdir(exist_ok=True)
    for written in staging.iterdir():
        _settle(written, depth / written.name)
    staging.rmdir()
    return folder


def write_tiny_models(folder: str | Path) -> Path:
    """Write every tiny checkpoint, the tiny tokenizer and the tiny LoRAs into `folder`; returns it."""
    folder = Path(folder)
    (folder / "loras").mkdir(parents=True, exist_ok=True)

    with torch.device("meta"):  # shapes only: nothing allocated, no init kernels
        vace_dit, i2v_dit, vae, text_encoder = tiny_dit(vace=True), tiny_i2v_dit(), tiny_vae(), tiny_text_encoder()
    base, vace = split_vace(random_state(vace_dit, _seed("tiny_t2v")))
    _write(base, folder / "tiny_t2v.safetensors")
    _write(vace, folder / "tiny_vace_module.safetensors")
    for expert in ("high", "low"):
        base, vace = split_vace(random_state(vace_dit, _seed(f"tiny_t2v_2_2_{expert}")))
        _write(base, folder / f"tiny_t2v_2_2_{expert}.safetensors")
        _write(vace, folder / f"tiny_vace_2_2_module_{expert}.safetensors")
        name = f"tiny_i2v_2_2_{expert}"
        _write(random_state(i2v_dit, _seed(name)), folder / f"{name}.safetensors")

    with torch.device("meta"):
        clip_i2v_dit, flf2v_dit = tiny_clip_i2v_dit(), tiny_flf2v_dit()
    _write(random_state(clip_i2v_dit, _seed("tiny_i2v")), folder / "tiny_i2v.safetensors")
    _write(random_state(flf2v_dit, _seed("tiny_flf2v")), folder / "tiny_flf2v.safetensors")
    _write(wan_clip_checkpoint(_seed("tiny_clip")), folder / "tiny_clip.safetensors")

    _write(random_state(vae, _seed("tiny_vae")), folder / "tiny_vae.safetensors")
    _write(random_state(text_encoder, _seed("tiny_umt5")), folder / "tiny_umt5.safetensors")
    write_tiny_tokenizer(folder / TINY_T5_FOLDER)

    for layout in ("kohya", "peft"):
        name = f"tiny_{layout}"
        _write(tiny_lora_state(vace_dit, _seed(name), layout), folder / "loras" / f"{name}.safetensors")
    return write_tiny_annotators(folder)


def runnable_models(folder: str | Path) -> list[str]:
    """The definition keys whose every file (LoRAs aside) is in `folder`: what `--models-dir folder` can run."""
    from wan_engine.registry import ModelRegistry

    registry = ModelRegistry(folder)
    return [key for key in registry.known_keys
            if all(f.present is not None for f in registry.needed_files(registry.get(key), with_loras=False))]  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="models folder to write into (created if missing)")
    folder = write_tiny_models(parser.parse_args(argv).folder)
    print(f"wrote the tiny models into {folder}; --models-dir {folder} runs: {', '.join(runnable_models(folder))}")


if __name__ == "__main__":
    main()
