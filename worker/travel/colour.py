"""The colour adjustments a headless Wan2GP / Reigh travel job may ask for, with the headless worker's
meaning (banodoco/reigh-worker: travel/chaining.py for the generated segments, media/video/
travel_guide.py for the guide), so a job looks the same whichever worker renders it.

* On each generated segment after the first (or the first one continuing a video):
  `after_first_post_generation_saturation` s (1 leaves it; ffmpeg's eq=saturation, which scales the
  chroma: RGB -> Y + s * (RGB - Y) with Y the BT.601 luma), then `after_first_post_generation_brightness`
  b (0 leaves it: RGB * (1 + b)).
* On the frames a chained segment's guide takes from its predecessor (the overlap):
  `subsequent_starting_strength_adjustment` a (0 leaves them; a < 0 fades them towards mid grey to
  weight 1 + a), `desaturate_subsequent_starting_frames` d (0 leaves them; mixes in their grey by d)
  and `adjust_brightness_subsequent_starting_frames` b (0 leaves them: RGB * (1 + b)), in that order.

Frames are uint8 [..., H, W, 3] RGB.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from worker.params import ParamReader

# BT.601 luma weights of R, G, B: the matrix of ffmpeg's default RGB -> YUV and of OpenCV's grey.
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
MID_GREY = 128.0

# Row key -> (ColourAdjustments field, lowest, highest): factors keep pixels >= 0 (1 + brightness >= 0).
COLOUR_KEYS: dict[str, tuple[str, float, float | None]] = {
    "after_first_post_generation_saturation": ("saturation", 0.0, None),
    "after_first_post_generation_brightness": ("brightness", -1.0, None),
    "subsequent_starting_strength_adjustment": ("head_strength", -1.0, None),
    "desaturate_subsequent_starting_frames": ("head_desaturation", 0.0, 1.0),
    "adjust_brightness_subsequent_starting_frames": ("head_brightness", -1.0, None),
}


@dataclass(frozen=True)
class ColourAdjustments:
    """A travel job's colour adjustments; the defaults change nothing."""

    saturation: float = 1.0
    brightness: float = 0.0
    head_strength: float = 0.0
    head_desaturation: float = 0.0
    head_brightness: float = 0.0

    def to_params(self) -> dict[str, float]:
        return asdict(self)

    @classmethod
    def from_params(cls, params: dict[str, Any] | None) -> ColourAdjustments:
        return cls(**(params or {}))

    @property
    def changes_segments(self) -> bool:
        return self.saturation != 1.0 or self.brightness != 0.0

    @property
    def changes_guide_head(self) -> bool:
        return min(1.0, 1.0 + self.head_strength) != 1.0 or self.head_desaturation > 0 or self.head_brightness != 0.0

    def after_first(self, frames: np.ndarray) -> np.ndarray:
        """A generated segment after the first: saturation, then brightness."""
        if not self.changes_segments:
            return frames
        mixed = frames.astype(np.float32)
        if self.saturation != 1.0:
            luma = mixed @ LUMA
            mixed = luma[..., None] + self.saturation * (mixed - luma[..., None])
            mixed = np.clip(np.rint(mixed), 0, 255)
        return _brighten(mixed, self.brightness)

    def guide_head(self, frames: np.ndarray) -> np.ndarray:
        """The predecessor's frames opening a chained segment's guide: faded towards grey, desaturated,
        brightened (each only when asked)."""
        if not self.changes_guide_head:
            return frames
        mixed = frames.astype(np.float32)
        strength = float(np.clip(1.0 + self.head_strength, 0.0, 1.0))
        if strength != 1.0:
            mixed = np.floor(MID_GREY * (1.0 - strength) + mixed * strength)
        if self.head_desaturation > 0:
            grey = np.rint(mixed @ LUMA)[..., None]
            mixed = np.clip(np.rint(mixed * (1.0 - self.head_desaturation) + grey * self.head_desaturation), 0, 255)
        return _brighten(mixed, self.head_brightness)


def read_colour(reader: ParamReader, base: ColourAdjustments = ColourAdjustments()) -> ColourAdjustments:
    """`base` with the adjustments the row gives (checked against their bounds, named as written)."""
    given = {name: reader.number(key, minimum=low, maximum=high)
             for key, (name, low, high) in COLOUR_KEYS.items() if reader.has(key)}
    reader.used.update(COLOUR_KEYS)
    return replace(base, **given)


def _brighten(frames: np.ndarray, adjust: float) -> np.ndarray:
    """frames * (1 + adjust), clipped and truncated to uint8 as the headless worker does."""
    if adjust != 0.0:
        frames = np.clip(frames * (1.0 + adjust), 0, 255)
    return frames.astype(np.uint8)
