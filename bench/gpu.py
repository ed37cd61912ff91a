"""GPU suite: speed, memory and quality of the engine's modes on random weights at the real shapes.

    python bench/gpu.py                      # one H200: every section (what bench/gpu_suite.sh runs)
    python bench/gpu.py --tiny               # the same code paths at tiny sizes, on the CPU (smoke test)
    python bench/gpu.py --sections forward   # forward, segment, diffusers (comma-separated)

Prints one JSON object per line as each measurement finishes, then a summary line.

- forward: the 14B VACE DiT (one control stream) at 480p x 81 frames (32,760 tokens), in turn
  eager bf16 (the exact mode), compiled bf16, fp8 (compiled), fp8 + 8-bit attention (SageAttention,
  when installed); then 720p (75,600 tokens) compiled in bf16 and fp8. Each: median seconds, the
  first call's seconds (compilation included), peak allocated memory, and the relative L2 distance
  of the output from the exact one.
- segment: one Wan 2.2 14B VACE segment (both experts, 10 UniPC steps, guidance 1, 81 frames at
  480p, a control video whose first frames are kept) end to end through Engine.generate: bf16, fp8,
  fp8 under a 48 GiB and a 24 GiB device budget (the engine caps itself with
  torch.cuda.set_per_process_memory_fraction). Each: phase seconds (`compile` is the first step at
  a new size), peak allocated memory, blocks streamed per expert, and PSNR of the frames against the
  bf16 frames.
- diffusers: its WanVACETransformer3DModel forward on the same weights at 480p, where installed.

Weights are random (bench/dit.py's scales), drawn on the device: no checkpoint is read or written.
"""
from __future__ import annotations

import argparse
import copy
import gc
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.dit import Network, PeakMemory, build_ours, diffusers_sharing_weights, machine, make_inputs, synchronize  # noqa: E402
from bench.generate import random_on_device  # noqa: E402
from wan_engine.engine import Engine  # noqa: E402
from wan_engine.fp8 import quantize_dit  # noqa: E402
from wan_engine.memory import tensor_bytes  # noqa: E402
from wan_engine.nn.attention import backend_for  # noqa: E402
from wan_engine.nn.dit import TINY_DIT, TINY_VACE_LAYERS, VACE_14B_LAYERS, WAN21_14B  # noqa: E402
from wan_engine.nn.t5 import TINY_UMT5, UMT5_XXL, UMT5Encoder  # noqa: E402
from wan_engine.nn.vae import TINY_VAE, WAN21_VAE, WanVAE  # noqa: E402
from wan_engine.quality import psnr_db, relative_l2  # noqa: E402
from wan_engine.request import GenerationRequest  # noqa: E402
from wan_engine.swap import WORKING_MEMORY_BYTES, execution_order  # noqa: E402
from wan_engine.tokenizer import T5Tokenizer, write_tiny_tokenizer  # noqa: E402

GIB = 2**30
SECTIONS = ("segment", "forward", "diffusers")


class Scale:
    """The sizes of one suite run: the real ones, or tiny ones that exercise the same code on a CPU."""

    def __init__(self, tiny: bool):
        self.tiny = tiny
        self.network = Network(dict(TINY_DIT), TINY_VACE_LAYERS) if tiny else Network(WAN21_14B, VACE_14B_LAYERS)
        # latent grids [F, H, W]: 81 frames -> 21 latents; 832x480 -> 104x60; 1280x720 -> 160x90
        self.latents = {"480p": (3, 6, 8), "720p": (3, 8, 12)} if tiny else {"480p": (21, 60, 104), "720p": (21, 90, 160)}
        self.model = "tiny_vace_2_2" if tiny else "vace_14B_cocktail_2_2"
        self.text_encoder, self.vae = (TINY_UMT5, TINY_VAE) if tiny else (UMT5_XXL, WAN21_VAE)
        self.width, self.height, self.frames = (64, 48, 9) if tiny else (832, 480, 81)
        self.steps = 3 if tiny else 10
        self.compile_backend = "aot_eager" if tiny else "inductor"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny networks on the CPU: the suite's smoke test")
    parser.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated, from: " + ", ".join(SECTIONS))
    parser.add_argument("--repeat", type=int, default=2, help="timed forwards per mode (after one warm-up)")
    parser.add_argument("--max-seconds", type=float, default=450.0, help="skip what starts after this")
    args = parser.parse_args()
    device = torch.device("cpu" if args.tiny else "cuda")
    scale = Scale(args.tiny)
    suite = Suite(device, scale, args.repeat, args.max_seconds)
    sections = args.sections.split(",")
    for name in sections:
        if name not in SECTIONS:
            parser.error(f"unknown section {name!r}")
    # the segment first: its numbers are the headline bars, and its first step pays the cold compile
    if "segment" in sections:
        suite.segment()
    with torch.inference_mode():
        if "forward" in sections:
            suite.forward()
        if "diffusers" in sections:
            suite.diffusers()
    suite.emit({"summary": True, "machine": machine(device), "torch": torch.__version__, "tiny": args.tiny,
                "seconds": round(time.perf_counter() - suite.started, 1), "results": len(suite.results)})  # fmt: skip


class Suite:
    def __init__(self, device: torch.device, scale: Scale, repeat: int, max_seconds: float):
        self.device, self.scale, self.repeat, self.max_seconds = device, scale, repeat, max_seconds
        self.started = time.perf_counter()
        self.results: list[dict[str, Any]] = []

    def emit(self, result: dict[str, Any]) -> None:
        self.results.append(result)
        print(json.dumps(result), flush=True)

    def out_of_time(self, what: str) -> bool:
        if time.perf_counter() - self.started <= self.max_seconds:
            return False
        self.emit({"config": what, "skipped": f"started after --max-seconds {self.max_seconds}"})
        return True

    # ---- DiT forward -----------------------------------------------------------------------------

    def forward(self) -> None:
        network, device = self.scale.network, self.device
        exact_model = build_ours(network, torch.bfloat16, device)
        fast_model = quantize_dit(copy.deepcopy(exact_model), device)
        inputs = {name: make_inputs(network, latents, torch.bfloat16, device) for name, latents in self.scale.latents.items()}
        exact = {}

        def run(model: torch.nn.Module, resolution: str) -> torch.Tensor:
            i = inputs[resolution]
            return model(i["x"], i["t"], i["context"], i["control"], 1.0)

        exact["480p"] = self.time_forward("forward_480p", "bf16_eager", lambda: run(exact_model, "480p"), None)
        exact_model.compile_blocks(backend=self.scale.compile_backend)
        self.time_forward("forward_480p", "bf16_compiled", lambda: run(exact_model, "480p"), exact["480p"])
        fast_model.compile_blocks(backend=self.scale.compile_backend)
        self.time_forward("forward_480p", "fp8_compiled", lambda: run(fast_model, "480p"), exact["480p"])
        attention = backend_for("fp8", device)
        if attention == "sdpa":
            self.emit({"config": "forward_480p", "mode": "fp8_compiled_attention8",
                       "skipped": "no 8-bit attention backend here (sageattention not importable, or not CUDA)"})  # fmt: skip
        else:
            fast_model.set_attention_backend(attention)
            self.time_forward("forward_480p", f"fp8_compiled_{attention}_attention", lambda: run(fast_model, "480p"), exact["480p"])
            fast_model.set_attention_backend("sdpa")
        # 720p: compiled modes only (one warm-up that recompiles for the size, one timed call)
        exact["720p"] = self.time_forward("forward_720p", "bf16_compiled", lambda: run(exact_model, "720p"), None, repeat=1)
        self.time_forward("forward_720p", "fp8_compiled", lambda: run(fast_model, "720p"), exact["720p"], repeat=1)
        del exact_model, fast_model, inputs, exact
        release(device)

    def time_forward(self, config: str, mode: str, run, exact: torch.Tensor | None, repeat: int | None = None):
        """Time `run` (first call apart), report it with its distance from `exact`; returns its output."""
        if self.out_of_time(f"{config}/{mode}"):
            return None
        try:
            return self._time_forward(config, mode, run, exact, repeat)
        except Exception as error:  # one failing mode (a kernel missing on this machine) must not end the suite
            self.emit({"config": config, "mode": mode, "error": f"{type(error).__name__}: {error}"[:500]})
            release(self.device)
            return None

    def _time_forward(self, config: str, mode: str, run, exact: torch.Tensor | None, repeat: int | None):
        synchronize(self.device)
        begin = time.perf_counter()
        output = run()
        synchronize(self.device)
        first = time.perf_counter() - begin
        seconds, peak = [], 0
        for _ in range(repeat or self.repeat):
            output = None
            with PeakMemory(self.device) as memory:
                begin = time.perf_counter()
                output = run()
                synchronize(self.device)
                seconds.append(time.perf_counter() - begin)
            peak = max(peak, memory.result["peak"])
        result = {
            "config": config, "mode": mode, "tokens": tokens(self.scale, config), "seconds": round(statistics.median(seconds), 4),
            "first_call_seconds": round(first, 3), "peak_gib": round(peak / GIB, 2) if self.device.type == "cuda" else None,
        }  # fmt: skip
        if exact is not None and output is not None:
            result["rel_l2_vs_bf16_eager"] = round(relative_l2(output.float(), exact.float()), 5)
        self.emit(result)
        return output.float()

    def diffusers(self) -> None:
        try:
            import diffusers  # noqa: F401
        except ImportError:
            self.emit({"config": "diffusers_forward_480p", "skipped": "diffusers is not installed on this machine"})
            return
        if self.out_of_time("diffusers_forward_480p"):
            return
        network = self.scale.network
        ours = build_ours(network, torch.bfloat16, self.device)
        reference = diffusers_sharing_weights(ours, network, self.device)
        i = make_inputs(network, self.scale.latents["480p"], torch.bfloat16, self.device)
        text = torch.nn.functional.pad(i["context"], (0, 0, 0, network.config["text_len"] - i["context"].shape[1]))
        exact = ours(i["x"], i["t"], i["context"], i["control"], 1.0).float()
        del ours
        release(self.device)
        self.time_forward(
            "forward_480p", "diffusers_bf16_eager",
            lambda: reference(i["x"], i["t"], text, control_hidden_states=i["control"], return_dict=False)[0], exact,
        )  # fmt: skip
        del reference
        release(self.device)

    # ---- whole segment through the engine -------------------------------------------------------

    def segment(self) -> None:
        scale, device = self.scale, self.device
        with tempfile.TemporaryDirectory() as folder, torch.inference_mode():
            tokenizer_file = write_tiny_tokenizer(Path(folder) / "tokenizer")  # any umT5-style vocabulary
            with torch.device("meta"):
                text_encoder = UMT5Encoder(**scale.text_encoder).to(torch.bfloat16)
                vae = WanVAE(**scale.vae)
            text_encoder = random_on_device(text_encoder, device, seed=1).to("cpu")
            vae = random_on_device(vae, device, seed=2)
            experts = {"high": build_ours(scale.network, torch.bfloat16, device),
                       "low": build_ours(scale.network, torch.bfloat16, device)}  # fmt: skip
            request = segment_request(scale)
            runs = [("bf16", None), ("fp8", None), ("fp8", 48.0), ("fp8", 24.0)]
            exact_frames = None
            for precision, budget in runs:
                name = f"segment_{precision}" + (f"_budget_{budget:g}gib" if budget else "")
                if self.out_of_time(name):
                    continue
                if precision == "fp8":  # quantised before any budget caps the device (in place: once)
                    for network in experts.values():
                        quantize_dit(network, device)
                if budget is not None:
                    for network in experts.values():
                        network.to("cpu")
                release(device)
                if budget is not None and scale.tiny:
                    budget = tiny_budget_gib(scale, vae)  # what makes half the tiny blocks stream
                engine = Engine(Path(folder), device=device, dtype=torch.bfloat16, precision=precision, compile=True,
                                gpu_memory_gb=budget, compile_backend=scale.compile_backend,
                                compile_cache_dir=Path(folder) / "compile")  # fmt: skip
                try:
                    engine.install(scale.model, experts, text_encoder, T5Tokenizer(tokenizer_file, scale.network.config["text_len"]), vae)
                    result = self.time_segment(name, engine, request)
                except Exception as error:  # e.g. out of memory under a budget: reported, the suite goes on
                    result = {"config": name, "error": f"{type(error).__name__}: {error}"[:500]}
                frames = result.pop("frames", None)
                if frames is not None and exact_frames is None:
                    exact_frames = frames
                elif frames is not None:
                    result["psnr_db_vs_bf16"] = round(psnr_db(frames, exact_frames), 2)
                self.emit(result)
                del engine
                release(device)
                if device.type == "cuda":
                    torch.cuda.set_per_process_memory_fraction(1.0, device)

    def time_segment(self, name: str, engine: Engine, request: GenerationRequest) -> dict[str, Any]:
        with PeakMemory(self.device) as memory:
            begin = time.perf_counter()
            generated = engine.generate(request)
            seconds = time.perf_counter() - begin
        experts = engine._loaded.networks.experts
        streamed = {name: getattr(p, "streamed_blocks", 0) for name, p in experts._residents.items()}
        timings = {k: round(v, 3) for k, v in generated.timings.items()}
        return {
            "config": name, "precision": engine.precision, "compiled": engine.compile,
            "budget_gib": None if engine.gpu_memory_bytes is None else round(engine.gpu_memory_bytes / GIB, 3),
            "seconds": round(seconds, 3), "seconds_warm_estimate": round(warm_estimate(generated.timings, request), 3),
            "phase_seconds": timings, "experts_take_turns": experts.taking_turns, "streamed_blocks": streamed,
            "peak_gib": round(memory.result["peak"] / GIB, 2) if self.device.type == "cuda" else None,
            "steps": request.num_inference_steps, "frames": generated.frames,
        }  # fmt: skip


def warm_estimate(timings: dict[str, float], request: GenerationRequest) -> float:
    """The segment's seconds once compiled: the `compile` phase (the first step at a new size,
    compilation and that step's forward) replaced by the mean of the other steps."""
    if "compile" not in timings:
        return timings["total"]
    steps = request.num_inference_steps or 1
    denoise = sum(v for k, v in timings.items() if k.startswith("denoise_"))
    per_step = denoise / max(steps - 1, 1)
    return timings["total"] - timings["compile"] + per_step


def segment_request(scale: Scale) -> GenerationRequest:
    """The fleet's workload: a control video whose first 5 frames are kept and the rest generated."""
    rng = np.random.default_rng(0)
    video = rng.integers(0, 256, (scale.frames, scale.height, scale.width, 3), dtype=np.uint8)
    mask = np.full((scale.frames, scale.height, scale.width), 255, dtype=np.uint8)
    mask[:5] = 0
    return GenerationRequest(
        model=scale.model, prompt="a red car drives through a city at night", width=scale.width, height=scale.height,
        video_length=scale.frames, seed=7, num_inference_steps=scale.steps, guidance_scale=1.0, guidance2_scale=1.0,
        video_guide=video, video_mask=mask, lora_names=[],
    )  # fmt: skip


def tiny_budget_gib(scale: Scale, vae: torch.nn.Module) -> float:
    """A budget (GiB) under which the tiny fp8 DiT streams half of its blocks (beside `vae`)."""
    from wan_engine.fp8 import meta_fp8_dit
    from wan_engine.nn.dit import WanDiT

    network = meta_fp8_dit(lambda: WanDiT(**scale.network.config, vace_layers=scale.network.vace_layers, vace_in_dim=96))
    sizes = [tensor_bytes([b]) for b in execution_order(network)]
    fixed = tensor_bytes([network]) - sum(sizes) + tensor_bytes([vae])
    return (fixed + WORKING_MEMORY_BYTES + 2 * max(sizes) + sum(sizes[: len(sizes) // 2])) / GIB


def tokens(scale: Scale, config: str) -> int:
    f, h, w = scale.latents[config.rsplit("_", 1)[-1]]
    pt, ph, pw = scale.network.config["patch_size"]
    return (f // pt) * (h // ph) * (w // pw)


def release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
