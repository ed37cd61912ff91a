"""WanDiT computes what diffusers' Wan transformers compute, given the same weights and inputs.

Weights are made by diffusers' own constructors (seeded), written in the diffusers layout and read
back through wan_engine.weights with the diffusers -> official key map, so the rename table is part
of what is proven. fp32 on CPU; the bar is 1e-4 of the reference output's standard deviation.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from diffusers import WanTransformer3DModel, WanVACETransformer3DModel

from wan_engine.nn.dit import (
    TINY_DIT,
    TINY_FLF2V_DIT,
    TINY_I2V_CLIP_DIT,
    TINY_I2V_DIT,
    TINY_VACE_LAYERS,
    WanDiT,
    diffusers_config,
    diffusers_to_official,
)
from wan_engine.weights import load_model, save_state_dict

TOLERANCE = 1e-4  # of the reference output's standard deviation

CONFIGS = {
    "tiny": dict(TINY_DIT),
    "no_cross_attn_norm_odd_grid": dict(
        TINY_DIT, dim=96, num_heads=2, num_layers=3, ffn_dim=160, in_dim=12, out_dim=8, text_len=16,
        text_dim=24, freq_dim=64, cross_attn_norm=False,
    ),
    "time_patch_2": dict(TINY_DIT, dim=72, num_heads=6, num_layers=2, patch_size=(2, 2, 2)),
    "i2v_36_channels": dict(TINY_I2V_DIT),  # Wan 2.2 I2V A14B input: noise + mask + conditioning latents
}  # fmt: skip
LATENT_SIZES = {
    "tiny": (3, 8, 8), "no_cross_attn_norm_odd_grid": (5, 6, 10), "time_patch_2": (4, 4, 6), "i2v_36_channels": (3, 6, 10),
}  # fmt: skip
VACE_CONFIGS = {
    "tiny": (dict(TINY_DIT), TINY_VACE_LAYERS, 96),
    "three_hints": (dict(TINY_DIT, num_layers=5, dim=48, num_heads=3), [0, 1, 4], 20),
}


def seeded_reference(cls: type, seed: int, **kwargs) -> torch.nn.Module:
    """A diffusers model with seeded weights; norm gains moved off 1 so their mapping is tested too."""
    torch.manual_seed(seed)
    model = cls(**kwargs).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".norm" in name:
                param.add_(0.1 * torch.randn_like(param))
    return model


def ours_from(reference: torch.nn.Module, build, tmp_path: Path) -> WanDiT:
    file = save_state_dict(reference.state_dict(), tmp_path / "diffusers_layout.safetensors")
    return load_model(build, [file], dtype=torch.float32, key_map=diffusers_to_official)


def inputs(config: dict, latent_size: tuple[int, int, int], seed: int, batch: int = 2):
    """Noisy latents, two different timesteps, and a prompt shorter than text_len."""
    generator = torch.Generator().manual_seed(seed + 100)
    x = torch.randn(batch, config["in_dim"], *latent_size, generator=generator)
    t = torch.tensor([999.0, 250.5][:batch])
    context = torch.randn(batch, config["text_len"] - 5, config["text_dim"], generator=generator)
    return x, t, context


def padded(context: torch.Tensor, text_len: int) -> torch.Tensor:
    """What the diffusers pipeline feeds its transformer: the prompt zero-padded to text_len."""
    return F.pad(context, (0, 0, 0, text_len - context.shape[1]))


def assert_close(ours: torch.Tensor, reference: torch.Tensor) -> None:
    assert ours.shape == reference.shape
    error = (ours - reference).abs().max().item()
    scale = reference.std().item()
    assert error <= TOLERANCE * scale, f"max abs diff {error:.3g} > {TOLERANCE} x output std {scale:.3g}"


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_matches_diffusers_transformer(name: str, seed: int, tmp_path: Path):
    config = CONFIGS[name]
    reference = seeded_reference(WanTransformer3DModel, seed, **diffusers_config(config))
    ours = ours_from(reference, lambda: WanDiT(**config), tmp_path)
    x, t, context = inputs(config, LATENT_SIZES[name], seed)
    with torch.inference_mode():
        expected = reference(x, t, padded(context, config["text_len"])).sample
        assert_close(ours(x, t, context), expected)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("name", ["i2v", "flf2v"])
def test_wan21_image_branch_matches_diffusers_transformer_with_image_tokens(name: str, seed: int, tmp_path: Path):
    """Wan 2.1 I2V: CLIP image tokens projected by img_emb (diffusers' image_embedder) and attended to
    by every block's own k_img / v_img (diffusers' add_k_proj / add_v_proj). FLF2V: the first and the
    last frame's tokens one after the other, plus img_emb.emb_pos (diffusers' pos_embed, which takes
    the two frames' tokens as rows of their own). diffusers splits the image tokens from the text by a
    text of exactly 512 tokens, so the text is that long here."""
    config = dict(TINY_I2V_CLIP_DIT if name == "i2v" else TINY_FLF2V_DIT, text_len=512)
    reference = seeded_reference(WanTransformer3DModel, seed, **diffusers_config(config))
    if name == "flf2v":  # diffusers starts its position embedding at zero: give it values to map
        with torch.no_grad():
            reference.condition_embedder.image_embedder.pos_embed.normal_(0.0, 0.5)
    ours = ours_from(reference, lambda: WanDiT(**config), tmp_path)
    x, t, context = inputs(config, (3, 6, 10), seed)
    tokens = config.get("clip_positions", 5)
    image = torch.randn(x.shape[0], tokens, config["clip_dim"], generator=torch.Generator().manual_seed(seed))
    theirs = image.reshape(-1, 5, config["clip_dim"])  # FLF2V: one row per frame
    with torch.inference_mode():
        expected = reference(x, t, padded(context, config["text_len"]), encoder_hidden_states_image=theirs).sample
        assert_close(ours(x, t, context, image_context=image), expected)
        other = torch.randn(image.shape, generator=torch.Generator().manual_seed(seed + 7))
        assert (ours(x, t, context, image_context=other) - expected).abs().max() > 1e-3  # it reads them
    with pytest.raises(ValueError, match="image_context"):
        ours(x, t, context)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("name", list(VACE_CONFIGS))
def test_matches_diffusers_vace_transformer(name: str, seed: int, tmp_path: Path):
    config, layers, vace_in_dim = VACE_CONFIGS[name]
    reference = seeded_reference(
        WanVACETransformer3DModel, seed, **diffusers_config(config), vace_layers=layers, vace_in_channels=vace_in_dim
    )
    ours = ours_from(reference, lambda: WanDiT(**config, vace_layers=layers, vace_in_dim=vace_in_dim), tmp_path)
    x, t, context = inputs(config, (3, 4, 6), seed)
    control = torch.randn(x.shape[0], vace_in_dim, *x.shape[2:], generator=torch.Generator().manual_seed(seed))
    with torch.inference_mode():
        expected = reference(
            x,
            t,
            padded(context, config["text_len"]),
            control_hidden_states=control,
            control_hidden_states_scale=torch.full((len(layers),), 0.7),
        ).sample
        assert_close(ours(x, t, context, vace_context=control, vace_scale=0.7), expected)


def test_vace_model_without_control_is_the_plain_model(tmp_path: Path):
    """Hints are only added when a control video is given: a VACE model then equals its base."""
    config = CONFIGS["tiny"]
    reference = seeded_reference(WanTransformer3DModel, 0, **diffusers_config(config))
    file = save_state_dict(reference.state_dict(), tmp_path / "base.safetensors")
    base = load_model(lambda: WanDiT(**config), [file], dtype=torch.float32, key_map=diffusers_to_official)
    vace = WanDiT(**config, vace_layers=TINY_VACE_LAYERS, vace_in_dim=96).eval()
    vace.load_state_dict(base.state_dict(), strict=False)
    x, t, context = inputs(config, (2, 4, 4), 0)
    with torch.inference_mode():
        assert torch.equal(vace(x, t, context), base(x, t, context))


def test_several_vace_contexts_add_their_scaled_hints(tmp_path: Path):
    """Two control videos: the reference's hints of each, scaled and summed, drive its main blocks."""
    config, layers, vace_in_dim = VACE_CONFIGS["tiny"]
    reference = seeded_reference(
        WanVACETransformer3DModel, 3, **diffusers_config(config), vace_layers=layers, vace_in_channels=vace_in_dim
    )
    ours = ours_from(reference, lambda: WanDiT(**config, vace_layers=layers, vace_in_dim=vace_in_dim), tmp_path)
    x, t, context = inputs(config, (3, 4, 4), 3)
    generator = torch.Generator().manual_seed(7)
    controls = [torch.randn(x.shape[0], vace_in_dim, *x.shape[2:], generator=generator) for _ in range(2)]
    scales = [0.8, -0.3]
    text = padded(context, config["text_len"])

    def reference_hints(control: torch.Tensor) -> list[torch.Tensor]:
        hints: list[torch.Tensor] = []
        handles = [b.register_forward_hook(lambda _m, _i, out: hints.append(out[0])) for b in reference.vace_blocks]
        reference(x, t, text, control_hidden_states=control)
        for handle in handles:
            handle.remove()
        return hints

    with torch.inference_mode():
        per_control = [reference_hints(c) for c in controls]
        summed = [sum(s * h[j] for s, h in zip(scales, per_control)) for j in range(len(layers))]
        handles = [
            block.register_forward_hook(lambda _m, _i, out, j=j: (summed[j], out[1]))
            for j, block in enumerate(reference.vace_blocks)
        ]
        expected = reference(x, t, text, control_hidden_states=controls[0]).sample
        for handle in handles:
            handle.remove()
        assert_close(ours(x, t, context, vace_context=controls, vace_scale=scales), expected)


def test_context_longer_than_text_len_is_refused():
    model = WanDiT(**TINY_DIT).eval()
    x, t, _ = inputs(TINY_DIT, (1, 2, 2), 0)
    with pytest.raises(ValueError, match="more than text_len"):
        model(x, t, torch.zeros(2, TINY_DIT["text_len"] + 1, TINY_DIT["text_dim"]))


def test_vace_scales_must_match_contexts():
    model = WanDiT(**TINY_DIT, vace_layers=TINY_VACE_LAYERS, vace_in_dim=96).eval()
    x, t, context = inputs(TINY_DIT, (1, 2, 2), 0)
    control = torch.zeros(2, 96, 1, 2, 2)
    with pytest.raises(ValueError, match="2 vace scales for 1 vace contexts"):
        model(x, t, context, vace_context=[control], vace_scale=[1.0, 0.5])
