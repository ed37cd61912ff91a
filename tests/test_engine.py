"""The resident Engine on the tiny models: loading and switching, progress and the expert switch,
guidance-1 forward counts, cancellation, out-of-memory recovery, LoRA isolation, request validation."""
from __future__ import annotations

import gc
import json
import shutil
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from fault_injection import faults
from safetensors.torch import load_file, save_file
from wan_engine.engine import Engine
from wan_engine.errors import GenerationCancelled, InvalidRequest, LoadError, OutOfMemory, WeightsMissing
from wan_engine.loras import DEFAULT_DEFINITIONS_DIR
from wan_engine.request import GenerationRequest

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
WIDTH, HEIGHT, FRAMES = 32, 32, 5


def request(model: str = "tiny_t2v", **fields) -> GenerationRequest:
    fields = {"prompt": "a red car", "num_inference_steps": 2, **fields}
    return GenerationRequest(model=model, width=WIDTH, height=HEIGHT, video_length=FRAMES, **fields)


def steps_into(reports: list[dict]) -> Callable[[dict], None]:
    """A progress callback keeping the denoising steps (each phase's start is reported too)."""
    return lambda progress: reports.append(progress) if progress["phase"] == "denoise" else None


def make_engine(models_dir: Path, **options) -> Engine:
    return Engine(models_dir, device=DEVICE, dtype=torch.float32, **options)


@pytest.fixture(scope="module")
def engine(tiny_models_dir: Path) -> Engine:
    """One engine shared by the tests that do not depend on what was loaded before."""
    return make_engine(tiny_models_dir)


def experts_of(engine: Engine) -> dict[str, torch.nn.Module]:
    return dict(engine._loaded.networks.experts.networks)


class ForwardLog:
    """Records (expert, timestep) for every DiT forward of the loaded model."""

    def __init__(self, engine: Engine):
        self.calls: list[tuple[str, float]] = []
        self._handles = [
            net.register_forward_pre_hook(lambda module, args, name=name: self.calls.append((name, float(args[1][0]))))
            for name, net in experts_of(engine).items()
        ]

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


@pytest.fixture
def forward_log(engine: Engine) -> Iterator[Callable[[], ForwardLog]]:
    logs: list[ForwardLog] = []

    def attach() -> ForwardLog:
        logs.append(ForwardLog(engine))
        return logs[-1]

    yield attach
    for log in logs:
        log.remove()


# ---- loading ------------------------------------------------------------------------------------------


def test_loading_the_resident_model_again_is_a_no_op(engine: Engine):
    engine.load("tiny_vace")
    before = experts_of(engine)["main"]
    assert engine.load("tiny_vace") is False
    assert experts_of(engine)["main"] is before
    assert engine.loaded_model == "tiny_vace"


def test_switching_models_frees_the_old_model(tiny_models_dir: Path):
    engine = make_engine(tiny_models_dir)
    baseline = torch.cuda.memory_allocated(DEVICE) if DEVICE.type == "cuda" else 0
    engine.load("tiny_t2v")
    t2v_bytes = engine.device_bytes()
    engine.load("tiny_vace_2_2")
    old_experts = [weakref.ref(net) for net in experts_of(engine).values()]
    assert engine.device_bytes() > t2v_bytes

    engine.load("tiny_t2v")
    gc.collect()
    assert all(ref() is None for ref in old_experts), "the old experts are still alive"
    assert engine.device_bytes() == t2v_bytes
    if DEVICE.type == "cuda":
        allocated = torch.cuda.memory_allocated(DEVICE) - baseline
        assert allocated <= t2v_bytes + 1024**2  # the t2v model, plus allocator rounding


def test_keep_previous_in_ram_switches_back_without_reading_files(tiny_models_dir: Path):
    engine = make_engine(tiny_models_dir, keep_previous_in_ram=True)
    engine.load("tiny_vace_2_2")
    experts = experts_of(engine)
    engine.load("tiny_t2v")
    engine.load("tiny_vace_2_2")
    assert experts_of(engine) == experts  # the very same modules, not a reload
    assert all(p.device.type == DEVICE.type for net in experts.values() for p in net.parameters())


def test_missing_files_raise_weights_missing_and_keep_the_resident_model(tiny_models_dir: Path, tmp_path: Path):
    models = tmp_path / "models"
    shutil.copytree(tiny_models_dir, models)
    (models / "tiny_vace_module.safetensors").unlink()
    engine = make_engine(models)
    engine.load("tiny_t2v")
    with pytest.raises(WeightsMissing) as raised:
        engine.load("tiny_vace")
    assert "tiny_vace_module.safetensors" in str(raised.value) and str(models) in str(raised.value)
    assert engine.loaded_model == "tiny_t2v"


def test_a_checkpoint_that_does_not_fit_fails_from_its_header_and_keeps_the_resident_model(
    tiny_models_dir: Path, tmp_path: Path
):
    models = tmp_path / "models"
    shutil.copytree(tiny_models_dir, models)
    shutil.copy(models / "tiny_vae.safetensors", models / "tiny_vace_module.safetensors")  # wrong keys
    engine = make_engine(models)
    engine.load("tiny_t2v")
    with pytest.raises(LoadError) as raised:
        engine.load("tiny_vace")
    assert str(models / "tiny_vace_module.safetensors") in str(raised.value)
    assert engine.loaded_model == "tiny_t2v"
    assert engine.generate(request("tiny_t2v")).frames.shape == (FRAMES, HEIGHT, WIDTH, 3)


def test_a_vace_2_2_model_whose_expert_files_hold_their_vace_blocks_runs_as_the_module_form(
    tiny_models_dir: Path, tmp_path: Path
):
    """Wan2.2-VACE-Fun (vace_fun_14B_2_2) ships each expert as one file with its VACE blocks inside,
    where the cocktail adds a VACE module to each expert: the same weights in either form give the
    same frames."""
    models = tmp_path / "models"
    shutil.copytree(tiny_models_dir, models)
    for expert in ("high", "low"):
        merged = {**load_file(models / f"tiny_t2v_2_2_{expert}.safetensors"),
                  **load_file(models / f"tiny_vace_2_2_module_{expert}.safetensors")}
        save_file(merged, models / f"tiny_vace_fun_2_2_{expert}.safetensors")
    defaults = tmp_path / "defaults"
    shutil.copytree(DEFAULT_DEFINITIONS_DIR, defaults)
    (defaults / "tiny_vace_fun_2_2.json").write_text(json.dumps({
        "model": {"name": "tiny Fun VACE", "architecture": "tiny_vace_2_2", "group": "wan2_2",
                  "URLs": ["tiny_vace_fun_2_2_high.safetensors"], "URLs2": ["tiny_vace_fun_2_2_low.safetensors"]},
        "guidance_phases": 2, "num_inference_steps": 4, "switch_threshold": 875,
    }))
    engine = make_engine(models, defaults_dir=defaults)
    guide = np.full((FRAMES, HEIGHT, WIDTH, 3), 90, np.uint8)
    fun = engine.generate(request("tiny_vace_fun_2_2", seed=5, video_guide=guide)).frames
    modules = engine.generate(request("tiny_vace_2_2", seed=5, video_guide=guide)).frames
    assert np.array_equal(fun, modules)


# ---- generation -----------------------------------------------------------------------------------------


def test_generation_returns_frames_timings_and_resolved_parameters(engine: Engine):
    result = engine.generate(request("tiny_vace_2_2", seed=3, flow_shift=3.0))
    assert result.frames.dtype == np.uint8 and result.frames.shape == (FRAMES, HEIGHT, WIDTH, 3)
    assert result.model == "tiny_vace_2_2"
    assert {"load", "text_encode", "vace_encode", "denoise_high", "decode", "total"} <= set(result.timings)
    assert result.resolved["flow_shift"] == 3.0 and result.resolved["sources"]["flow_shift"] == "request"
    assert result.resolved["switch_threshold"] == 875 and result.resolved["sources"]["switch_threshold"] == "definition"


def test_same_seed_gives_the_same_video_and_another_seed_another(engine: Engine):
    first = engine.generate(request(seed=5)).frames
    assert np.array_equal(engine.generate(request(seed=5)).frames, first)
    assert not np.array_equal(engine.generate(request(seed=6)).frames, first)


def test_progress_reports_every_step_with_phase_and_expert(engine: Engine):
    everything: list[dict] = []
    engine.generate(request("tiny_t2v_2_2", num_inference_steps=4), on_progress=everything.append)
    reports = [r for r in everything if r["phase"] == "denoise"]
    assert [r["step"] for r in reports] == [1, 2, 3, 4]
    assert all(r["phase"] == "denoise" and r["steps"] == 4 for r in reports)
    assert [r["percent"] for r in reports] == [25.0, 50.0, 75.0, 100.0]
    assert [r["expert"] for r in reports] == ["high"] + ["low"] * 3
    assert [r["guidance_phase"] for r in reports] == [1, 2, 2, 2]


@pytest.mark.parametrize(
    ("steps", "shift", "threshold"), [(4, 2.0, 875), (6, 5.0, 900), (6, 1.0, 500), (5, 12.0, 950)]
)
def test_high_noise_expert_runs_exactly_the_steps_at_or_above_the_threshold(
    engine: Engine, forward_log, steps: int, shift: float, threshold: float
):
    engine.load("tiny_t2v_2_2")
    log = forward_log()
    reports: list[dict] = []
    engine.generate(
        request("tiny_t2v_2_2", num_inference_steps=steps, flow_shift=shift, switch_threshold=threshold),
        on_progress=steps_into(reports),
    )
    assert len(log.calls) == steps
    assert [expert for expert, _ in log.calls] == [r["expert"] for r in reports]
    assert all((t >= threshold) == (expert == "high") for expert, t in log.calls), log.calls
    assert {expert for expert, _ in log.calls} == {"high", "low"}


def test_guidance_one_runs_one_forward_per_step_and_no_negative_prompt(engine: Engine, forward_log):
    engine.load("tiny_t2v_2_2")
    encoded: list[int] = []
    hook = engine._loaded.networks.text_encoder.encoder.module.register_forward_pre_hook(
        lambda module, args: encoded.append(args[0].shape[0])
    )
    try:
        log = forward_log()
        engine.generate(request("tiny_t2v_2_2", prompt="a blue boat at sunset", num_inference_steps=4))
        assert len(log.calls) == 4
        assert encoded == [1]  # the prompt only
    finally:
        hook.remove()


def test_guidance_above_one_adds_the_unconditional_pass_only_in_its_phase(engine: Engine, forward_log):
    engine.load("tiny_t2v_2_2")
    log = forward_log()
    reports: list[dict] = []
    engine.generate(request("tiny_t2v_2_2", num_inference_steps=4, guidance2_scale=3.0), on_progress=steps_into(reports))
    low_steps = sum(r["expert"] == "low" for r in reports)
    assert low_steps == 3
    assert len(log.calls) == 4 + low_steps


@pytest.mark.parametrize("model_switch_phase", [1, 2])
def test_three_phase_fleet_setup_switches_guidance_and_expert_at_the_thresholds(
    engine: Engine, forward_log, model_switch_phase: int
):
    """The headless Wan2GP fleets' setting: 3 phases, 6 euler steps, guidance 3/1/1, thresholds 883/558."""
    engine.load("tiny_vace_2_2")
    log = forward_log()
    reports: list[dict] = []
    engine.generate(
        request(
            "tiny_vace_2_2", num_inference_steps=6, sample_solver="euler", guidance_phases=3, guidance_scale=3.0,
            guidance2_scale=1.0, guidance3_scale=1.0, switch_threshold=883, switch_threshold2=558,
            model_switch_phase=model_switch_phase,
        ),
        on_progress=steps_into(reports),
    )  # fmt: skip
    step_timesteps = list(dict.fromkeys(t for _, t in log.calls))  # decreasing; CFG steps call twice
    phases = [r["guidance_phase"] for r in reports]
    assert phases == [1 if t >= 883 else 2 if t >= 558 else 3 for t in step_timesteps]
    assert set(phases) == {1, 2, 3}
    assert [r["expert"] for r in reports] == ["high" if p <= model_switch_phase else "low" for p in phases]
    assert len(log.calls) == len(reports) + phases.count(1)  # CFG (two passes) in phase 1 only


def test_cancellation_stops_at_the_next_step_and_the_engine_still_works(engine: Engine):
    reports: list[dict] = []
    with pytest.raises(GenerationCancelled):
        engine.generate(
            request(num_inference_steps=4), on_progress=steps_into(reports), should_cancel=lambda: len(reports) >= 2
        )
    assert len(reports) == 2
    assert engine.loaded_model == "tiny_t2v"
    assert engine.generate(request()).frames.shape == (FRAMES, HEIGHT, WIDTH, 3)


def test_out_of_memory_is_retried_once_with_the_same_result(engine: Engine):
    expected = engine.generate(request("tiny_t2v_2_2", seed=2)).frames
    faults(engine).oom = 1
    frames = engine.generate(request("tiny_t2v_2_2", seed=2)).frames
    assert faults(engine).oom == 0
    assert np.array_equal(frames, expected)


def test_repeated_out_of_memory_raises_and_leaves_the_model_loaded(engine: Engine):
    engine.load("tiny_t2v")
    faults(engine).oom = 2
    with pytest.raises(OutOfMemory):
        engine.generate(request())
    assert faults(engine).oom == 0
    assert engine.loaded_model == "tiny_t2v"
    assert engine.generate(request()).frames.shape == (FRAMES, HEIGHT, WIDTH, 3)


def test_a_lora_task_leaves_the_next_plain_task_bit_exact(tiny_models_dir: Path, engine: Engine):
    plain = request("tiny_vace", seed=4)
    with_lora = request("tiny_vace", seed=4, lora_names=["tiny_kohya", "TINY_PEFT"], lora_multipliers=["1", "0.5"])
    engine.generate(plain)
    lora_frames = engine.generate(with_lora).frames
    after = engine.generate(plain).frames
    fresh = make_engine(tiny_models_dir).generate(plain).frames
    assert not np.array_equal(lora_frames, fresh)
    assert np.array_equal(after, fresh)


def test_vace_second_stream_adds_hints_with_its_own_strength(engine: Engine):
    rng = np.random.default_rng(0)
    guide = rng.integers(0, 256, (FRAMES, HEIGHT, WIDTH, 3), dtype=np.uint8)
    guide2 = rng.integers(0, 256, (FRAMES, HEIGHT, WIDTH, 3), dtype=np.uint8)
    mask = np.full((FRAMES, HEIGHT, WIDTH), 255, dtype=np.uint8)
    one = engine.generate(request("tiny_vace", video_guide=guide, video_mask=mask)).frames
    silent = engine.generate(
        request("tiny_vace", video_guide=guide, video_mask=mask, video_guide2=guide2, control_net_weight2=0.0)
    ).frames
    two = engine.generate(request("tiny_vace", video_guide=guide, video_mask=mask, video_guide2=guide2)).frames
    assert np.array_equal(silent, one)
    assert not np.array_equal(two, one)


def test_reference_images_are_generated_then_trimmed(engine: Engine):
    reference = np.random.default_rng(1).integers(0, 256, (24, 40, 3), dtype=np.uint8)
    plain = engine.generate(request("tiny_vace_2_2")).frames
    frames = engine.generate(request("tiny_vace_2_2", image_refs=[reference])).frames
    assert frames.shape == (FRAMES, HEIGHT, WIDTH, 3)
    assert not np.array_equal(frames, plain)


# ---- bad requests -------------------------------------------------------------------------------------------

_GUIDE = np.zeros((FRAMES, HEIGHT, WIDTH, 3), dtype=np.uint8)
_MASK = np.zeros((FRAMES, HEIGHT, WIDTH), dtype=np.uint8)
BAD_REQUESTS = {
    "resolution not a multiple of 16": (dict(width=40), "resolution"),
    "video_length not 4n+1": (dict(video_length=8), "video_length"),
    "guide shorter than the video": (dict(model="tiny_vace", video_guide=_GUIDE[:3]), "video_guide"),
    "mask of another size": (dict(model="tiny_vace", video_mask=_MASK[:, :16]), "video_mask"),
    "second guide not RGB": (dict(model="tiny_vace", video_guide2=_MASK), "video_guide2"),
    "guide for a model without VACE": (dict(model="tiny_t2v", video_guide=_GUIDE), "video_guide"),
    "unknown LoRA": (dict(lora_names=["no_such_lora"]), "lora_names"),
    "multiplier with too many phases": (dict(lora_names=["tiny_kohya"], lora_multipliers=["1;0"]), "lora_multipliers"),
    "more per-step values than steps": (dict(lora_names=["tiny_peft"], lora_multipliers=["1,0.5,0"]), "lora_multipliers"),
    "unknown sampler": (dict(sample_solver="ddim"), "sample_solver"),
    "single-phase dual expert": (dict(model="tiny_t2v_2_2", guidance_phases=1), "guidance_phases"),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_requests_name_the_field_and_do_not_switch_the_model(engine: Engine, case: str):
    changes, field = BAD_REQUESTS[case]
    engine.load("tiny_vace_2_2")
    fields = dict(model="tiny_t2v", prompt="x", width=WIDTH, height=HEIGHT, video_length=FRAMES, num_inference_steps=2)
    with pytest.raises(InvalidRequest) as raised:
        engine.generate(GenerationRequest(**{**fields, **changes}))
    assert raised.value.field == field
    assert engine.loaded_model == "tiny_vace_2_2"
