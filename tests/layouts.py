"""Write the tiny Wan 2.2 model (the Wan2GP-layout files of wan_engine.testing) again in the layouts
the hub publishes, into the folder served as the repo `wan-worker/tiny-models`, under the paths the
`layouts` of defaults/tiny_t2v_2_2.json name:

    official/   Wan-AI: high_noise_model/ + low_noise_model/ sharded safetensors with their index,
                Wan2.1_VAE.pth and models_t5_umt5-xxl-enc-bf16.pth, google/umt5-xxl/tokenizer.json
    diffusers/  transformer/ + transformer_2/ (sharded), vae/, text_encoder/ (transformers names), tokenizer/
    comfy/      ComfyUI single files: DiT with the `model.diffusion_model.` prefix, in fp16 and in
                fp8_scaled (fp8 weights with a scale_weight each), umT5 in transformers names (fp16 and
                fp8_scaled), the VAE in official names

The diffusers and transformers key names are read from diffusers' and transformers' own models (a
test-only dependency), so these files are what those libraries write, not our guess at them.
`stored_values` gives, per layout, what each tensor should read back as (fp16 and fp8 round).
"""
from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from wan_engine.nn import dit, t5, vae
from wan_engine.nn.dit import TINY_DIT
from wan_engine.nn.t5 import TINY_UMT5
from wan_engine.nn.vae import TINY_VAE

FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0
EXPERTS = {"high": ("high_noise_model", "transformer"), "low": ("low_noise_model", "transformer_2")}
COMFY_PREFIX = "model.diffusion_model."
LAYOUTS = ("official", "diffusers", "comfy_fp16", "comfy_fp8_scaled")

State = dict[str, torch.Tensor]


def twin_state(models: Path) -> dict[str, State]:
    """The Wan2GP-layout tensors of tiny_t2v_2_2, per network."""
    return {
        "high": load_file(str(models / "tiny_t2v_2_2_high.safetensors")),
        "low": load_file(str(models / "tiny_t2v_2_2_low.safetensors")),
        "vae": load_file(str(models / "tiny_vae.safetensors")),
        "text_encoder": load_file(str(models / "tiny_umt5.safetensors")),
    }


def write_tiny_layouts(models: Path, repo: Path) -> Path:
    """Write every layout of tiny_t2v_2_2 from the Wan2GP files in `models` into `repo`."""
    state = twin_state(models)
    tokenizer = models / "tiny_umt5" / "tokenizer.json"

    official = repo / "official"
    for expert, (folder, _) in EXPERTS.items():
        _write_sharded(state[expert], official / folder, "diffusion_pytorch_model")
    _save_pth(state["vae"], official / "Wan2.1_VAE.pth")
    _save_pth(state["text_encoder"], official / "models_t5_umt5-xxl-enc-bf16.pth")
    _copy(tokenizer, official / "google" / "umt5-xxl" / "tokenizer.json")

    diffusers = repo / "diffusers"
    dit_names, vae_names, t5_names = _diffusers_names(), _diffusers_vae_names(), _transformers_t5_names()
    for expert, (_, folder) in EXPERTS.items():
        _write_sharded(_renamed(state[expert], dit_names), diffusers / folder, "diffusion_pytorch_model")
    _save(_renamed(state["vae"], vae_names), diffusers / "vae" / "diffusion_pytorch_model.safetensors")
    _save(_renamed(state["text_encoder"], t5_names), diffusers / "text_encoder" / "model.safetensors")
    _copy(tokenizer, diffusers / "tokenizer" / "tokenizer.json")

    comfy = repo / "comfy"
    for expert in EXPERTS:
        prefixed = {COMFY_PREFIX + k: v for k, v in state[expert].items()}
        _save(_cast(prefixed, torch.float16), comfy / f"tiny_t2v_2_2_{expert}_noise_fp16.safetensors")
        _save(_fp8_scaled(prefixed), comfy / f"tiny_t2v_2_2_{expert}_noise_fp8_scaled.safetensors")
    _save(state["vae"], comfy / "tiny_vae.safetensors")
    text_encoder = _renamed(state["text_encoder"], t5_names)
    _save(_cast(text_encoder, torch.float16), comfy / "tiny_umt5_fp16.safetensors")
    _save(_fp8_scaled(text_encoder), comfy / "tiny_umt5_fp8_e4m3fn_scaled.safetensors")
    return repo


def stored_values(layout: str, network: str, tensor: torch.Tensor, key: str) -> torch.Tensor:
    """What `tensor` of the Wan2GP twin reads back as from `layout` (float32)."""
    if layout == "comfy_fp16" and network != "vae":
        return tensor.to(torch.float16).to(torch.float32) if tensor.is_floating_point() else tensor
    if layout == "comfy_fp8_scaled" and network != "vae" and tensor.is_floating_point():
        if not _quantized(key, tensor):
            return tensor.to(torch.float16).to(torch.float32)
        weight, scale = _quantize(tensor)
        return weight.to(torch.float32) * scale.to(torch.float32)
    return tensor


# ---- key names of the libraries --------------------------------------------------------------------------

def _inverse(names: list[str], to_official: Callable[[str], str | None]) -> dict[str, str]:
    return {official: name for name in names if (official := to_official(name)) is not None}


def _diffusers_names() -> dict[str, str]:
    from diffusers import WanTransformer3DModel

    with torch.device("meta"):
        model = WanTransformer3DModel(**dit.diffusers_config(TINY_DIT))
    return _inverse(list(model.state_dict()), dit.diffusers_to_official)


def _diffusers_vae_names() -> dict[str, str]:
    from diffusers import AutoencoderKLWan

    with torch.device("meta"):
        model = AutoencoderKLWan(**vae.diffusers_config(TINY_VAE))
    return _inverse(list(model.state_dict()), vae.diffusers_key_map(TINY_VAE["num_res_blocks"]))


def _transformers_t5_names() -> dict[str, str]:
    from transformers import UMT5EncoderModel

    from reference_configs import transformers_config

    with torch.device("meta"):
        model = UMT5EncoderModel(transformers_config(TINY_UMT5))
    names = [n for n in model.state_dict() if not n.startswith("encoder.embed_tokens.")]  # tied to shared
    return _inverse(names, t5.transformers_to_official)


# ---- writing ---------------------------------------------------------------------------------------------

def _renamed(state: State, names: Mapping[str, str]) -> State:
    missing = sorted(set(state) - set(names))
    if missing:
        raise KeyError(f"no published name for {missing[:3]}")
    return {names[k]: v for k, v in state.items()}


def _cast(state: State, dtype: torch.dtype) -> State:
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}


def _quantized(key: str, tensor: torch.Tensor) -> bool:
    """ComfyUI's fp8_scaled files quantize the matrices of the linear layers."""
    return key.endswith(".weight") and tensor.ndim == 2 and tensor.is_floating_point()


def _quantize(tensor: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    scale = (tensor.abs().amax() / FP8_MAX).clamp(min=1e-12).to(torch.float32)
    return (tensor / scale).to(FP8), scale


def _fp8_scaled(state: State) -> State:
    out: State = {"scaled_fp8": torch.zeros(0, dtype=FP8)}
    for key, tensor in state.items():
        if _quantized(key, tensor):
            out[key], out[key[: -len("weight")] + "scale_weight"] = _quantize(tensor)
        else:
            out[key] = tensor.to(torch.float16) if tensor.is_floating_point() else tensor
    return out


def _save(state: State, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))


def _save_pth(state: State, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, str(path))


def _write_sharded(state: State, folder: Path, stem: str, shards: int = 2) -> None:
    """Two shards and the index naming them, as save_pretrained / the Wan-AI repos do."""
    keys = sorted(state)
    parts = [keys[i::shards] for i in range(shards)]
    weight_map = {}
    for number, part in enumerate(parts, 1):
        name = f"{stem}-{number:05d}-of-{shards:05d}.safetensors"
        _save({k: state[k] for k in part}, folder / name)
        weight_map.update(dict.fromkeys(part, name))
    index = {"metadata": {"total_size": sum(t.numel() * t.element_size() for t in state.values())},
             "weight_map": weight_map}  # fmt: skip
    (folder / f"{stem}.safetensors.index.json").write_text(json.dumps(index, indent=1))


def _copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
