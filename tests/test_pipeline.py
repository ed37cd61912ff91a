"""The whole generation pipeline against diffusers' WanPipeline / WanVACEPipeline / WanImageToVideoPipeline.

Same tiny random weights (ours from wan_engine.testing, copied into the diffusers models through
the key maps), the same prompt embeddings and the same initial latents; UniPC on both sides. The
final latents must agree to TOLERANCE of their scale, and the decoded uint8 frames to within
FRAME_LEVELS grey levels (float rounding can flip a level where a value sits on .5).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import (
    AutoencoderKLWan,
    UniPCMultistepScheduler,
    WanImageToVideoPipeline,
    WanPipeline,
    WanTransformer3DModel,
    WanVACEPipeline,
    WanVACETransformer3DModel,
)

from wan_engine import i2v, testing
from wan_engine.memory import Experts
from wan_engine.nn.clip import TINY_CLIP, wan_key_map
from wan_engine.nn.dit import (
    TINY_DIT,
    TINY_FLF2V_DIT,
    TINY_I2V_CLIP_DIT,
    TINY_VACE_LAYERS,
    WanDiT,
    diffusers_config,
    diffusers_to_official,
)
from wan_engine.nn.vae import TINY_VAE, diffusers_key_map
from wan_engine.phases import PhaseSettings, plan_steps
from wan_engine.pipeline import (
    ControlStream,
    Job,
    PhaseTimer,
    control_contexts,
    decode_frames,
    denoise,
    initial_noise,
    latent_shape,
)
from wan_engine.sampling import UniPCSampler, make_sampler
from wan_engine.tokenizer import T5Tokenizer
from wan_engine.weights import load_model

TOLERANCE = 2e-5  # max |ours - diffusers| over the final latents, relative to their standard deviation
FRAME_LEVELS = 1  # max difference of decoded uint8 frames
CPU = torch.device("cpu")
WIDTH, HEIGHT, FRAMES = 64, 48, 9
SHIFT = 3.0


@pytest.fixture
def models_dir(tiny_models_dir: Path) -> Path:
    return tiny_models_dir


def our_dit(models_dir: Path, *files: str) -> torch.nn.Module:
    if any("i2v" in f for f in files):
        return load_model(testing.tiny_i2v_dit, [models_dir / f for f in files], dtype=torch.float32)
    vace = any("vace" in f for f in files)
    return load_model(lambda: testing.tiny_dit(vace=vace), [models_dir / f for f in files], dtype=torch.float32)


def our_vae(models_dir: Path) -> torch.nn.Module:
    return load_model(testing.tiny_vae, [models_dir / "tiny_vae.safetensors"], dtype=torch.float32)


def diffusers_dit(ours: torch.nn.Module, vace: bool) -> torch.nn.Module:
    kwargs = dict(
        patch_size=TINY_DIT["patch_size"], num_attention_heads=TINY_DIT["num_heads"],
        attention_head_dim=TINY_DIT["dim"] // TINY_DIT["num_heads"], in_channels=ours.patch_embedding.in_channels,
        out_channels=TINY_DIT["out_dim"], text_dim=TINY_DIT["text_dim"], freq_dim=TINY_DIT["freq_dim"],
        ffn_dim=TINY_DIT["ffn_dim"], num_layers=TINY_DIT["num_layers"], cross_attn_norm=TINY_DIT["cross_attn_norm"],
        eps=TINY_DIT["eps"],
    )  # fmt: skip
    if vace:
        reference = WanVACETransformer3DModel(**kwargs, vace_layers=TINY_VACE_LAYERS, vace_in_channels=96)
    else:
        reference = WanTransformer3DModel(**kwargs)
    state = ours.state_dict()
    reference.load_state_dict({key: state[diffusers_to_official(key)] for key in reference.state_dict()})
    return reference.eval()


def diffusers_transformer(ours: torch.nn.Module, config: dict) -> WanTransformer3DModel:
    """diffusers' transformer for the network `config` describes, holding `ours`'s weights."""
    reference = WanTransformer3DModel(**diffusers_config(config))
    state = ours.state_dict()
    reference.load_state_dict({key: state[diffusers_to_official(key)] for key in reference.state_dict()})
    return reference.eval()


def diffusers_vae(ours: torch.nn.Module) -> AutoencoderKLWan:
    reference = AutoencoderKLWan(
        base_dim=TINY_VAE["base_dim"], z_dim=TINY_VAE["z_dim"], dim_mult=list(TINY_VAE["dim_mult"]),
        num_res_blocks=TINY_VAE["num_res_blocks"], temperal_downsample=list(TINY_VAE["temperal_downsample"]),
    )  # fmt: skip
    to_official = diffusers_key_map(TINY_VAE["num_res_blocks"])
    state = ours.state_dict()
    reference.load_state_dict({key: state[to_official(key)] for key in reference.state_dict()})
    return reference.eval()


def prompt_embeddings(models_dir: Path, texts: list[str]) -> torch.Tensor:
    """Our umT5 output for `texts`: [B, text_len, 32], zero after each prompt (what both pipelines get)."""
    encoder = load_model(testing.tiny_text_encoder, [models_dir / "tiny_umt5.safetensors"], dtype=torch.float32)
    ids, mask = T5Tokenizer(models_dir / testing.TINY_T5_FOLDER, TINY_DIT["text_len"])(texts)
    with torch.no_grad():
        return encoder(ids, mask)


def make_job(steps: int, settings: PhaseSettings, dual_expert: bool, **fields) -> Job:
    sampler = make_sampler("unipc", steps, SHIFT)
    plan = plan_steps(sampler.timesteps, settings, dual_expert)
    return Job(
        prompt="", negative_prompt="", width=WIDTH, height=HEIGHT, num_frames=FRAMES, seed=0,
        sampler=sampler, plan=plan, **fields,
    )  # fmt: skip


class WanGridUniPC(UniPCMultistepScheduler):
    """diffusers' UniPC on Wan's sigma grid (that of the official FlowUniPCMultistepScheduler, which
    tests/test_sampling.py checks step by step). The pipelines call set_timesteps(n) without
    sigmas, so the grid is supplied here."""

    def set_timesteps(self, num_inference_steps=None, device=None, **kwargs):
        super().set_timesteps(device=device, sigmas=UniPCSampler.unshifted_sigmas(num_inference_steps))


class OurImageTokens(WanImageToVideoPipeline):
    """diffusers' Wan 2.1 I2V pipeline encoding its image with our CLIP encoder's tokens (`tokens`;
    the encoder itself is checked against transformers in tests/test_clip.py). Its `image_embeds`
    argument cannot be used: the pipeline refuses it together with the `image` its latents need."""

    tokens: torch.Tensor | None = None

    def encode_image(self, image, device=None):
        return self.tokens.to(device)


def unipc(shift: float) -> UniPCMultistepScheduler:
    return WanGridUniPC(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=shift)


def run_reference(pipeline, **kwargs) -> tuple[torch.Tensor, np.ndarray]:
    """(final latents, frames uint8 [F,H,W,3]) of a diffusers pipeline call."""
    final = {}

    def keep_latents(pipe, step, timestep, tensors):
        final["latents"] = tensors["latents"]
        return tensors

    frames = pipeline(
        height=HEIGHT, width=WIDTH, num_frames=FRAMES, output_type="np", callback_on_step_end=keep_latents, **kwargs
    ).frames[0]
    return final["latents"], np.round(frames * 255).astype(np.uint8)


def run_ours(experts: Experts, vae, job: Job, context, negative, noise, controls=(), condition=None,
             image_tokens=None) -> tuple[torch.Tensor, np.ndarray]:
    latents = denoise(
        experts, noise, job, context, negative, list(controls), condition=condition, image_tokens=image_tokens,
        on_step=lambda step: None, should_cancel=lambda: False, timer=PhaseTimer(CPU),
    )  # fmt: skip
    return latents, decode_frames(vae, latents[:, :, len(job.references) :])


def assert_pipelines_agree(ours: tuple[torch.Tensor, np.ndarray], reference: tuple[torch.Tensor, np.ndarray]) -> None:
    latents, frames = ours
    expected_latents, expected_frames = reference
    error = (latents - expected_latents).abs().max() / expected_latents.std()
    assert error <= TOLERANCE, f"final latents differ by {error:.2e} of their std"
    assert frames.shape == expected_frames.shape
    assert np.abs(frames.astype(int) - expected_frames.astype(int)).max() <= FRAME_LEVELS
    assert frames.std() > 10, "degenerate frames would make the comparison meaningless"


def test_wan21_text_to_video_matches_diffusers_wan_pipeline(models_dir: Path):
    dit, vae = our_dit(models_dir, "tiny_t2v.safetensors"), our_vae(models_dir)
    embeddings = prompt_embeddings(models_dir, ["a red car on a street", "blurry, dark"])
    context, negative = embeddings[:1], embeddings[1:]
    job = make_job(4, PhaseSettings(guidance_scale=4.0), dual_expert=False)
    noise = initial_noise(7, latent_shape(job, 0), CPU)

    reference = WanPipeline(
        tokenizer=None, text_encoder=None, vae=diffusers_vae(vae), transformer=diffusers_dit(dit, vace=False),
        scheduler=unipc(SHIFT),
    )  # fmt: skip
    expected = run_reference(
        reference, prompt_embeds=context, negative_prompt_embeds=negative, latents=noise.clone(),
        num_inference_steps=4, guidance_scale=4.0,
    )  # fmt: skip
    ours = run_ours(Experts({"main": dit}, CPU, take_turns=False), vae, job, context, negative, noise)
    assert_pipelines_agree(ours, expected)


def test_wan22_dual_expert_matches_diffusers_with_transformer_2_and_boundary(models_dir: Path):
    high = our_dit(models_dir, "tiny_t2v_2_2_high.safetensors")
    low = our_dit(models_dir, "tiny_t2v_2_2_low.safetensors")
    vae = our_vae(models_dir)
    embeddings = prompt_embeddings(models_dir, ["a dog runs on the beach", ""])
    context, negative = embeddings[:1], embeddings[1:]
    boundary = 0.8  # 5 UniPC steps at shift 3: timesteps 999, 922, 817, 666, 428 -> 3 high, 2 low
    settings = PhaseSettings(guidance_phases=2, guidance_scale=3.5, guidance2_scale=2.0, switch_threshold=800)
    job = make_job(5, settings, dual_expert=True)
    assert [s.expert for s in job.plan] == ["high"] * 3 + ["low"] * 2
    noise = initial_noise(3, latent_shape(job, 0), CPU)

    reference = WanPipeline(
        tokenizer=None, text_encoder=None, vae=diffusers_vae(vae), transformer=diffusers_dit(high, vace=False),
        transformer_2=diffusers_dit(low, vace=False), scheduler=unipc(SHIFT), boundary_ratio=boundary,
    )  # fmt: skip
    expected = run_reference(
        reference, prompt_embeds=context, negative_prompt_embeds=negative, latents=noise.clone(),
        num_inference_steps=5, guidance_scale=3.5, guidance_scale_2=2.0,
    )  # fmt: skip
    experts = Experts({"high": high, "low": low}, CPU, take_turns=False)
    assert_pipelines_agree(run_ours(experts, vae, job, context, negative, noise), expected)


def control_inputs(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A control video (uint8 [F,H,W,3]), a mask keeping the first 3 frames and a left band of every
    later frame (uint8 [F,H,W], 255 = generate), and a 32x40 reference image of another shape."""
    rng = np.random.default_rng(seed)
    video = rng.integers(0, 256, (FRAMES, HEIGHT, WIDTH, 3), dtype=np.uint8)
    mask = np.full((FRAMES, HEIGHT, WIDTH), 255, dtype=np.uint8)
    mask[:3] = 0
    mask[:, :, :16] = 0
    reference = rng.integers(0, 256, (32, 40, 3), dtype=np.uint8)
    return video, mask, reference


def diffusers_control_arguments(video: np.ndarray, mask: np.ndarray, reference: np.ndarray) -> dict:
    return dict(
        video=[PIL.Image.fromarray(frame) for frame in video],
        mask=[PIL.Image.fromarray(np.repeat(m[..., None], 3, axis=-1)) for m in mask],
        reference_images=[PIL.Image.fromarray(reference)],
    )


@pytest.mark.parametrize("dual_expert", [False, True], ids=["wan21_vace", "wan22_vace"])
def test_vace_with_video_mask_and_reference_matches_diffusers_wan_vace_pipeline(models_dir: Path, dual_expert: bool):
    if dual_expert:
        files = {e: (f"tiny_t2v_2_2_{e}.safetensors", f"tiny_vace_2_2_module_{e}.safetensors") for e in ("high", "low")}
        settings = PhaseSettings(guidance_phases=2, guidance_scale=3.0, guidance2_scale=1.5, switch_threshold=900)
    else:
        files = {"main": ("tiny_t2v.safetensors", "tiny_vace_module.safetensors")}
        settings = PhaseSettings(guidance_scale=3.0)
    dits = {name: our_dit(models_dir, *pair) for name, pair in files.items()}
    vae = our_vae(models_dir)
    embeddings = prompt_embeddings(models_dir, ["a cat walks through the forest", "static"])
    context, negative = embeddings[:1], embeddings[1:]
    video, mask, reference_image = control_inputs(seed=5)
    job = make_job(
        4, settings, dual_expert,
        controls=[ControlStream(video, mask, scale=0.8)], references=[reference_image],
    )  # fmt: skip
    noise = initial_noise(11, latent_shape(job, num_references=1), CPU)
    assert noise.shape[2] == 1 + 1 + (FRAMES - 1) // 4  # the reference frame leads

    diffusers_models = {
        "transformer": diffusers_dit(dits.get("main", dits.get("high")), vace=True),
        **({"transformer_2": diffusers_dit(dits["low"], vace=True), "boundary_ratio": 0.9} if dual_expert else {}),
    }
    reference = WanVACEPipeline(
        tokenizer=None, text_encoder=None, vae=diffusers_vae(vae), scheduler=unipc(SHIFT), **diffusers_models
    )
    expected = run_reference(
        reference, prompt_embeds=context, negative_prompt_embeds=negative, latents=noise.clone(),
        num_inference_steps=4, guidance_scale=3.0, **({"guidance_scale_2": 1.5} if dual_expert else {}),
        conditioning_scale=0.8, **diffusers_control_arguments(video, mask, reference_image),
    )  # fmt: skip
    with torch.no_grad():
        controls = control_contexts(vae, job)
    ours = run_ours(Experts(dits, CPU, take_turns=False), vae, job, context, negative, noise, controls)
    assert_pipelines_agree(ours, expected)


@pytest.mark.parametrize("last_frame", [False, True], ids=["first_frame", "first_and_last_frame"])
def test_wan22_image_to_video_matches_diffusers_wan_image_to_video_pipeline(models_dir: Path, last_frame: bool):
    """Wan 2.2 I2V A14B: two experts switching at boundary 0.9 (the official I2V value), no CLIP
    image encoder, conditioned on a first frame and optionally a last frame (`last_image`)."""
    dits = {e: our_dit(models_dir, f"tiny_i2v_2_2_{e}.safetensors") for e in ("high", "low")}
    vae = our_vae(models_dir)
    embeddings = prompt_embeddings(models_dir, ["a boat drifts across a lake", "still"])
    context, negative = embeddings[:1], embeddings[1:]
    rng = np.random.default_rng(21)
    first, last = (rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8) for _ in range(2))
    settings = PhaseSettings(guidance_phases=2, guidance_scale=3.5, guidance2_scale=2.0, switch_threshold=900)
    job = make_job(5, settings, dual_expert=True, image_start=first, image_end=last if last_frame else None)
    assert [s.expert for s in job.plan] == ["high"] * 2 + ["low"] * 3  # 999, 922 >= 900 > 817, 666, 428
    noise = initial_noise(13, latent_shape(job, 0), CPU)

    reference = WanImageToVideoPipeline(
        tokenizer=None, text_encoder=None, vae=diffusers_vae(vae), scheduler=unipc(SHIFT),
        transformer=diffusers_dit(dits["high"], vace=False), transformer_2=diffusers_dit(dits["low"], vace=False),
        boundary_ratio=0.9,
    )  # fmt: skip
    expected = run_reference(
        reference, image=PIL.Image.fromarray(first), prompt_embeds=context, negative_prompt_embeds=negative,
        latents=noise.clone(), num_inference_steps=5, guidance_scale=3.5, guidance_scale_2=2.0,
        **({"last_image": PIL.Image.fromarray(last)} if last_frame else {}),
    )  # fmt: skip
    with torch.no_grad():
        condition = i2v.image_condition(vae, job.image_start, job.image_end, FRAMES)
    assert condition.shape == (1, 20, *noise.shape[2:])
    ours = run_ours(Experts(dits, CPU, take_turns=False), vae, job, context, negative, noise, condition=condition)
    assert_pipelines_agree(ours, expected)


@pytest.mark.parametrize("name", ["i2v", "flf2v"])
def test_wan21_image_to_video_matches_diffusers_wan_image_to_video_pipeline_with_clip_tokens(models_dir: Path, name: str):
    """Wan 2.1 I2V: one DiT that reads the first-frame conditioning and the CLIP image tokens of our
    encoder on both the conditional and unconditional passes; FLF2V: the first and last frame, both
    through CLIP (diffusers' `last_image`). diffusers gets our encoder's tokens (OurImageTokens) and
    tells them from the text by a text of 512 tokens, so the prompts are padded to 512 for both (the
    tiny DiT's weights do not depend on its text length)."""
    config = dict(TINY_I2V_CLIP_DIT if name == "i2v" else TINY_FLF2V_DIT, text_len=512)
    dit = load_model(lambda: WanDiT(**config), [models_dir / f"tiny_{name}.safetensors"], dtype=torch.float32)
    encoder = load_model(testing.tiny_clip, [models_dir / "tiny_clip.safetensors"], dtype=torch.float32,
                         key_map=wan_key_map(TINY_CLIP["num_layers"]))
    vae = our_vae(models_dir)
    embeddings = torch.nn.functional.pad(prompt_embeddings(models_dir, ["a kite over a field", "dull"]), (0, 0, 0, 480))
    context, negative = embeddings[:1], embeddings[1:]
    rng = np.random.default_rng(8)
    first, last = (rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8) for _ in range(2))
    last = last if name == "flf2v" else None
    job = make_job(4, PhaseSettings(guidance_scale=5.0), dual_expert=False, image_start=first, image_end=last)
    noise = initial_noise(17, latent_shape(job, 0), CPU)
    image_tokens = torch.cat([encoder.encode(image) for image in (first, last) if image is not None], dim=1)

    reference = OurImageTokens(
        tokenizer=None, text_encoder=None, vae=diffusers_vae(vae), scheduler=unipc(SHIFT),
        transformer=diffusers_transformer(dit, config),
    )  # fmt: skip
    reference.tokens = image_tokens.reshape(-1, 5, TINY_CLIP["dim"])  # diffusers: one row per frame
    expected = run_reference(
        reference, image=PIL.Image.fromarray(first), prompt_embeds=context, negative_prompt_embeds=negative,
        latents=noise.clone(), num_inference_steps=4, guidance_scale=5.0,
        **({"last_image": PIL.Image.fromarray(last)} if last is not None else {}),
    )  # fmt: skip
    with torch.no_grad():
        condition = i2v.image_condition(vae, job.image_start, job.image_end, FRAMES)
    ours = run_ours(Experts({"main": dit}, CPU, take_turns=False), vae, job, context, negative, noise,
                    condition=condition, image_tokens=image_tokens)
    assert_pipelines_agree(ours, expected)
