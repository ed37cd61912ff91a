"""Wan 2.1 VAE: same random weights as diffusers' AutoencoderKLWan, same outputs; official names; bounded memory."""
from __future__ import annotations

import json
from collections.abc import Callable
from functools import cache
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKLWan
from torch.profiler import ProfilerActivity, profile

from wan_engine.nn.vae import (
    TINY_VAE,
    WAN21_VAE,
    WanVAE,
    diffusers_config,
    diffusers_key_map,
    diffusers_to_official,
)
from wan_engine.weights import load_model, save_state_dict

CONFIGS = {
    "tiny": TINY_VAE,
    # num_res_blocks=2 as in the real VAE: the decoder block numbering of the released checkpoints.
    "two_res_blocks": dict(TINY_VAE, base_dim=4, num_res_blocks=2),
}
SEEDS = (0, 1)
FRAME_COUNTS = (1, 5, 9)
HEIGHT, WIDTH = 32, 48
TOLERANCE = 1e-4  # max abs difference, relative to the largest reference value


def randomise(model: WanVAE, seed: int) -> WanVAE:
    """Every parameter random, so no layer is an identity: gains near 1, small biases, weights with
    std 0.5/sqrt(fan_in) (which keeps decoded video mostly inside the [-1, 1] clamp)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            if name.endswith("gamma"):
                param.copy_(1 + 0.2 * noise)
            elif name.endswith("bias"):
                param.copy_(0.05 * noise)
            else:
                param.copy_(0.5 * noise * param[0].numel() ** -0.5)
    return model.eval()


@cache
def model_pair(config_name: str, seed: int) -> tuple[WanVAE, AutoencoderKLWan]:
    """Our VAE and diffusers' with the same weights, copied through the diffusers key map."""
    config = CONFIGS[config_name]
    ours = randomise(WanVAE(**config), seed)
    reference = AutoencoderKLWan(**diffusers_config(config)).eval()
    to_official = diffusers_key_map(config["num_res_blocks"])
    state = ours.state_dict()
    reference.load_state_dict({key: state[to_official(key)] for key in reference.state_dict()})
    return ours, reference


def latent_stats(reference: AutoencoderKLWan) -> tuple[torch.Tensor, torch.Tensor]:
    """diffusers' own latent statistics [1, 16, 1, 1, 1], so the comparisons also check ours."""
    mean, std = reference.config.latents_mean, reference.config.latents_std
    return torch.tensor(mean).view(1, 16, 1, 1, 1), torch.tensor(std).view(1, 16, 1, 1, 1)


def assert_matches(ours: torch.Tensor, reference: torch.Tensor, scale: float | None = None) -> None:
    """Max abs difference within TOLERANCE of `scale` (default: the largest reference value)."""
    assert ours.shape == reference.shape
    error = (ours - reference).abs().max().item()
    scale = reference.abs().max().item() if scale is None else scale
    assert error <= TOLERANCE * scale, f"max abs error {error:.3g} at output scale {scale:.3g}"


def random_video(frames: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(1, 3, frames, HEIGHT, WIDTH, generator=generator) * 2 - 1


def random_latents(frames: int, seed: int, height: int = HEIGHT // 8, width: int = WIDTH // 8) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(1, 16, 1 + (frames - 1) // 4, height, width, generator=generator)


@pytest.mark.parametrize("config_name", CONFIGS)
def test_diffusers_key_map_is_one_to_one_onto_official_names_and_shapes(config_name: str):
    ours, reference = model_pair(config_name, 0)
    to_official = diffusers_key_map(CONFIGS[config_name]["num_res_blocks"])
    ours_shapes = {name: tuple(t.shape) for name, t in ours.state_dict().items()}
    mapped = {to_official(key): tuple(t.shape) for key, t in reference.state_dict().items()}
    assert len(mapped) == len(reference.state_dict())
    assert mapped == ours_shapes


def test_real_config_has_the_official_checkpoint_layout():
    with torch.device("meta"):
        ours = WanVAE(**WAN21_VAE)
        reference = AutoencoderKLWan()  # diffusers' defaults are the Wan 2.1 VAE
    shapes = {name: tuple(t.shape) for name, t in ours.state_dict().items()}
    assert {diffusers_to_official(k): tuple(t.shape) for k, t in reference.state_dict().items()} == shapes
    # Names as in the official wan/modules/vae.py: temporal upsamplers close decoder stages 0 and 1.
    assert shapes["decoder.upsamples.3.time_conv.weight"] == (768, 384, 3, 1, 1)
    assert shapes["decoder.upsamples.7.time_conv.weight"] == (768, 384, 3, 1, 1)
    assert shapes["encoder.downsamples.5.time_conv.weight"] == (192, 192, 3, 1, 1)
    assert shapes["conv1.weight"] == (32, 32, 1, 1, 1)


@pytest.mark.parametrize("frames", FRAME_COUNTS)
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("config_name", CONFIGS)
def test_encode_matches_diffusers_posterior_mean_normalised(config_name: str, seed: int, frames: int):
    ours, reference = model_pair(config_name, seed)
    video = random_video(frames, seed)
    mean, std = latent_stats(reference)
    with torch.no_grad():
        mu = reference.encode(video).latent_dist.mode()  # the posterior mean, unnormalised
    # Scale of the network's own output, not of the constant mean/std offset the normalisation adds.
    assert_matches(ours.encode(video), (mu - mean) / std, scale=(mu / std).abs().max().item())


@pytest.mark.parametrize("frames", FRAME_COUNTS)
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("config_name", CONFIGS)
def test_decode_matches_diffusers(config_name: str, seed: int, frames: int):
    ours, reference = model_pair(config_name, seed)
    latents = random_latents(frames, seed)
    mean, std = latent_stats(reference)
    with torch.no_grad():
        expected = reference.decode(latents * std + mean).sample  # diffusers takes unnormalised latents
    assert expected.shape[2] == frames
    unclamped = (expected.abs() < 1).float().mean().item()
    assert unclamped > 0.9, "weights saturate the output; the comparison would be empty"
    assert_matches(ours.decode(latents), expected)


def test_iter_decode_yields_one_frame_then_four_per_latent_frame():
    ours, _ = model_pair("tiny", 0)
    latents = random_latents(9, 0)
    chunks = list(ours.iter_decode(latents))
    assert [c.shape[2] for c in chunks] == [1, 4, 4]
    assert torch.equal(torch.cat(chunks, dim=2), ours.decode(latents))


@pytest.mark.parametrize("frames", (4, 6))
def test_encode_rejects_frame_counts_other_than_4n_plus_1(frames: int):
    ours, _ = model_pair("tiny", 0)
    with pytest.raises(ValueError, match="4n\\+1"):
        ours.encode(random_video(frames, 0))


def peak_allocated_bytes(fn: Callable[[], torch.Tensor], trace_dir: Path) -> tuple[int, torch.Tensor]:
    """Peak CPU allocator bytes allocated while fn() runs. The profiler logs every allocation and free
    with the running total ("Total Allocated"; it may include memory seen by earlier profiler
    sessions, hence the baseline), so the maximum is exact, operators' scratch buffers included."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = fn()
    trace = trace_dir / "trace.json"
    prof.export_chrome_trace(str(trace))
    records = [e["args"] for e in json.loads(trace.read_text())["traceEvents"] if e.get("name") == "[memory]"]
    baseline = records[0]["Total Allocated"] - records[0]["Bytes"]
    return max(r["Total Allocated"] for r in records) - baseline, result


def test_decode_working_memory_does_not_grow_with_frame_count(tmp_path: Path):
    """Peak memory beyond the output video is the same for 9 and 25 frames (from 9 frames on, every
    causal layer's history is full, so each later latent frame costs the same; a whole-clip pass
    would need ~3x more for 25 frames). Slack: the latents themselves, a few KiB here."""
    ours, _ = model_pair("tiny", 0)
    working = {}
    for frames in (9, 25):
        latents = random_latents(frames, 0, height=4, width=4)
        peak, video = peak_allocated_bytes(lambda: ours.decode(latents), tmp_path)
        working[frames] = peak - video.numel() * video.element_size()
    assert working[25] <= 1.02 * working[9], working


def test_official_layout_checkpoint_loads_strictly(tmp_path: Path):
    ours, _ = model_pair("tiny", 0)
    file = save_state_dict(ours.state_dict(), tmp_path / "tiny_vae.safetensors")
    loaded = load_model(lambda: WanVAE(**TINY_VAE), [file], dtype=torch.float32)
    latents = random_latents(5, 0)
    assert torch.equal(loaded.decode(latents), ours.decode(latents))


def test_diffusers_layout_checkpoint_loads_through_key_map(tmp_path: Path):
    ours, reference = model_pair("two_res_blocks", 1)
    config = CONFIGS["two_res_blocks"]
    file = save_state_dict(reference.state_dict(), tmp_path / "diffusion_pytorch_model.safetensors")
    loaded = load_model(
        lambda: WanVAE(**config), [file], dtype=torch.float32, key_map=diffusers_key_map(config["num_res_blocks"])
    )
    loaded_state = loaded.state_dict()
    for name, tensor in ours.state_dict().items():
        assert torch.equal(loaded_state[name], tensor), name


def test_bfloat16_weights_encode_close_to_float32(tmp_path: Path):
    ours, _ = model_pair("tiny", 0)
    file = save_state_dict(ours.state_dict(), tmp_path / "tiny_vae.safetensors")
    half = load_model(lambda: WanVAE(**TINY_VAE), [file], dtype=torch.bfloat16)
    video = random_video(5, 0)
    latents = half.encode(video)
    assert latents.dtype == torch.float32
    expected = ours.encode(video)
    assert (latents - expected).abs().max() <= 0.05 * expected.abs().max()
