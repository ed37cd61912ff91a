"""Benchmark: our WanDiT against diffusers' Wan VACE transformer, same random weights, same device.

Prints one JSON object per line as each configuration finishes, then a summary object.

    python bench/dit.py --device cpu                       # tiny and moderate, fp32
    python bench/dit.py --device cuda [--compile]          # 1.3B and 14B VACE at 480p/720p, bf16, + loading
    python bench/dit.py --device cuda --configs 14b_vace_480p

Weights are drawn on the target device directly and shared between the two models (diffusers'
parameters are views of ours, cast only where its precision policy differs), so a 14B pair fits in
one GPU's memory. Loading configurations write a checkpoint in the official layout (base + VACE
module file), then load it in a fresh process and compare its peak host memory with the files' size.
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from wan_engine.nn.dit import (  # noqa: E402
    TINY_DIT,
    TINY_VACE_LAYERS,
    VACE_1_3B_LAYERS,
    VACE_14B_LAYERS,
    VACE_IN_DIM,
    WAN21_1_3B,
    WAN21_14B,
    WanDiT,
    diffusers_config,
    diffusers_to_official,
)
from wan_engine.weights import apply_dtype_policy, load_model, save_state_dict  # noqa: E402

MIB = 2**20


@dataclass(frozen=True)
class Network:
    config: dict
    vace_layers: list[int]

    def build(self) -> WanDiT:
        return WanDiT(**self.config, vace_layers=self.vace_layers, vace_in_dim=VACE_IN_DIM)


NETWORKS = {
    "tiny": Network(dict(TINY_DIT), TINY_VACE_LAYERS),
    "moderate": Network(
        dict(TINY_DIT, dim=512, ffn_dim=1536, num_heads=4, num_layers=8, freq_dim=256, text_len=512, text_dim=4096),
        [0, 4],
    ),
    "1.3b": Network(WAN21_1_3B, VACE_1_3B_LAYERS),
    "14b": Network(WAN21_14B, VACE_14B_LAYERS),
}
# latent grids [F, H, W]: 81 frames -> 21 latent frames; 832x480 -> 104x60; 1280x720 -> 160x90
LATENTS = {"tiny": (3, 16, 16), "moderate": (5, 30, 52), "480p": (21, 60, 104), "720p": (21, 90, 160)}
FORWARD_CONFIGS = {
    "tiny": ("tiny", "tiny"),
    "moderate": ("moderate", "moderate"),
    "1.3b_vace_480p": ("1.3b", "480p"),
    "1.3b_vace_720p": ("1.3b", "720p"),
    "14b_vace_480p": ("14b", "480p"),
    "14b_vace_720p": ("14b", "720p"),
}
LOAD_CONFIGS = {"load_moderate": "moderate", "load_1.3b_vace": "1.3b"}
DEFAULT_CONFIGS = {
    "cpu": ["tiny", "moderate", "load_moderate"],
    "cuda": ["14b_vace_480p", "1.3b_vace_480p", "1.3b_vace_720p", "14b_vace_720p", "load_1.3b_vace"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--configs", help="comma-separated, from: " + ", ".join([*FORWARD_CONFIGS, *LOAD_CONFIGS]))
    parser.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], help="default: bf16 on cuda, fp32 on cpu")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--compile", action="store_true", help="also time ours with torch.compile'd blocks")
    parser.add_argument("--max-seconds", type=float, default=220.0, help="skip configs that start after this")
    parser.add_argument("--load-probe", nargs=3, metavar=("NETWORK", "DTYPE", "FILES"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.load_probe:
        return load_probe(*args.load_probe, device=args.device)

    device = torch.device(args.device)
    dtype = _DTYPES[args.dtype or ("bf16" if device.type == "cuda" else "fp32")]
    names = args.configs.split(",") if args.configs else DEFAULT_CONFIGS[device.type]
    start, results = time.perf_counter(), []
    for name in names:
        if time.perf_counter() - start > args.max_seconds:
            result = {"config": name, "skipped": f"past --max-seconds {args.max_seconds}"}
        elif name in LOAD_CONFIGS:
            result = bench_load(name, LOAD_CONFIGS[name], dtype, device)
        else:
            network, latents = FORWARD_CONFIGS[name]
            result = bench_forward(name, NETWORKS[network], LATENTS[latents], dtype, device, args)
        results.append(result)
        print(json.dumps(result), flush=True)
    print(json.dumps({"machine": machine(device), "dtype": str(dtype), "results": results}), flush=True)


_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
_DTYPE_NAMES = {v: k for k, v in _DTYPES.items()}


# --- forward ----------------------------------------------------------------------------------


def bench_forward(name: str, network: Network, latents: tuple, dtype: torch.dtype, device: torch.device, args) -> dict:
    ours_model = build_ours(network, dtype, device)
    reference = diffusers_sharing_weights(ours_model, network, device)
    inputs = make_inputs(network, latents, dtype, device)
    prompt_tokens = inputs["context"].shape[1]
    padded_text = torch.nn.functional.pad(inputs["context"], (0, 0, 0, network.config["text_len"] - prompt_tokens))

    def run_ours():
        return ours_model(inputs["x"], inputs["t"], inputs["context"], inputs["control"], 1.0)

    def run_reference():
        return reference(
            inputs["x"], inputs["t"], padded_text, control_hidden_states=inputs["control"], return_dict=False
        )[0]

    with torch.inference_mode():
        timings, outputs = interleaved({"ours": run_ours, "diffusers": run_reference}, device, args)
        ours, ref = timings["ours"], timings["diffusers"]
        reference_std = outputs["diffusers"].float().std().item()
        diff = (outputs["ours"].float() - outputs["diffusers"].float()).abs().max().item() / reference_std
        del outputs
        result = {
            "config": name,
            "tokens": math.prod(n // p for n, p in zip(latents, network.config["patch_size"])),
            "dtype": _DTYPE_NAMES[dtype],
            "ours_s": ours.median,
            "diffusers_s": ref.median,
            "speedup": round(ref.median / ours.median, 3),
            "ours_s_min": ours.min,
            "diffusers_s_min": ref.min,
            "ours_peak_mib": ours.peak_mib,
            "diffusers_peak_mib": ref.peak_mib,
            "ours_activation_mib": ours.activation_mib,
            "diffusers_activation_mib": ref.activation_mib,
            "max_abs_diff_over_ref_std": float(f"{diff:.3g}"),
            "peak_kind": "cuda max_memory_allocated" if device.type == "cuda" else "sampled host RSS",
        }
        if args.compile:
            ours_model.compile_blocks()
            compiled = interleaved({"ours_compiled": run_ours}, device, args)[0]["ours_compiled"]
            result |= {
                "ours_compiled_s": compiled.median,
                "speedup_compiled": round(ref.median / compiled.median, 3),
                "ours_compiled_activation_mib": compiled.activation_mib,
            }
    del ours_model, reference, inputs
    release(device)
    return result


def build_ours(network: Network, dtype: torch.dtype, device: torch.device) -> WanDiT:
    """Our network with random weights drawn on `device`, at the dtypes load_model would give."""
    with torch.device("meta"):
        model = apply_dtype_policy(network.build(), dtype)
    model = model.to_empty(device=device).requires_grad_(False).eval()
    generator = torch.Generator(device).manual_seed(0)
    dim = network.config["dim"]
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "modulation" in name:
                param.normal_(0.0, dim**-0.5, generator=generator)
            elif ".norm" in name:
                param.normal_(1.0, 0.1, generator=generator)
            elif param.ndim > 1:
                param.normal_(0.0, math.prod(param.shape[1:]) ** -0.5, generator=generator)
            else:
                param.normal_(0.0, 0.02, generator=generator)
    return model


def diffusers_sharing_weights(ours: WanDiT, network: Network, device: torch.device) -> torch.nn.Module:
    """diffusers' WanVACETransformer3DModel (WanTransformer3DModel for a network without VACE layers,
    e.g. image-to-video) whose parameters are our tensors (cast where its own precision policy,
    _keep_in_fp32_modules, asks for fp32 and ours does not, or the reverse)."""
    from accelerate import init_empty_weights
    from diffusers import WanTransformer3DModel, WanVACETransformer3DModel

    cls = WanVACETransformer3DModel if network.vace_layers else WanTransformer3DModel
    vace = dict(vace_layers=network.vace_layers, vace_in_channels=VACE_IN_DIM) if network.vace_layers else {}
    with init_empty_weights():  # parameters on meta; the RoPE buffers are built for real
        reference = cls(**diffusers_config(network.config), **vace)
    keep_fp32 = set(cls._keep_in_fp32_modules)
    ours_state = ours.state_dict()
    compute_dtype = ours.patch_embedding.weight.dtype
    shared = {}
    for key in reference.state_dict():
        tensor = ours_state[diffusers_to_official(key)]
        want = torch.float32 if keep_fp32 & set(key.split(".")) else compute_dtype
        shared[key] = tensor if tensor.dtype == want else tensor.to(want)
    reference.load_state_dict(shared, strict=True, assign=True)
    return reference.to(device).requires_grad_(False).eval()


def make_inputs(network: Network, latents: tuple, dtype: torch.dtype, device: torch.device) -> dict:
    """Batch of one: noisy latents, a 20-token prompt, one control video, a mid-schedule timestep."""
    generator = torch.Generator(device).manual_seed(1)
    config = network.config

    def randn(*shape):
        return torch.randn(*shape, generator=generator, device=device, dtype=dtype)

    return {
        "x": randn(1, config["in_dim"], *latents),
        "t": torch.tensor([875.0], device=device),
        "context": randn(1, 20, config["text_dim"]),
        "control": randn(1, VACE_IN_DIM, *latents),
    }


@dataclass
class Timing:
    """Seconds of each timed call and the largest memory peak among them."""

    seconds: list[float] = field(default_factory=list)
    peak: int = 0
    activation: int = 0

    @property
    def median(self) -> float:
        return round(statistics.median(self.seconds), 4)

    @property
    def min(self) -> float:
        return round(min(self.seconds), 4)

    @property
    def peak_mib(self) -> float:
        return round(self.peak / MIB, 1)

    @property
    def activation_mib(self) -> float:
        return round(self.activation / MIB, 1)


def interleaved(runners: dict, device: torch.device, args) -> tuple[dict[str, Timing], dict[str, torch.Tensor]]:
    """Warm each runner up, then time them in turns (ours, theirs, ours, ...), so that load from
    elsewhere on the machine hits both alike. Returns the timings and each runner's last output."""
    outputs = {name: None for name in runners}
    for name, run in runners.items():
        for _ in range(args.warmup):
            outputs[name] = None
            outputs[name] = run()
    timings = {name: Timing() for name in runners}
    for _ in range(args.repeat):
        for name, run in runners.items():
            outputs[name] = None
            synchronize(device)
            with PeakMemory(device) as peak:
                begin = time.perf_counter()
                outputs[name] = run()
                synchronize(device)
                timings[name].seconds.append(time.perf_counter() - begin)
            timings[name].peak = max(timings[name].peak, peak.result["peak"])
            timings[name].activation = max(timings[name].activation, peak.result["activation"])
    return timings, outputs


class PeakMemory:
    """Peak memory while the block runs: the CUDA allocator's own count, or host RSS sampled each ms."""

    def __init__(self, device: torch.device):
        self.device = device
        self.result: dict[str, int] = {}

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
        else:
            self._process = psutil.Process()
            self._base = self._max = self._process.memory_info().rss
            self._stop = threading.Event()
            self._sampler = threading.Thread(target=self._sample, daemon=True)
            self._sampler.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.001):
            self._max = max(self._max, self._process.memory_info().rss)

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(self.device)
        else:
            self._stop.set()
            self._sampler.join()
            peak = self._max
        self.result = {"peak": peak, "activation": peak - self._base}


# --- loading ----------------------------------------------------------------------------------


def bench_load(name: str, network_name: str, dtype: torch.dtype, device: torch.device) -> dict:
    """Write the network's checkpoint (official layout, base + VACE module), load it in a fresh
    process on `device`, and report that process's peak host memory against the files' size."""
    network = NETWORKS[network_name]
    with tempfile.TemporaryDirectory() as folder:
        files = write_checkpoint(network, dtype, Path(folder))
        file_bytes = sum(f.stat().st_size for f in files)
        probe = subprocess.run(
            [sys.executable, __file__, "--device", str(device), "--load-probe", network_name,
             _DTYPE_NAMES[dtype], ",".join(map(str, files))],  # fmt: skip
            capture_output=True, text=True, check=True,
        )  # fmt: skip
    measured = json.loads(probe.stdout.strip().splitlines()[-1])
    return {
        "config": name,
        "device": str(device),
        "checkpoint_mib": round(file_bytes / MIB, 1),
        "load_s": measured["load_s"],
        "peak_host_mib_over_baseline": round(measured["peak_over_baseline"] / MIB, 1),
        "peak_host_over_checkpoint": round(measured["peak_over_baseline"] / file_bytes, 3),
    }


def write_checkpoint(network: Network, dtype: torch.dtype, folder: Path) -> list[Path]:
    """Random tensors in the official layout, split as users have them: base DiT + VACE module."""
    with torch.device("meta"):
        shapes = {k: (v.shape, v.dtype) for k, v in apply_dtype_policy(network.build(), dtype).state_dict().items()}
    generator = torch.Generator().manual_seed(0)
    paths = []
    for filename, is_vace in (("t2v.safetensors", False), ("vace_module.safetensors", True)):
        part = {
            k: torch.randn(shape, generator=generator, dtype=torch.float32).to(dt)
            for k, (shape, dt) in shapes.items()
            if k.startswith("vace_") == is_vace
        }
        paths.append(save_state_dict(part, folder / filename))
        del part
    return paths


def load_probe(network_name: str, dtype_name: str, files: str, device: str) -> None:
    """Runs in the fresh process: baseline RSS after imports (and CUDA start), then load."""
    if device.startswith("cuda"):
        torch.zeros(1, device=device)
    baseline = psutil.Process().memory_info().rss
    begin = time.perf_counter()
    model = load_model(NETWORKS[network_name].build, files.split(","), dtype=_DTYPES[dtype_name], device=device)
    synchronize(torch.device(device))
    seconds = time.perf_counter() - begin
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux
    del model
    print(json.dumps({"load_s": round(seconds, 3), "peak_over_baseline": peak - baseline}))


# --- helpers ----------------------------------------------------------------------------------


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU threads, torch {torch.__version__}"


if __name__ == "__main__":
    main()
