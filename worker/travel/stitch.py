"""Stitch travel segments into one video, cross-fading the frames consecutive segments share.

Segment i+1 was generated with its first `overlap[i]` frames guided by the last `overlap[i]` frames
of segment i, so both segments hold their own version of those moments. They are blended, not
concatenated: frame k of the overlap is `(1 - w[k]) * tail_i[k] + w[k] * head_{i+1}[k]` with smoothstep
weights rising from near 0 to near 1, so neither segment's version appears twice and the hand-over
has no visible cut. The result has sum(frames) - sum(overlaps) frames.

A travel job in the headless Wan2GP / Reigh form is stitched as the headless stitch does it instead
(Crossfade with `sharpen`: a cosine fade, then an unsharp mask).

Segments that share their joining frame exactly (image-to-video segments both conditioned on the
same frame) are concatenated instead, that frame kept once (the outgoing one): the incoming segment
is a `Source` that skips its first frame. A Source may also drop its last frames, be resampled to
the stitch's rate and be center-cropped to an aspect ratio: how a join (worker/join.py) trims the
clips around the transitions it generated and fits clips of another rate or shape.

Streaming: each segment is decoded frame by frame and written straight to the encoder, holding back
only the frames that the next segment will blend with (at most `overlap` frames), so memory does not
grow with the number of segments.
"""
from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from worker.video import VideoWriter, cropped_size, frame_size, iter_frames, probe, resampled_rate, save_png, thumbnail_path


@dataclass(frozen=True)
class Source:
    """One video to stitch and which of its frames: the first `skip` and the last `drop` are left out
    (after fitting); `resample` reads it at the stitch's rate when its own differs (video.FPS_TOLERANCE);
    `aspect` (width / height) center-crops it to that shape first (video.cropped_size)."""

    path: Path
    skip: int = 0
    drop: int = 0
    resample: bool = False
    aspect: float | None = None

    def size(self) -> tuple[int, int]:
        """(width, height) of its frames once cropped."""
        return cropped_size(*frame_size(self.path), self.aspect)

    def frames(self, size: tuple[int, int], fps: float) -> Iterator[np.ndarray]:
        """Its frames fitted to `size` at the stitch's rate, before skipping and dropping."""
        rate = resampled_rate(probe(self.path).fps, fps) if self.resample else None
        return iter_frames(self.path, size, fps=rate, aspect=self.aspect)


@dataclass(frozen=True)
class StitchResult:
    """The stitched mp4, its first-frame PNG thumbnail, and what was written."""

    path: Path
    thumbnail: Path
    frames: int
    width: int
    height: int
    fps: float
    scaled: tuple[int, ...]  # the videos (by position) whose frames were scaled to the first one's size


def crossfade_weights(overlap: int) -> np.ndarray:
    """Weight of the incoming segment on each overlap frame: float64 [overlap], strictly in (0, 1).

    smoothstep(t) = 3t^2 - 2t^3 at t = (k + 1) / (overlap + 1): slow at both ends of the fade (no
    sudden start or stop of the change), symmetric, increasing. The end points 0 and 1 are left out
    because a weight of 0 or 1 would show one segment's frame unblended, i.e. a cut.
    """
    t = np.arange(1, overlap + 1, dtype=np.float64) / (overlap + 1)
    return t * t * (3.0 - 2.0 * t)


def blend(outgoing: np.ndarray, incoming: np.ndarray, weight: float) -> np.ndarray:
    """(1 - weight) * outgoing + weight * incoming, rounded to uint8 [H, W, 3]."""
    mixed = outgoing.astype(np.float32) + (incoming.astype(np.float32) - outgoing) * np.float32(weight)
    return np.rint(mixed).astype(np.uint8)


HEADLESS_SHARPEN = 0.3  # the headless stitch's crossfade_sharp_amt when a row gives none
_SHARPEN_SIGMA = 3.0  # the headless stitch blurs with a Gaussian of this sigma before unsharp-masking


@dataclass(frozen=True)
class Crossfade:
    """How the frames two segments share are blended.

    `sharpen` None is ours: smoothstep weights strictly inside (0, 1), a plain mix. A number is the
    headless Wan2GP / Reigh stitch's "linear_sharp" fade (banodoco/reigh-worker media/video/
    crossfade.py), so a headless job stitched here has the same seams: weight w_k = (1 - cos(pi t)) / 2
    at t = (k + 1) / overlap (its last overlap frame is the incoming one), the mix m, then an unsharp
    mask m (1 + a w) - blur(m) a w with a = `sharpen` and blur a Gaussian of sigma 3 (OpenCV's 25 taps,
    mirrored edges), truncated to uint8."""

    sharpen: float | None = None

    def weights(self, overlap: int) -> np.ndarray:
        if self.sharpen is None:
            return crossfade_weights(overlap)
        return (1.0 - np.cos(np.pi * np.arange(1, overlap + 1, dtype=np.float64) / overlap)) / 2.0

    def blend(self, outgoing: np.ndarray, incoming: np.ndarray, weight: float) -> np.ndarray:
        if self.sharpen is None:
            return blend(outgoing, incoming, weight)
        mixed = outgoing.astype(np.float32) * np.float32(1.0 - weight) + incoming.astype(np.float32) * np.float32(weight)
        amount = np.float32(self.sharpen * weight)
        if self.sharpen > 0:
            mixed = mixed * (1 + amount) - gaussian_blur(mixed, _SHARPEN_SIGMA) * amount
        return np.clip(mixed, 0, 255).astype(np.uint8)

    def describe(self) -> dict[str, Any]:
        """What result_data says of it."""
        if self.sharpen is None:
            return {"curve": "smoothstep"}
        return {"curve": "cosine", "sharpen": self.sharpen}


def gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """float32 [H, W, C] blurred by a Gaussian of `sigma`: OpenCV's kernel for float images (2 round(4
    sigma) + 1 taps) applied along both axes, edges mirrored without repeating the edge pixel. torch is
    imported here, not with the module: the orchestrator plans (and imports this) without torch."""
    import torch
    import torch.nn.functional as F

    radius = int(round(4 * sigma))
    taps = np.exp(-((np.arange(-radius, radius + 1, dtype=np.float64)) ** 2) / (2 * sigma * sigma))
    kernel = torch.from_numpy((taps / taps.sum()).astype(np.float32))
    channels = image.shape[2]
    planes = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))[None]
    planes = F.pad(planes, (radius, radius, radius, radius), mode="reflect")
    planes = F.conv2d(planes, kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
    planes = F.conv2d(planes, kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)
    return planes[0].numpy().transpose(1, 2, 0)


def stitch(
    videos: Sequence[str | os.PathLike[str] | Source],
    overlaps: Sequence[int],
    output_path: str | os.PathLike[str],
    fps: float,
    crossfade: Crossfade = Crossfade(),
) -> StitchResult:
    """Stitch K videos (paths, or Sources naming which of their frames); overlaps[i] frames are shared
    by videos i and i+1 (K-1 entries) and cross-faded.

    The result has the first video's frame size; a video of another size is scaled to it (stretched
    by area averaging, as the headless stitch does: a video a journey continues may differ from the
    generated segments, and so may the clips of a join).

    Writes output_path (H.264 mp4, see video.VideoWriter) and its thumbnail. Raises ValueError when a
    video is too short for the overlaps at its two ends; the output path is then left untouched.
    """
    sources = [video if isinstance(video, Source) else Source(Path(video)) for video in videos]
    if not sources:
        raise ValueError("nothing to stitch: no segments")
    if len(overlaps) != len(sources) - 1:
        raise ValueError(f"{len(sources)} segments need {len(sources) - 1} overlaps, got {len(overlaps)}")
    if any(overlap < 0 for overlap in overlaps):
        raise ValueError(f"overlaps must be >= 0, got {list(overlaps)}")
    if any(source.skip < 0 or source.drop < 0 for source in sources):
        raise ValueError("frames to skip or drop must be >= 0")

    output_path = Path(output_path)
    sizes = [source.size() for source in sources]
    frames = stitched_frames(sources, overlaps, crossfade, sizes[0], fps)
    first_frame = next(frames, None)
    if first_frame is None:
        raise ValueError(f"{sources[0].path}: no frames")
    width, height = sizes[0]
    with VideoWriter(output_path, fps, width, height) as writer:
        writer.write(first_frame)
        for frame in frames:
            writer.write(frame)
    thumbnail = save_png(first_frame, thumbnail_path(output_path))
    return StitchResult(
        path=output_path, thumbnail=thumbnail, frames=writer.frames_written, width=width, height=height, fps=fps,
        scaled=tuple(index for index, size in enumerate(sizes) if size != sizes[0]),
    )


def stitched_frames(
    sources: Sequence[Source], overlaps: Sequence[int], crossfade: Crossfade, size: tuple[int, int], fps: float,
) -> Iterator[np.ndarray]:
    """The stitched video frame by frame, uint8 [H, W, 3], every frame at `size` (width, height);
    holds at most one overlap (and the frames a source drops) of frames.

    Each video's frames are yielded as they are decoded, except its last `overlaps[i]`, which wait
    to be blended with the head of the next video.
    """
    held: list[np.ndarray] = []  # the previous video's last frames, waiting to be blended
    for index, source in enumerate(sources):
        head = overlaps[index - 1] if index > 0 else 0
        tail = overlaps[index] if index < len(overlaps) else 0
        weights = crossfade.weights(head)
        pending: deque[np.ndarray] = deque()
        count = 0
        for position, frame in enumerate(source.frames(size, fps)):
            if position < source.skip:
                continue
            if count < head:
                frame = crossfade.blend(held[count], frame, weights[count])
            pending.append(frame)
            if len(pending) > tail + source.drop:
                yield pending.popleft()
            count += 1
        if count - source.drop < head + tail:
            kept = max(0, count - source.drop)
            raise ValueError(f"{source.path}: {kept} frames cannot hold the overlaps at its ends ({head} + {tail})")
        held = list(pending)[: len(pending) - source.drop]
