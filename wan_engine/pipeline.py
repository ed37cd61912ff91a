"""The generation pipeline: one request, from prompt to uint8 frames.

    prompt -> umT5 context (the negative one only when some phase uses CFG)
           -> seeded initial noise
           -> VACE conditioning (control videos, masks, reference images), or
              image-to-video conditioning (first / last frame: mask + latents, wan_engine.i2v)
           -> denoising over the phase plan (expert, guidance and LoRA multipliers per step)
           -> VAE decode (reference frames trimmed) -> frames [F, H, W, 3] uint8

`generate` reads in that order. The stages are separate functions so that tests can enter at any
of them (e.g. feed diffusers' prompt embeddings and initial latents straight into `denoise`).
Where the networks sit (device or host memory) is wan_engine.memory's business; this module only
asks for a network when it needs it.
"""
from __future__ import annotations

import itertools
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from wan_engine import i2v, vace
from wan_engine.errors import GenerationCancelled
from wan_engine.lora import LoraWeights, applied_loras
from wan_engine.memory import Experts, HostResident
from wan_engine.phases import StepPlan
from wan_engine.sampling import FlowSampler, classifier_free_guidance
from wan_engine.tokenizer import T5Tokenizer

LATENT_CHANNELS = 16
PROMPT_CACHE_SIZE = 16  # prompts whose embeddings are kept; travel segments reuse theirs


@dataclass
class ControlStream:
    """One VACE control: video uint8 [F,H,W,3] (None: nothing to follow), mask uint8 [F,H,W]
    (255 = generate; None: generate everything), and the strength of its hints."""

    video: np.ndarray | None
    mask: np.ndarray | None
    scale: float


@dataclass
class Job:
    """One generation with every parameter resolved and validated (see Engine.generate)."""

    prompt: str
    negative_prompt: str
    width: int
    height: int
    num_frames: int  # 4n + 1
    seed: int
    sampler: FlowSampler
    plan: list[StepPlan]
    controls: list[ControlStream] = field(default_factory=list)  # empty for text-to-video
    references: list[np.ndarray] = field(default_factory=list)  # uint8 [h,w,3] each, VACE only
    image_start: np.ndarray | None = None  # uint8 [H,W,3], image-to-video only
    image_end: np.ndarray | None = None  # uint8 [H,W,3], image-to-video only
    loras: list[LoraWeights] = field(default_factory=list)
    lora_schedule: list[list[float]] = field(default_factory=list)  # [lora][step] multipliers


class TextEncoder:
    """umT5 with its tokenizer. The encoder lives in host memory and visits the device only to
    encode prompts it has not seen recently; embeddings are cached on the host."""

    def __init__(self, tokenizer: T5Tokenizer, encoder: HostResident):
        self.tokenizer = tokenizer
        self.encoder = encoder
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()

    @torch.no_grad()
    def __call__(self, texts: Sequence[str], device: torch.device) -> torch.Tensor:
        """texts -> [B, text_len, dim] on `device`, zero after each prompt's last token."""
        missing = [t for t in dict.fromkeys(texts) if t not in self._cache]
        if missing:
            network = self.encoder.to_device()
            try:
                ids, mask = self.tokenizer(missing)
                dev = self.encoder.device
                encoded = network(ids.to(dev), mask.to(dev)).to("cpu")
            finally:
                self.encoder.to_host()
            for text, embedding in zip(missing, encoded):
                self._cache[text] = embedding
        for text in texts:
            self._cache.move_to_end(text)
        while len(self._cache) > PROMPT_CACHE_SIZE:
            self._cache.popitem(last=False)
        return torch.stack([self._cache[t] for t in texts]).to(device)


class ImageEncoder:
    """Wan 2.1 I2V's CLIP image encoder (wan_engine.nn.clip), living in host memory like the text
    encoder and visiting the device to encode a generation's frames: the first (the last when only it
    is given), or with `frames` 2 (FLF2V) the first and the last, each standing in for the other when
    alone (as Wan2GP does), their tokens one after the other."""

    def __init__(self, encoder: HostResident, frames: int = 1):
        self.encoder = encoder
        self.frames = frames

    @torch.no_grad()
    def __call__(self, first: np.ndarray | None, last: np.ndarray | None, device: torch.device) -> torch.Tensor:
        """uint8 [H, W, 3] frames (at least one) -> [1, frames x N, clip_dim] image tokens on `device`."""
        images = [first if first is not None else last, last if last is not None else first][: self.frames]
        network = self.encoder.to_device()
        try:
            return torch.cat([network.encode(image) for image in images], dim=1).to(device)
        finally:
            self.encoder.to_host()


@dataclass
class Networks:
    """The networks of one loaded model, placed by wan_engine.memory."""

    text_encoder: TextEncoder
    vae: nn.Module  # on the device
    experts: Experts  # "main", or "high" and "low"
    vace: bool  # the DiT carries VACE blocks
    image_to_video: bool = False  # the DiT reads the I2V conditioning channels
    image_encoder: ImageEncoder | None = None  # Wan 2.1 I2V: the DiT also reads CLIP image tokens


class PhaseTimer:
    """Wall-clock seconds per named phase, summed over repeated entries. Waits for the device at
    the end of each phase, so asynchronous GPU work is charged to the phase that queued it."""

    def __init__(self, device: torch.device, on_start: Callable[[str], None] | None = None):
        self.device = device
        self.seconds: dict[str, float] = {}
        self.on_start = on_start  # told each phase's name as it begins (progress for every phase)

    @contextmanager
    def measure(self, name: str) -> Iterator[None]:
        if self.on_start is not None:
            self.on_start(name)
        start = time.perf_counter()
        try:
            yield
        finally:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


StepCallback = Callable[[StepPlan], None]


def generate(
    networks: Networks,
    job: Job,
    device: torch.device,
    *,
    on_step: StepCallback,
    should_cancel: Callable[[], bool],
    timer: PhaseTimer,
) -> np.ndarray:
    """Run one generation; returns frames uint8 [num_frames, height, width, 3]."""
    with timer.measure("text_encode"):
        needs_negative = any(step.needs_unconditional for step in job.plan)
        texts = [job.prompt, job.negative_prompt] if needs_negative else [job.prompt]
        embeddings = networks.text_encoder(texts, device)
        context = embeddings[:1]
        negative = embeddings[1:] if needs_negative else None

    with timer.measure("vace_encode"):
        controls = control_contexts(networks.vae, job) if networks.vace else []
    num_references = len(job.references) if networks.vace else 0
    condition = image_tokens = None
    if networks.image_to_video:
        with timer.measure("image_encode"):
            condition = i2v.image_condition(networks.vae, job.image_start, job.image_end, job.num_frames)
            if networks.image_encoder is not None:
                image_tokens = networks.image_encoder(job.image_start, job.image_end, device)

    noise = initial_noise(job.seed, latent_shape(job, num_references), device)
    latents = denoise(
        networks.experts,
        noise,
        job,
        context,
        negative,
        controls,
        condition=condition,
        image_tokens=image_tokens,
        on_step=on_step,
        should_cancel=should_cancel,
        timer=timer,
    )

    with timer.measure("decode"):
        return decode_frames(networks.vae, latents[:, :, num_references:])


def latent_shape(job: Job, num_references: int) -> tuple[int, ...]:
    """[1, 16, R + 1 + (F - 1) / 4, H / 8, W / 8]: the reference frames lead the video frames."""
    latent_frames = 1 + (job.num_frames - 1) // vace.TEMPORAL_STRIDE
    s = vace.SPATIAL_STRIDE
    return (1, LATENT_CHANNELS, num_references + latent_frames, job.height // s, job.width // s)


def initial_noise(seed: int, shape: Sequence[int], device: torch.device) -> torch.Tensor:
    """Standard normal float32 noise drawn on the CPU, so a seed gives the same video on any device."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    return torch.randn(tuple(shape), generator=generator, dtype=torch.float32).to(device)


def control_contexts(vae: nn.Module, job: Job) -> list[tuple[torch.Tensor, float]]:
    """(VACE context [1, 96, R + T, H/8, W/8], strength) per control stream; references lead each.

    A VACE model with no control stream still gets one: an empty guide (gray, all to generate), as
    the official pipeline does, so reference images alone also work."""
    streams = job.controls or [ControlStream(video=None, mask=None, scale=1.0)]
    references = [vace.reference_to_tensor(image, job.height, job.width) for image in job.references]
    contexts = []
    for stream in streams:
        frames = None if stream.video is None else vace.video_to_tensor(stream.video[: job.num_frames])
        mask = None if stream.mask is None else vace.mask_to_tensor(stream.mask[: job.num_frames])
        context = vace.vace_context(
            vae, frames, mask, references, num_frames=job.num_frames, height=job.height, width=job.width
        )
        contexts.append((context[None], stream.scale))
    return contexts


@torch.no_grad()
def denoise(
    experts: Experts,
    noise: torch.Tensor,
    job: Job,
    context: torch.Tensor,
    negative: torch.Tensor | None,
    controls: Sequence[tuple[torch.Tensor, float]],
    *,
    condition: torch.Tensor | None = None,
    image_tokens: torch.Tensor | None = None,
    on_step: StepCallback,
    should_cancel: Callable[[], bool],
    timer: PhaseTimer,
) -> torch.Tensor:
    """Integrate the flow from `noise` [1,16,T,h,w] over `job.plan` with `job.sampler`.

    Steps run in runs of one expert (high-noise first): each run activates its network and
    installs the LoRAs on it for the run's duration. Every step first checks `should_cancel`
    (raising GenerationCancelled), then predicts the flow, with a second, unconditional pass only
    when the step's guidance differs from 1, and reports itself through `on_step`.

    condition: the image-to-video channels [1, 20, T, h, w] (wan_engine.i2v), concatenated after
    the latents at every call, or None; image_tokens: Wan 2.1 I2V's CLIP tokens [1, N, clip_dim],
    given to both the conditional and the unconditional pass (as the reference does), or None.
    """
    image = {} if image_tokens is None else {"image_context": image_tokens}
    vace_context = [c for c, _ in controls] or None
    vace_scale = [s for _, s in controls] or 1.0
    latents = noise
    for expert, steps in itertools.groupby(job.plan, key=lambda step: step.expert):
        with timer.measure(f"denoise_{expert}"):
            network = experts.activate(expert)
        with applied_loras(network, job.loras, job.lora_schedule) as loras:
            for step in steps:
                if should_cancel():
                    raise GenerationCancelled(f"cancelled before denoising step {step.step + 1}")
                # the first step at a new latent size compiles the blocks (torch.compile): timed apart
                phase = "compile" if experts.first_compiled_run(latents.shape) else f"denoise_{expert}"
                with timer.measure(phase):
                    if job.loras:
                        loras.set_step(step.step)
                    t = torch.full((1,), step.timestep, device=latents.device)
                    inputs = latents if condition is None else torch.cat([latents, condition], dim=1)
                    flow = network(inputs, t, context, vace_context, vace_scale, **image)
                    if step.needs_unconditional:
                        unconditional = network(inputs, t, negative, vace_context, vace_scale, **image)
                        flow = classifier_free_guidance(flow, unconditional, step.guidance)
                    latents = job.sampler.step(flow, latents)
                on_step(step)
    return latents


@torch.no_grad()
def decode_frames(vae: nn.Module, latents: torch.Tensor) -> np.ndarray:
    """Latents [1,16,T,h,w] -> uint8 [1 + 4(T-1), 8h, 8w, 3], decoded one latent frame at a time
    so that only the output grows with the video length."""
    chunks = []
    for chunk in vae.iter_decode(latents):  # [1, 3, 1 or 4, H, W] in [-1, 1]
        pixels = ((chunk[0].float() + 1.0) * 127.5).round_().clamp_(0, 255).to(torch.uint8)
        chunks.append(pixels.permute(1, 2, 3, 0).cpu())
    return torch.cat(chunks).numpy()
