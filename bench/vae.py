"""Wan 2.1 VAE: encode/decode time and peak memory, ours vs diffusers' AutoencoderKLWan, same random weights.

    python bench/vae.py                                  # tiny VAE on the CPU
    python bench/vae.py --config wan21 --device cuda --dtype bfloat16 --frames 81 --height 480 --width 832

Prints one JSON object: median times, the speed-up over diffusers, and on a GPU the peak memory each
call allocates beyond the weights and its input (torch.cuda.max_memory_allocated). On the CPU,
tests/test_vae.py checks decode memory against the allocator's own records instead.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch
from diffusers import AutoencoderKLWan

from wan_engine.nn.vae import (
    LATENTS_MEAN,
    LATENTS_STD,
    TINY_VAE,
    WAN21_VAE,
    WanVAE,
    diffusers_config,
    diffusers_key_map,
)

CONFIGS = {"tiny": TINY_VAE, "wan21": WAN21_VAE}


def build_pair(config: dict, device: str, dtype: torch.dtype) -> tuple[WanVAE, AutoencoderKLWan]:
    """Our VAE with seeded random weights and diffusers' with the same weights."""
    torch.manual_seed(0)
    ours = WanVAE(**config).eval()
    reference = AutoencoderKLWan(**diffusers_config(config)).eval()
    to_official = diffusers_key_map(config["num_res_blocks"])
    state = ours.state_dict()
    reference.load_state_dict({key: state[to_official(key)] for key in reference.state_dict()})
    return ours.to(device, dtype), reference.to(device, dtype)


def seconds(fns: dict[str, Callable[[], object]], device: str, repeats: int) -> dict[str, float]:
    """Median wall time of each fn after one warm-up call; the fns take turns, so drift in the
    machine's load affects them alike."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():
        fn()
    for _ in range(repeats):
        for name, fn in fns.items():
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            fn()
            if device == "cuda":
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def cuda_peak_bytes(fn: Callable[[], object]) -> int:
    """Bytes allocated at the peak of fn() above what was allocated before it."""
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=CONFIGS, default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--frames", type=int, default=17, help="video frames, 4n+1")
    parser.add_argument("--height", type=int, default=64)
    parser.add_argument("--width", type=int, default=96)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    dtype = getattr(torch, args.dtype)
    ours, reference = build_pair(CONFIGS[args.config], args.device, dtype)
    video = torch.rand(1, 3, args.frames, args.height, args.width, device=args.device, dtype=dtype) * 2 - 1
    latents = torch.randn(1, 16, 1 + (args.frames - 1) // 4, args.height // 8, args.width // 8, device=args.device)
    shape = (1, 16, 1, 1, 1)
    mean = torch.tensor(LATENTS_MEAN, device=args.device).view(shape)
    std = torch.tensor(LATENTS_STD, device=args.device).view(shape)
    raw_latents = (latents * std + mean).to(dtype)

    calls = {
        "encode": {"ours": lambda: ours.encode(video), "diffusers": lambda: reference.encode(video).latent_dist.mode()},
        "decode": {"ours": lambda: ours.decode(latents), "diffusers": lambda: reference.decode(raw_latents).sample},
    }
    result: dict = {
        "device": torch.cuda.get_device_name() if args.device == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
        "config": args.config,
        "dtype": args.dtype,
        "video": [1, 3, args.frames, args.height, args.width],
        "ours": {},
        "diffusers": {},
    }
    with torch.inference_mode():
        for op, fns in calls.items():
            for name, wall in seconds(fns, args.device, args.repeats).items():
                result[name][f"{op}_s"] = round(wall, 4)
            result[f"{op}_speedup"] = round(result["diffusers"][f"{op}_s"] / result["ours"][f"{op}_s"], 3)
            if args.device == "cuda":
                for name, fn in fns.items():
                    result[name][f"{op}_peak_mib"] = round(cuda_peak_bytes(fn) / 2**20, 1)
                result[f"{op}_peak_ratio"] = round(
                    result["ours"][f"{op}_peak_mib"] / result["diffusers"][f"{op}_peak_mib"], 3
                )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
