"""Image-to-video on the resident Engine with the tiny I2V experts: the conditioning layout, the
request checks naming their field, end-frame-only generation, LoRAs with per-phase multipliers
over a three-phase (Lightning-style) plan, and the shipped Lightning definitions' step plans.
Parity with diffusers is in test_pipeline.py."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from wan_engine.engine import Engine, new_sampler
from wan_engine.errors import InvalidRequest
from wan_engine.i2v import conditioning_mask, conditioning_video, image_condition
from wan_engine.multipliers import lora_multiplier_schedule
from wan_engine.phases import PhaseSettings, plan_steps
from wan_engine.registry import ModelRegistry
from wan_engine.request import GenerationRequest
from wan_engine.schema import resolve as resolve_parameters

WIDTH, HEIGHT, FRAMES = 32, 32, 9
MODEL = "tiny_i2v_2_2"


def image(seed: int, height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def request(model: str = MODEL, **fields) -> GenerationRequest:
    fields = {"prompt": "a kite in the wind", "num_inference_steps": 3, **fields}
    return GenerationRequest(model=model, width=WIDTH, height=HEIGHT, video_length=FRAMES, **fields)


@pytest.fixture(scope="module")
def engine(tiny_models_dir: Path) -> Engine:
    return Engine(tiny_models_dir, device="cpu", dtype=torch.float32)


@pytest.mark.parametrize(
    ("first", "last", "given_pixel_frames"),
    [(True, False, [0]), (False, True, [8]), (True, True, [0, 8])],
    ids=["first", "last", "both"],
)
def test_mask_marks_the_given_frames_with_the_first_repeated_four_times(first, last, given_pixel_frames):
    mask = conditioning_mask(FRAMES, 2, 3, first=first, last=last)
    assert mask.shape == (4, 3, 2, 3)  # 9 frames -> 3 latent frames of 4 pixel frames each
    # channel c of latent frame t stands for extended frame 4t + c; frame 0 fills all of latent frame 0
    extended = [0] * 4 + list(range(1, FRAMES))
    marked = sorted({extended[4 * t + c] for c in range(4) for t in range(3) if mask[c, t, 0, 0] == 1})
    assert marked == given_pixel_frames
    assert set(mask.unique().tolist()) <= {0.0, 1.0} and (mask == mask[:, :, :1, :1]).all()
    assert int(mask[:, 0].sum(0)[0, 0]) == (4 if first else 0)


def test_conditioning_video_holds_the_images_at_their_frames_and_zeros_between():
    start, end = image(1), image(2)
    video = conditioning_video(None, end, FRAMES)
    assert video.shape == (3, FRAMES, HEIGHT, WIDTH)
    assert (video[:, :-1] == 0).all()
    assert torch.allclose(video[:, -1], torch.from_numpy(end).permute(2, 0, 1).float() / 127.5 - 1)
    both = conditioning_video(start, end, FRAMES)
    assert torch.allclose(both[:, 0], torch.from_numpy(start).permute(2, 0, 1).float() / 127.5 - 1)
    assert (both[:, 1:-1] == 0).all() and torch.equal(both[:, -1], video[:, -1])


@pytest.mark.parametrize(
    ("model", "fields", "field"),
    [
        ("tiny_t2v_2_2", {"image_end": image(3)}, "image_end"),
        ("tiny_vace", {"image_start": image(3)}, "image_start"),
        (MODEL, {}, "image_start"),
        (MODEL, {"image_start": image(3, height=48)}, "image_start"),
        (MODEL, {"image_start": image(3), "image_end": image(4)[..., :2]}, "image_end"),
        (MODEL, {"image_start": image(3).astype(np.float32)}, "image_start"),
        (MODEL, {"image_start": image(3), "video_guide": np.zeros((FRAMES, HEIGHT, WIDTH, 3), np.uint8)}, "video_guide"),
    ],
    ids=["end_on_t2v", "start_on_vace", "no_image", "wrong_size", "not_rgb", "not_uint8", "control_on_i2v"],
)
def test_bad_image_requests_fail_naming_the_field(engine: Engine, model: str, fields: dict, field: str):
    with pytest.raises(InvalidRequest) as caught:
        engine.check(request(model, **fields))
    assert caught.value.field == field


def test_a_resolution_that_does_not_patchify_fails_naming_resolution(engine: Engine):
    bad = GenerationRequest(model=MODEL, prompt="x", width=40, height=32, video_length=FRAMES, image_start=image(5, width=40))
    with pytest.raises(InvalidRequest) as caught:
        engine.check(bad)
    assert caught.value.field == "resolution"


def test_the_i2v_defaults_switch_experts_at_the_official_boundary(engine: Engine):
    result = engine.generate(request(image_start=image(6), num_inference_steps=4))
    assert result.resolved["switch_threshold"] == 900.0 and result.resolved["flow_shift"] == 5.0
    assert result.frames.shape == (FRAMES, HEIGHT, WIDTH, 3)
    assert result.timings["image_encode"] > 0


def test_the_end_frame_alone_steers_the_video(engine: Engine):
    """The causal VAE puts an end frame only into the last latent frame of the conditioning; the
    video still depends on it (the tiny random VAE passes a chunk's fourth frame on weakly, so the
    frames move by a few levels only)."""
    first = engine.generate(request(image_end=image(7), seed=4)).frames
    again = engine.generate(request(image_end=image(7), seed=4)).frames
    other = engine.generate(request(image_end=image(8), seed=4)).frames
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)
    vae = engine._loaded.networks.vae
    one, two = (image_condition(vae, None, image(seed), FRAMES) for seed in (7, 8))
    assert torch.equal(one[:, :, :-1], two[:, :, :-1])
    assert (one[:, 4:, -1] - two[:, 4:, -1]).abs().max() > 0.05


def test_wan21_i2v_encodes_its_start_image_with_clip_once_per_generation(engine: Engine):
    """tiny_i2v (Wan 2.1 I2V): the CLIP encoder, read from a Wan checkpoint that also holds the text
    tower and the unused last block, lives with the model and encodes the start image (or, alone,
    the end image); its tokens reach the DiT (tests/test_dit.py: another image, another output)."""
    start = image(11)
    result = engine.generate(request("tiny_i2v", image_start=start, seed=2))
    assert result.frames.shape == (FRAMES, HEIGHT, WIDTH, 3) and result.timings["image_encode"] > 0
    assert np.array_equal(engine.generate(request("tiny_i2v", image_start=start, seed=2)).frames, result.frames)
    assert not np.array_equal(engine.generate(request("tiny_i2v", image_start=image(12), seed=2)).frames, result.frames)
    assert engine.generate(request("tiny_i2v", image_end=start, seed=2)).frames.shape == result.frames.shape
    encoder = engine._loaded.networks.image_encoder
    assert encoder is not None
    assert encoder(start, None, torch.device("cpu")).shape == (1, 5, 32)  # (28 / 14)^2 patches and the class token
    with pytest.raises(InvalidRequest) as caught:
        engine.check(request("tiny_i2v"))
    assert caught.value.field == "image_start"


def test_wan21_flf2v_encodes_both_frames_each_standing_in_for_a_missing_other(engine: Engine):
    """tiny_flf2v: the first and the last frame both go through CLIP, their tokens one after the other;
    a frame given alone is encoded twice (Wan2GP's rule), so one image suffices."""
    first, last = image(13), image(14)
    both = engine.generate(request("tiny_flf2v", image_start=first, image_end=last, seed=3))
    assert both.frames.shape == (FRAMES, HEIGHT, WIDTH, 3)
    assert not np.array_equal(engine.generate(request("tiny_flf2v", image_start=first, image_end=image(15), seed=3)).frames,
                              both.frames)
    encoder = engine._loaded.networks.image_encoder
    cpu = torch.device("cpu")
    tokens = encoder(first, last, cpu)
    assert tokens.shape == (1, 10, 32)
    assert torch.equal(encoder(first, None, cpu), torch.cat([tokens[:, :5]] * 2, dim=1))
    assert engine.generate(request("tiny_flf2v", image_end=last, seed=3)).frames.shape == both.frames.shape


def test_loras_with_per_phase_multipliers_run_over_three_phases(engine: Engine):
    """The Lightning layout: one LoRA file listed twice with different phase multipliers, experts
    switching at phase 2 -> 3; a LoRA whose multipliers are all zero changes nothing."""
    three_phases = dict(
        guidance_phases=3, model_switch_phase=2, switch_threshold=883, switch_threshold2=558, num_inference_steps=6,
        guidance_scale=3.0, guidance2_scale=1.0, guidance3_scale=1.0, sample_solver="euler", flow_shift=5.0,
        image_start=image(9), image_end=image(10), seed=2,
    )  # fmt: skip
    plain = engine.generate(request(**three_phases)).frames
    silent = engine.generate(request(**three_phases, lora_names=["tiny_kohya.safetensors"], lora_multipliers=["0;0;0"]))
    assert np.array_equal(silent.frames, plain)
    lightning = engine.generate(request(
        **three_phases, lora_names=["tiny_kohya.safetensors", "tiny_kohya.safetensors", "tiny_peft.safetensors"],
        lora_multipliers=["0.75;0;0", "0;1.2;0", "0;0;1"],
    ))  # fmt: skip
    assert lightning.resolved["lora_multipliers"] == ["0.75;0;0", "0;1.2;0", "0;0;1"]
    assert np.abs(lightning.frames.astype(int) - plain.astype(int)).mean() > 1.0


@pytest.mark.parametrize(
    ("key", "schedules"),
    [
        ("wan_2_2_i2v_lightning_baseline_2_2_2", [[0.75, 0.75, 1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0, 1.0, 1.0]]),
        ("wan_2_2_i2v_lightning_baseline_3_3", [[0.75, 0.75, 0, 0, 0, 0], [0, 0, 1.2, 1.2, 0, 0], [0, 0, 0, 0, 1.0, 1.0]]),
    ],
)
def test_the_lightning_definitions_plan_two_steps_per_phase_and_switch_experts_for_phase_3(
    tiny_models_dir: Path, key: str, schedules: list[list[float]]
):
    """The headless ecosystem's Lightning I2V models: 6 Euler steps, thresholds 883 / 558, CFG 3 in
    phase 1 only, the low-noise expert (and its LoRA) in phase 3 only."""
    spec = ModelRegistry(tiny_models_dir).get(key)
    assert spec.is_image_to_video and spec.is_dual_expert
    values, _ = resolve_parameters(spec, {})
    plan = plan_steps(new_sampler(values).timesteps, PhaseSettings.from_values(values), spec.is_dual_expert)
    assert [(step.phase, step.expert, step.guidance) for step in plan] == [
        (1, "high", 3.0), (1, "high", 3.0), (2, "high", 1.0), (2, "high", 1.0), (3, "low", 1.0), (3, "low", 1.0)
    ]  # fmt: skip
    schedule = lora_multiplier_schedule(values["lora_multipliers"], len(values["lora_names"]), plan, 3, 2)
    assert schedule == schedules
    assert all(name.startswith("https://huggingface.co/") for name in values["lora_names"])


@pytest.mark.parametrize("layout", ["diffusers", "comfy_fp16"])
def test_the_i2v_experts_load_from_the_diffusers_and_comfyui_layouts(tiny_models_dir: Path, tmp_path: Path, layout: str):
    """Same key names as the T2V experts (only patch_embedding is wider), so the engine's key maps
    read a diffusers `transformer/` file and a ComfyUI `model.diffusion_model.` fp16 file alike."""
    from diffusers import WanTransformer3DModel
    from safetensors.torch import load_file, save_file

    from wan_engine import testing
    from wan_engine.checkpoints import key_maps
    from wan_engine.nn.dit import TINY_I2V_DIT, diffusers_config, diffusers_to_official
    from wan_engine.weights import load_model

    original = load_file(str(tiny_models_dir / "tiny_i2v_2_2_high.safetensors"))
    if layout == "diffusers":
        with torch.device("meta"):
            names = list(WanTransformer3DModel(**diffusers_config(TINY_I2V_DIT)).state_dict())
        stored = {name: original[diffusers_to_official(name)] for name in names}
        assert stored.keys() != original.keys() and stored["patch_embedding.weight"].shape[1] == 36
    else:
        stored = {f"model.diffusion_model.{k}": v.half() if v.is_floating_point() else v for k, v in original.items()}
    save_file(stored, str(tmp_path / "expert.safetensors"))
    spec = ModelRegistry(tiny_models_dir).get(MODEL)
    loaded = load_model(testing.tiny_i2v_dit, [tmp_path / "expert.safetensors"], dtype=torch.float32,
                        key_map=key_maps(spec).dit).state_dict()  # fmt: skip
    for key, tensor in original.items():
        expected = tensor.half().float() if layout == "comfy_fp16" else tensor
        assert torch.equal(loaded[key].float(), expected), key
