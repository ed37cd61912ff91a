"""Benchmark: a whole VACE or image-to-video generation, our pipeline vs diffusers' WanVACEPipeline /
WanImageToVideoPipeline, same weights, same device.

    python bench/generate.py                               # tiny models on the CPU, fp32
    python bench/generate.py --device cuda                 # 14B VACE 2.2, I2V A14B, 14B and 1.3B VACE at 480p, bf16
    python bench/generate.py --device cuda --configs 14B_i2v_2_2   # I2V A14B, first + last frame, 480p 81 frames
    python bench/generate.py --device cuda --configs 14B_i2v      # Wan 2.1 I2V 14B with CLIP, first frame, 480p
    python bench/generate.py --device cuda --configs 1.3B_vace --frames 33

Prints one JSON object per configuration as it finishes, then a summary object. Per pipeline:
seconds per phase (text_encode, vace_encode, denoise, decode, total), DiT forwards per expert and
per step, and on a GPU the peak allocated memory.

Random weights are drawn on the device once and shared: diffusers' transformer, VAE and umT5 are
views of our tensors (cast only where the two precision policies differ), so a 14B pair fits one
GPU and no checkpoint is written. The workload is the fleet's: a control video whose first frames
are kept (mask 0) and the rest generated, a fresh prompt per run (our prompt cache never hits), the
same initial latents, UniPC, the VAE in float32 on both sides (image-to-video: a first and a last
frame instead of the control video, CFG 3.5 and the I2V boundary 0.900, no CLIP image encoder; Wan 2.1
I2V: the first frame through both CLIP encoders, ours and transformers' CLIPVisionModel sharing its
tensors, CFG 5, and a text of 512 tokens, which diffusers needs to tell the image tokens apart).
Our text encoder lives in host
memory between prompts (the engine's policy), so our text_encode includes its trip to the device;
diffusers keeps its text encoder on the device. Both pipelines are warmed up first (one denoising
step at the full size, one small decode); then they take turns.

Measured (one run each, 832x480, 81 frames, 4 UniPC steps, bf16, fp32 VAE; seconds):

    NVIDIA H200      ours: text  vace  denoise decode total | diffusers: text vace denoise decode total | speed-up
    14B VACE 2.2 g=1       0.23  3.28  14.85   2.56   20.94 |            0.03 4.21 16.52   3.11   23.89 | 1.14
    14B VACE g=5           0.23  3.28  29.50   2.58   35.61 |            0.06 4.29 32.99   3.14   40.51 | 1.14
    1.3B VACE g=5          0.23  3.28   6.91   2.60   13.03 |            0.06 4.17  7.78   3.14   15.16 | 1.16

Forwards per step: 1.0 for Wan 2.2 at guidance 1 (1 high + 3 low over 4 steps), 2.0 with CFG, on
both sides. Our text_encode is umT5-XXL's 11 GB trip from pinned host memory to the device and back.
Peak allocated memory (both pipelines' weights included): 90.1 vs 88.4 GB (14B 2.2), 56.3 vs 54.6
GB (14B), 26.6 vs 25.0 GB (1.3B). On the 2-core CPU (tiny models, noisy: other jobs ran) ours was
1.2x to 3.5x faster end to end.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL.Image
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.dit import Network, build_ours, diffusers_sharing_weights, release, synchronize  # noqa: E402
from wan_engine import pipeline, testing  # noqa: E402
from wan_engine.memory import Experts, HostResident  # noqa: E402
from wan_engine.nn.clip import CLIP_MEAN, CLIP_STD, TINY_CLIP, VIT_H_14, ClipVisionEncoder  # noqa: E402
from wan_engine.nn.dit import (  # noqa: E402
    TINY_DIT,
    TINY_I2V_CLIP_DIT,
    TINY_I2V_DIT,
    TINY_VACE_LAYERS,
    VACE_1_3B_LAYERS,
    VACE_14B_LAYERS,
    WAN21_1_3B,
    WAN21_14B,
    WAN21_14B_I2V,
    WAN22_A14B_EXPERT,
    WAN22_A14B_I2V_EXPERT,
)
from wan_engine.nn.t5 import RELATIVE_MAX_DISTANCE, TINY_UMT5, UMT5_XXL, UMT5Encoder, transformers_to_official  # noqa: E402
from wan_engine.nn.vae import TINY_VAE, WAN21_VAE, WanVAE, diffusers_key_map  # noqa: E402
from wan_engine.phases import PhaseSettings, plan_steps  # noqa: E402
from wan_engine.sampling import make_sampler  # noqa: E402
from wan_engine.tokenizer import TOKENIZER_FILE, write_tiny_tokenizer  # noqa: E402

MIB = 2**20
BOUNDARY = 875  # Wan 2.2's switch_threshold: the high-noise expert runs while t >= 875
I2V_BOUNDARY = 900  # the official Wan 2.2 I2V A14B boundary (0.900)


@dataclass(frozen=True)
class Setup:
    network: Network
    experts: int  # 1 (Wan 2.1) or 2 (Wan 2.2 high/low)
    vae: dict
    text_encoder: dict
    width: int
    height: int
    frames: int
    guidance: float  # the same in every phase; 1.0 skips the unconditional pass
    shift: float
    image_to_video: bool = False  # first + last frame conditioning instead of a VACE control video
    boundary: int = BOUNDARY
    clip: dict | None = None  # Wan 2.1 I2V: the CLIP encoder's config (the first frame only is given)


CONFIGS = {
    "tiny_vace": Setup(Network(TINY_DIT, TINY_VACE_LAYERS), 1, TINY_VAE, TINY_UMT5, 64, 48, 9, 5.0, 3.0),
    "tiny_vace_2_2": Setup(Network(TINY_DIT, TINY_VACE_LAYERS), 2, TINY_VAE, TINY_UMT5, 64, 48, 9, 1.0, 2.0),
    "1.3B_vace": Setup(Network(WAN21_1_3B, VACE_1_3B_LAYERS), 1, WAN21_VAE, UMT5_XXL, 832, 480, 81, 5.0, 3.0),
    "14B_vace": Setup(Network(WAN21_14B, VACE_14B_LAYERS), 1, WAN21_VAE, UMT5_XXL, 832, 480, 81, 5.0, 3.0),
    "14B_vace_2_2": Setup(Network(WAN22_A14B_EXPERT, VACE_14B_LAYERS), 2, WAN21_VAE, UMT5_XXL, 832, 480, 81, 1.0, 2.0),
    "tiny_i2v_2_2": Setup(Network(TINY_I2V_DIT, []), 2, TINY_VAE, TINY_UMT5, 64, 48, 9, 3.5, 5.0, True, I2V_BOUNDARY),
    "14B_i2v_2_2": Setup(
        Network(WAN22_A14B_I2V_EXPERT, []), 2, WAN21_VAE, UMT5_XXL, 832, 480, 81, 3.5, 5.0, True, I2V_BOUNDARY
    ),
    "tiny_i2v": Setup(Network(dict(TINY_I2V_CLIP_DIT, text_len=512), []), 1, TINY_VAE, TINY_UMT5, 64, 48, 9, 5.0, 3.0,
                      True, clip=TINY_CLIP),
    "14B_i2v": Setup(Network(WAN21_14B_I2V, []), 1, WAN21_VAE, UMT5_XXL, 832, 480, 81, 5.0, 3.0, True, clip=VIT_H_14),
}
DEFAULT_CONFIGS = {
    "cpu": ["tiny_vace", "tiny_vace_2_2", "tiny_i2v_2_2", "tiny_i2v"],
    "cuda": ["14B_vace_2_2", "14B_i2v_2_2", "14B_vace", "1.3B_vace", "14B_i2v"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--configs", help="comma-separated, from: " + ", ".join(CONFIGS))
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--frames", type=int, help="video length (4n+1); default: the config's (81 at 480p)")
    parser.add_argument("--repeat", type=int, help="timed runs per pipeline (default 3 on cpu, 1 on cuda)")
    parser.add_argument("--max-seconds", type=float, default=400.0, help="skip configs that start after this")
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/wan_bench_generate"))
    args = parser.parse_args()

    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    repeat = args.repeat or (1 if device.type == "cuda" else 3)
    tokenizer_file = write_tiny_tokenizer(args.work_dir / "tokenizer")  # any umT5-style tokenizer will do
    names = args.configs.split(",") if args.configs else DEFAULT_CONFIGS[device.type]
    started, results = time.perf_counter(), []
    for name in names:
        if time.perf_counter() - started > args.max_seconds:
            result = {"config": name, "skipped": f"started after --max-seconds {args.max_seconds}"}
        else:
            setup = CONFIGS[name]
            frames = args.frames or setup.frames
            result = bench_config(name, setup, frames, args.steps, dtype, device, tokenizer_file, repeat)
        results.append(result)
        print(json.dumps(result), flush=True)
        release(device)
    print(json.dumps({"machine": machine(device), "dtype": str(dtype), "results": results}), flush=True)


def bench_config(
    name: str, setup: Setup, frames: int, steps: int, dtype: torch.dtype, device: torch.device,
    tokenizer_file: Path, repeat: int,
) -> dict:  # fmt: skip
    text_len = setup.network.config["text_len"]
    ours_t5, reference_t5 = umt5_pair(setup.text_encoder, dtype, device)
    ours_vae, reference_vae = vae_pair(setup.vae, device)
    experts = {
        expert: build_ours(setup.network, dtype, device)
        for expert in (["high", "low"] if setup.experts == 2 else ["main"])
    }
    references = {name: diffusers_sharing_weights(net, setup.network, device) for name, net in experts.items()}
    ours_clip, reference_clip = clip_pair(setup.clip, dtype, device) if setup.clip else (None, None)
    networks = pipeline.Networks(
        text_encoder=pipeline.TextEncoder(_our_tokenizer(tokenizer_file, text_len), HostResident(ours_t5, device)),
        vae=ours_vae,
        experts=Experts(experts, device, take_turns=False),
        vace=not setup.image_to_video,
        image_to_video=setup.image_to_video,
        image_encoder=pipeline.ImageEncoder(HostResident(ours_clip, device)) if ours_clip is not None else None,
    )
    reference = reference_pipeline(setup, references, reference_vae, reference_t5, tokenizer_file, reference_clip)
    inputs = Inputs(setup, frames, device)
    forwards = ForwardCounter({**{f"ours_{k}": v for k, v in experts.items()}, **references})

    runs = {
        "ours": lambda prompt, denoise_steps: run_ours(networks, setup, inputs, prompt, denoise_steps),
        "diffusers": lambda prompt, denoise_steps: run_diffusers(reference, setup, inputs, prompt, denoise_steps, text_len),
    }
    with torch.inference_mode():
        for run in runs.values():
            run("warm up", 1)
        timings: dict[str, list[dict]] = defaultdict(list)
        peaks: dict[str, int] = {}
        counts: dict[str, dict[str, int]] = {}
        for index in range(repeat):
            for which, run in runs.items():
                forwards.reset()
                reset_peak(device)
                timings[which].append(run(f"a red car drives through a city at night, take {index} {which}", steps))
                peaks[which] = max(peaks.get(which, 0), peak(device))
                counts[which] = forwards.counts(prefix="ours_" if which == "ours" else None)

    result = {
        "config": name, "device": str(device), "dtype": str(dtype).removeprefix("torch."),
        "width": setup.width, "height": setup.height, "frames": frames, "steps": steps,
        "guidance": setup.guidance, "experts": setup.experts, "repeat": repeat,
    }  # fmt: skip
    for which in runs:
        phases = {k: round(statistics.median(t[k] for t in timings[which]), 4) for k in timings[which][0]}
        calls = counts[which]
        result[which] = {
            **phases,
            "forwards": calls,
            "forwards_per_step": sum(calls.values()) / steps,
            **({"peak_mib": round(peaks[which] / MIB)} if device.type == "cuda" else {}),
        }
    result["conditioning"] = ("first frame + CLIP" if setup.clip else "first + last frame") if setup.image_to_video \
        else "VACE control video"
    result["speedup_total"] = round(result["diffusers"]["total"] / result["ours"]["total"], 3)
    result["speedup_denoise"] = round(result["diffusers"]["denoise"] / result["ours"]["denoise"], 3)
    return result


# ---- the two pipelines -------------------------------------------------------------------------------


class Inputs:
    """The request both pipelines get: a control video whose first 5 frames are kept and the rest
    generated (image-to-video: its first and last frames), in each pipeline's own input format, and
    the initial latents."""

    def __init__(self, setup: Setup, frames: int, device: torch.device):
        rng = np.random.default_rng(0)
        self.video = rng.integers(0, 256, (frames, setup.height, setup.width, 3), dtype=np.uint8)
        self.first, self.last = self.video[0], self.video[-1]
        self.mask = np.full((frames, setup.height, setup.width), 255, dtype=np.uint8)
        self.mask[:5] = 0
        self.video_images = [PIL.Image.fromarray(f) for f in self.video]
        self.mask_images = [PIL.Image.fromarray(np.repeat(m[..., None], 3, axis=-1)) for m in self.mask]
        self.frames = frames
        self.device = device

    def noise(self, setup: Setup) -> torch.Tensor:
        shape = (1, 16, 1 + (self.frames - 1) // 4, setup.height // 8, setup.width // 8)
        return pipeline.initial_noise(0, shape, self.device)


def run_ours(networks: pipeline.Networks, setup: Setup, inputs: Inputs, prompt: str, steps: int) -> dict[str, float]:
    sampler = make_sampler("unipc", steps, setup.shift)
    dual = setup.experts == 2
    settings = PhaseSettings(
        guidance_phases=2 if dual else 1, guidance_scale=setup.guidance, guidance2_scale=setup.guidance,
        switch_threshold=setup.boundary,
    )  # fmt: skip
    if setup.image_to_video:
        conditioning = dict(image_start=inputs.first, image_end=None if setup.clip else inputs.last)
    else:
        conditioning = dict(controls=[pipeline.ControlStream(inputs.video, inputs.mask, 1.0)])
    job = pipeline.Job(
        prompt=prompt, negative_prompt="blurry, static", width=setup.width, height=setup.height,
        num_frames=inputs.frames, seed=0, sampler=sampler, plan=plan_steps(sampler.timesteps, settings, dual),
        **conditioning,
    )  # fmt: skip
    timer = pipeline.PhaseTimer(inputs.device)
    synchronize(inputs.device)
    begin = time.perf_counter()
    pipeline.generate(
        networks, job, inputs.device, on_step=lambda step: None, should_cancel=lambda: False, timer=timer
    )
    synchronize(inputs.device)
    seconds = dict(timer.seconds)
    denoise = sum(v for k, v in seconds.items() if k.startswith("denoise_"))
    return {**seconds, "denoise": denoise, "total": time.perf_counter() - begin}


def reference_pipeline(setup: Setup, transformers: dict, vae, text_encoder, tokenizer_file: Path, image_encoder=None):
    from diffusers import UniPCMultistepScheduler, WanImageToVideoPipeline, WanVACEPipeline
    from transformers import CLIPImageProcessor, PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_file=str(tokenizer_file), pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=setup.shift)
    if setup.experts == 2:
        models = dict(transformer=transformers["high"], transformer_2=transformers["low"], boundary_ratio=setup.boundary / 1000)
    else:
        models = dict(transformer=transformers["main"])
    if image_encoder is not None:  # Wan 2.1 I2V: transformers' CLIP and its usual processor at the encoder's size
        size = setup.clip["image_size"]
        models.update(image_encoder=image_encoder, image_processor=CLIPImageProcessor(
            size={"shortest_edge": size}, crop_size={"height": size, "width": size}, image_mean=list(CLIP_MEAN),
            image_std=list(CLIP_STD)))
    cls = WanImageToVideoPipeline if setup.image_to_video else WanVACEPipeline
    return cls(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, scheduler=scheduler, **models)


def run_diffusers(reference, setup: Setup, inputs: Inputs, prompt: str, steps: int, text_len: int) -> dict[str, float]:
    """The pipeline's phases, told apart by hooks that wait for the device: the text encoder's
    calls, the first transformer call, and the first decoder-side VAE call."""
    clock = PhaseClock(inputs.device)
    hooks = [
        reference.text_encoder.register_forward_pre_hook(lambda *_: clock.begin("text_encode")),
        reference.text_encoder.register_forward_hook(lambda *_: clock.end("text_encode")),
        reference.vae.post_quant_conv.register_forward_pre_hook(lambda *_: clock.first("decode_start")),
    ]
    for transformer in (reference.transformer, reference.transformer_2):
        if transformer is not None:
            hooks.append(transformer.register_forward_pre_hook(lambda *_: clock.first("denoise_start")))
    if setup.image_to_video:  # Wan 2.1 I2V: the first frame only (diffusers would encode a last one too)
        last = {} if setup.clip else {"last_image": PIL.Image.fromarray(inputs.last)}
        conditioning = dict(image=PIL.Image.fromarray(inputs.first), **last)
    else:
        conditioning = dict(video=inputs.video_images, mask=inputs.mask_images)
    try:
        clock.first("start")
        reference(
            **conditioning, prompt=prompt, negative_prompt="blurry, static",
            height=setup.height, width=setup.width, num_frames=inputs.frames, num_inference_steps=steps,
            guidance_scale=setup.guidance, latents=inputs.noise(setup), output_type="np", max_sequence_length=text_len,
            **({"guidance_scale_2": setup.guidance} if setup.experts == 2 else {}),
        )  # fmt: skip
        clock.first("end")
    finally:
        for hook in hooks:
            hook.remove()
    t = clock.times
    return {
        "text_encode": clock.spans["text_encode"],
        "image_encode" if setup.image_to_video else "vace_encode": t["denoise_start"] - clock.last_end["text_encode"],
        "denoise": t["decode_start"] - t["denoise_start"],
        "decode": t["end"] - t["decode_start"],
        "total": t["end"] - t["start"],
    }


class PhaseClock:
    """Event times and summed spans of a pipeline run, each read after waiting for the device."""

    def __init__(self, device: torch.device):
        self.device = device
        self.times: dict[str, float] = {}
        self.spans: dict[str, float] = defaultdict(float)
        self.last_end: dict[str, float] = {}
        self._open: dict[str, float] = {}

    def _now(self) -> float:
        synchronize(self.device)
        return time.perf_counter()

    def first(self, event: str) -> None:
        """Record when `event` first happens."""
        if event not in self.times:
            self.times[event] = self._now()

    def begin(self, span: str) -> None:
        self._open[span] = self._now()

    def end(self, span: str) -> None:
        now = self._now()
        self.spans[span] += now - self._open.pop(span)
        self.last_end[span] = now


class ForwardCounter:
    """Counts forward calls of named modules."""

    def __init__(self, modules: dict[str, torch.nn.Module]):
        self._counts = dict.fromkeys(modules, 0)
        for name, module in modules.items():
            module.register_forward_pre_hook(lambda *_, name=name: self._counts.__setitem__(name, self._counts[name] + 1))

    def reset(self) -> None:
        self._counts = dict.fromkeys(self._counts, 0)

    def counts(self, prefix: str | None) -> dict[str, int]:
        if prefix:
            return {k.removeprefix(prefix): v for k, v in self._counts.items() if k.startswith(prefix)}
        return {k: v for k, v in self._counts.items() if not k.startswith("ours_")}


# ---- shared random weights ---------------------------------------------------------------------------


def random_on_device(module: torch.nn.Module, device: torch.device, seed: int) -> torch.nn.Module:
    """Materialise a meta-built module on `device` with wan_engine.testing's weight scales."""
    module = module.to_empty(device=device).requires_grad_(False).eval()
    generator = torch.Generator(device).manual_seed(seed)
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            if tensor.is_floating_point():
                noise = torch.randn(tensor.shape, generator=generator, device=device)
                tensor.copy_(testing.scaled_noise(name, noise))
    return module


def umt5_pair(config: dict, dtype: torch.dtype, device: torch.device):
    """Our umT5 encoder and transformers' UMT5EncoderModel over the same device tensors."""
    from accelerate import init_empty_weights
    from transformers import UMT5Config, UMT5EncoderModel

    with torch.device("meta"):
        ours = UMT5Encoder(**config).to(dtype)
    ours = random_on_device(ours, device, seed=1)
    reference_config = UMT5Config(
        vocab_size=config["vocab"], d_model=config["dim"], d_kv=config["dim_attn"] // config["num_heads"],
        d_ff=config["dim_ffn"], num_heads=config["num_heads"], num_layers=config["num_layers"],
        relative_attention_num_buckets=config["num_buckets"], relative_attention_max_distance=RELATIVE_MAX_DISTANCE,
        feed_forward_proj="gated-gelu", dropout_rate=0.0,
    )  # fmt: skip
    with init_empty_weights():
        reference = UMT5EncoderModel(reference_config)
    state = ours.state_dict()
    # encoder.embed_tokens is transformers' tied alias of `shared` (the map drops it): same tensor
    shared = {k: state[transformers_to_official(k) or "token_embedding.weight"] for k in reference.state_dict()}
    reference.load_state_dict(shared, strict=True, assign=True)
    return ours, reference.to(device).eval()


def clip_pair(config: dict, dtype: torch.dtype, device: torch.device):
    """Our CLIP image encoder and transformers' CLIPVisionModel over the same device tensors (its q, k
    and v projections are views into our fused one; it also has the last block and final norm, which
    neither pipeline reads, drawn apart)."""
    from accelerate import init_empty_weights
    from transformers import CLIPVisionConfig, CLIPVisionModel

    with torch.device("meta"):
        ours = ClipVisionEncoder(**config).to(dtype)
    ours = random_on_device(ours, device, seed=3)
    dim, layers = config["dim"], config["num_layers"]
    with init_empty_weights():
        reference = CLIPVisionModel(CLIPVisionConfig(
            hidden_size=dim, intermediate_size=dim * config["mlp_ratio"], num_hidden_layers=layers,
            num_attention_heads=config["num_heads"], image_size=config["image_size"], patch_size=config["patch_size"],
            hidden_act="gelu", layer_norm_eps=config["eps"]))
    state = ours.state_dict()
    fixed = {
        "embeddings.patch_embedding.weight": state["patch_embedding.weight"],
        "embeddings.class_embedding": state["cls_embedding"].view(-1),
        "embeddings.position_embedding.weight": state["pos_embedding"][0],
        "pre_layrnorm.weight": state["pre_norm.weight"], "pre_layrnorm.bias": state["pre_norm.bias"],
        "post_layernorm.weight": torch.ones(dim, dtype=dtype, device=device),  # never read by either side
        "post_layernorm.bias": torch.zeros(dim, dtype=dtype, device=device),
    }
    ours_names = {"layer_norm1": "norm1", "layer_norm2": "norm2", "self_attn.out_proj": "attn.proj", "mlp.fc1": "mlp.0",
                  "mlp.fc2": "mlp.2"}
    shared = {}
    for key, like in reference.state_dict().items():
        name = key.removeprefix("vision_model.")  # transformers releases differ on the prefix
        if name in fixed:
            shared[key] = fixed[name]
            continue
        parts = name.split(".")  # encoder.layers.<i>.<module...>.<weight|bias>
        index, module, kind = int(parts[2]), ".".join(parts[3:-1]), parts[-1]
        if index == layers - 1:  # the last block: never read by either side
            shared[key] = torch.zeros(like.shape, dtype=dtype, device=device)
        elif module in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
            which = "qkv".index(module[len("self_attn.")])
            shared[key] = state[f"transformer.{index}.attn.to_qkv.{kind}"][which * dim:(which + 1) * dim]
        else:
            shared[key] = state[f"transformer.{index}.{ours_names[module]}.{kind}"]
    reference.load_state_dict(shared, strict=True, assign=True)
    return ours, reference.to(device).eval()


def vae_pair(config: dict, device: torch.device):
    """Our VAE and diffusers' AutoencoderKLWan over the same float32 device tensors."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKLWan

    with torch.device("meta"):
        ours = WanVAE(**config)
    ours = random_on_device(ours, device, seed=2)
    with init_empty_weights():
        reference = AutoencoderKLWan(
            **{**config, "dim_mult": list(config["dim_mult"]), "temperal_downsample": list(config["temperal_downsample"])}
        )
    to_official = diffusers_key_map(config["num_res_blocks"])
    state = ours.state_dict()
    reference.load_state_dict({k: state[to_official(k)] for k in reference.state_dict()}, strict=True, assign=True)
    return ours, reference.to(device).eval()


def _our_tokenizer(tokenizer_file: Path, text_len: int):
    from wan_engine.tokenizer import T5Tokenizer

    assert tokenizer_file.name == TOKENIZER_FILE
    return T5Tokenizer(tokenizer_file, text_len)


# ---- device helpers ------------------------------------------------------------------------------------


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak(device: torch.device) -> int:
    return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


if __name__ == "__main__":
    main()
