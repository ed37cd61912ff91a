"""The engine's GPU settings on the CPU: the bf16 VAE against fp32, VACE's batched encode against two
passes, compiled blocks (plumbing, cache folder, the `compile` phase, equality with eager), and the
worker settings precision / no_compile / gpu_memory_gb reaching the engine."""
from __future__ import annotations

import argparse
import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from torch._inductor.runtime.cache_dir_utils import cache_dir

from wan_engine import testing, vace
from wan_engine.engine import COMPILE_CACHE_FOLDER, Engine
from wan_engine.fp8 import quantize_dit
from wan_engine.quality import psnr_db
from wan_engine.request import GenerationRequest
from worker.config import ALL_SETTINGS, add_setting_arguments, load_config
from worker.resources import WorkerResources
from worker.store import TaskStatus, TaskStore
from worker_harness import resources, run_until_idle  # noqa: F401

VAE_PSNR_BAR_DB = 40.0


def tiny_vae(seed: int, dtype: torch.dtype) -> torch.nn.Module:
    vae = testing.tiny_vae()
    vae.load_state_dict(testing.random_state(vae, seed))
    return vae.to(dtype).eval()


def to_uint8(video: torch.Tensor) -> np.ndarray:
    return ((video.float() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()


def test_the_bf16_vae_decodes_within_40_db_of_the_fp32_vae() -> None:
    seed = 4
    latents = torch.randn(1, 16, 2, 6, 8, generator=torch.Generator().manual_seed(seed))
    exact = to_uint8(tiny_vae(seed, torch.float32).decode(latents))
    fast = to_uint8(tiny_vae(seed, torch.bfloat16).decode(latents))
    assert VAE_PSNR_BAR_DB <= psnr_db(fast, exact) < float("inf")


def test_vace_encodes_inactive_reactive_and_references_in_batches_with_the_numbers_of_separate_passes() -> None:
    vae = tiny_vae(2, torch.float32)
    generator = torch.Generator().manual_seed(2)
    frames = torch.rand(3, 9, 48, 64, generator=generator) * 2 - 1
    mask = (torch.rand(1, 9, 48, 64, generator=generator) > 0.5).float()
    references = [torch.rand(3, 1, 48, 64, generator=generator) * 2 - 1 for _ in range(2)]
    batched = vace.encode_frames(vae, frames, mask, references)
    binary = (mask > 0.5).float()
    inactive, reactive = vae.encode((frames * (1 - binary))[None])[0], vae.encode((frames * binary)[None])[0]
    encoded = [vae.encode(image[None])[0] for image in references]
    with_zero_reactive = [torch.cat([z, torch.zeros_like(z)]) for z in encoded]  # references lead along time
    separate = torch.cat([*with_zero_reactive, torch.cat([inactive, reactive])], dim=1)
    assert batched.shape == separate.shape == (32, 2 + 3, 6, 8)
    assert (batched - separate).abs().max() <= 1e-5 * separate.abs().max()


def test_the_engine_compiles_on_cuda_by_default_and_not_on_the_cpu(tiny_models_dir: Path) -> None:
    assert Engine(tiny_models_dir, device="cpu").compile is False
    assert Engine(tiny_models_dir, device="cpu").vae_dtype == torch.float32


def test_the_engine_compiles_its_blocks_times_the_warm_up_and_keeps_a_cache_folder(
    tiny_models_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    request = GenerationRequest(model="tiny_vace", prompt="a kite", width=64, height=48, video_length=5, seed=1,
                                num_inference_steps=3)  # fmt: skip
    engine = Engine(tiny_models_dir, device="cpu", dtype=torch.float32, compile=True, compile_backend="aot_eager",
                    compile_cache_dir=tmp_path / "cache")  # fmt: skip
    assert Path(cache_dir()) == tmp_path / "cache"  # where Inductor (and Triton, under it) keeps its artifacts
    compiled = engine.generate(request)
    block = engine._loaded.networks.experts.networks["main"].blocks[0]
    assert hasattr(block.forward, "_torchdynamo_orig_callable")
    assert compiled.timings["compile"] > 0  # the first step at this size compiled
    again = engine.generate(request)
    assert "compile" not in again.timings  # same size: nothing compiled, nothing charged
    assert np.array_equal(again.frames, compiled.frames)
    default = Engine(tiny_models_dir, device="cpu", compile=True, compile_backend="aot_eager")
    assert default.compile and (tiny_models_dir / COMPILE_CACHE_FOLDER).is_dir()


def test_the_gpu_settings_reach_the_engine_from_flags_and_variables(tiny_models_dir: Path) -> None:
    parser = argparse.ArgumentParser()
    add_setting_arguments(parser, ALL_SETTINGS)
    flags = parser.parse_args(["--precision", "fp8", "--no-compile", "--models-dir", str(tiny_models_dir),
                               "--device", "cpu"])  # fmt: skip
    config = load_config(flags, {"WAN_WORKER_GPU_MEMORY_GB": "23.5"})
    assert (config.precision, config.no_compile, config.gpu_memory_gb) == ("fp8", True, 23.5)
    engine = WorkerResources.from_config(config).resident_engine()
    assert (engine.precision, engine.compile, engine.gpu_memory_bytes) == ("fp8", False, int(23.5 * 2**30))
    defaults = load_config(parser.parse_args([]), {})
    assert (defaults.precision, defaults.no_compile, defaults.gpu_memory_gb) == ("bf16", False, None)
    for variable, value in (("WAN_WORKER_PRECISION", "fp16"), ("WAN_WORKER_GPU_MEMORY_GB", "0")):
        with pytest.raises(ValueError, match=variable.removeprefix("WAN_WORKER_").lower()):
            load_config(parser.parse_args([]), {variable: value})


@pytest.mark.parametrize("precision", ["bf16", "fp8"])
def test_compiled_blocks_equal_eager_blocks_at_two_latent_sizes(precision: str) -> None:
    model = testing.tiny_dit()
    model.load_state_dict(testing.random_state(model, 9))
    model.eval().requires_grad_(False)
    if precision == "fp8":
        quantize_dit(model)
    compiled = copy.deepcopy(model).compile_blocks(backend="aot_eager")
    generator = torch.Generator().manual_seed(9)
    context = torch.randn(1, 10, 32, generator=generator)
    with torch.no_grad():
        for size in (16, 32):  # a second latent size recompiles; both equal eager
            x = torch.randn(1, 16, 3, size, size, generator=generator)
            expected = model(x, torch.tensor([400.0]), context)
            torch.testing.assert_close(compiled(x, torch.tensor([400.0]), context), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("model", ["tiny_vace_2_2", "tiny_i2v"])
def test_networks_installed_from_memory_generate_what_the_same_weights_loaded_from_files_do(tiny_models_dir: Path,
                                                                                             model: str) -> None:
    start = {"image_start": np.random.default_rng(2).integers(0, 256, (48, 64, 3), dtype=np.uint8)}
    request = GenerationRequest(model=model, prompt="a lighthouse", width=64, height=48, video_length=5, seed=5,
                                num_inference_steps=3, **(start if model == "tiny_i2v" else {}))  # fmt: skip
    from_files = Engine(tiny_models_dir, device="cpu", dtype=torch.float32)
    expected = from_files.generate(request).frames
    loaded = from_files._loaded.networks
    clip = loaded.image_encoder.encoder.module if loaded.image_encoder is not None else None
    engine = Engine(tiny_models_dir, device="cpu", dtype=torch.float32)
    if clip is not None:  # a model with a CLIP encoder cannot be installed without it
        with pytest.raises(ValueError, match="needs CLIP image encoder"):
            engine.install(model, dict(loaded.experts.networks), loaded.text_encoder.encoder.module,
                           loaded.text_encoder.tokenizer, loaded.vae)  # fmt: skip
    engine.install(model, dict(loaded.experts.networks), loaded.text_encoder.encoder.module,
                   loaded.text_encoder.tokenizer, loaded.vae, image_encoder=clip)  # fmt: skip
    assert engine.loaded_model == model and engine._loaded.files is None
    assert np.array_equal(engine.generate(request).frames, expected)


def test_a_task_asks_for_fp8_by_its_precision_field_and_a_bad_value_fails_it_naming_the_field(
    sqlite_store: TaskStore, resources: WorkerResources, tmp_path: Path
) -> None:
    params = {"model": "tiny_t2v", "prompt": "a red car", "seed": 5, "resolution": "32x32", "video_length": 5,
              "num_inference_steps": 2}  # fmt: skip
    fast = sqlite_store.enqueue("generate_video", {**params, "precision": "fp8"})
    bad = sqlite_store.enqueue("generate_video", {**params, "precision": "fp4"})
    run_until_idle(sqlite_store, resources, tmp_path / "outputs")
    result = sqlite_store.get(fast).result_data
    assert (result["parameters"]["precision"], result["parameter_sources"]["precision"]) == ("fp8", "request")
    failed = sqlite_store.get(bad)
    assert failed.status == TaskStatus.FAILED and "precision: must be one of bf16, fp8" in failed.error_message
