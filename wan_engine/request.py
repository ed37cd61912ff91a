"""What a caller asks the engine for, and what it gets back."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

PRECISIONS = ("bf16", "fp8")  # the engine's precision modes (wan_engine.fp8); bf16 is exact


@dataclass
class GenerationRequest:
    """One generation. Sampling fields left as None come from the preset, the model definition, then
    the family defaults (see wan_engine.schema, which lists every field with its bounds).

    Video inputs are arrays already read from disk:
    video_guide uint8 [F,H,W,3]; video_mask uint8 [F,H,W] with 255 = generate, 0 = keep;
    image_refs: list of uint8 [H,W,3].
    image_start / image_end: uint8 [height, width, 3], the first / last frame of an image-to-video
    model's video (at least one of them for such a model; no other model takes them).
    """

    model: str
    prompt: str
    width: int
    height: int
    video_length: int
    seed: int = 0
    negative_prompt: str = ""
    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    guidance2_scale: float | None = None
    guidance3_scale: float | None = None
    guidance_phases: int | None = None
    switch_threshold: float | None = None
    switch_threshold2: float | None = None
    model_switch_phase: int | None = None
    flow_shift: float | None = None
    sample_solver: str | None = None
    video_guide: np.ndarray | None = None
    video_mask: np.ndarray | None = None
    video_guide2: np.ndarray | None = None
    video_mask2: np.ndarray | None = None
    control_net_weight: float = 1.0
    control_net_weight2: float = 1.0
    image_refs: list[np.ndarray] = field(default_factory=list)
    image_start: np.ndarray | None = None
    image_end: np.ndarray | None = None
    lora_names: list[str] | None = None
    lora_multipliers: list[str] | None = None
    precision: str | None = None  # one of PRECISIONS; None: the engine's setting


@dataclass
class GenerationResult:
    """frames: uint8 [F,H,W,3]. timings: seconds per phase (load, text_encode, denoise_<expert>,
    decode). resolved: every sampling parameter used, with `sources` saying where each came from."""

    frames: np.ndarray
    timings: dict[str, float]
    resolved: dict[str, Any]
    model: str
