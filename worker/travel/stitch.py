"""Stitch travel segments into one video, cross-fading the frames consecutive segments share.

Segment i+1 was generated with its first `overlap[i]` frames guided by the last `overlap[i]` frames
of segment i, so both segments hold their own version of those moments. They are blended, not
concatenated: frame k of the overlap is `(1 - w[k]) * tail_i[k] + w[k] * head_{i+1}[k]` with smoothstep
weights rising from near 0 to near 1, so neither segment's version appears twice and the hand-over
has no visible cut. The result has sum(frames) - sum(overlaps) frames.

Segments that share their joining frame exactly (image-to-video segments both conditioned on the
same frame: `shared[i]` = 1) are concatenated instead, that frame kept once (the outgoing one).

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

import numpy as np

from worker.video import VideoWriter, iter_frames, save_png, thumbnail_path


@dataclass(frozen=True)
class StitchResult:
    """The stitched mp4, its first-frame PNG thumbnail, and what was written."""

    path: Path
    thumbnail: Path
    frames: int
    width: int
    height: int
    fps: float


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


def stitch(
    segment_paths: Sequence[str | os.PathLike[str]],
    overlaps: Sequence[int],
    output_path: str | os.PathLike[str],
    fps: float,
    shared: Sequence[int] | None = None,
) -> StitchResult:
    """Stitch K segment videos; overlaps[i] frames are shared by segments i and i+1 (K-1 entries),
    cross-faded; shared[i] leading frames of segment i+1 repeat segment i's end and are dropped.

    Writes output_path (H.264 mp4, see video.VideoWriter) and its thumbnail. Raises ValueError when
    the segments differ in size or one is too short for the overlaps at its two ends; the output
    path is then left untouched.
    """
    if not segment_paths:
        raise ValueError("nothing to stitch: no segments")
    if len(overlaps) != len(segment_paths) - 1:
        raise ValueError(f"{len(segment_paths)} segments need {len(segment_paths) - 1} overlaps, got {len(overlaps)}")
    if any(overlap < 0 for overlap in overlaps):
        raise ValueError(f"overlaps must be >= 0, got {list(overlaps)}")
    shared = list(shared) if shared is not None else [0] * len(overlaps)
    if len(shared) != len(overlaps) or any(count < 0 for count in shared):
        raise ValueError(f"shared needs {len(overlaps)} counts >= 0, got {shared}")

    output_path = Path(output_path)
    frames = stitched_frames(segment_paths, overlaps, shared)
    first_frame = next(frames, None)
    if first_frame is None:
        raise ValueError(f"{segment_paths[0]}: no frames")
    height, width, _ = first_frame.shape
    with VideoWriter(output_path, fps, width, height) as writer:
        writer.write(first_frame)
        for frame in frames:
            writer.write(frame)
    thumbnail = save_png(first_frame, thumbnail_path(output_path))
    return StitchResult(
        path=output_path, thumbnail=thumbnail, frames=writer.frames_written, width=width, height=height, fps=fps
    )


def stitched_frames(
    segment_paths: Sequence[str | os.PathLike[str]], overlaps: Sequence[int], shared: Sequence[int] | None = None
) -> Iterator[np.ndarray]:
    """The stitched video frame by frame, uint8 [H, W, 3]; holds at most one overlap of frames.

    Each segment's frames are yielded as they are decoded, except its last `overlaps[i]`, which wait
    to be blended with the head of the next segment.
    """
    size: tuple[int, ...] | None = None
    held: list[np.ndarray] = []  # the previous segment's last frames, waiting to be blended
    for index, path in enumerate(segment_paths):
        head = overlaps[index - 1] if index > 0 else 0
        tail = overlaps[index] if index < len(overlaps) else 0
        skip = shared[index - 1] if index > 0 and shared is not None else 0
        weights = crossfade_weights(head)
        pending: deque[np.ndarray] = deque()
        count = 0
        for position, frame in enumerate(iter_frames(path)):
            size = size or frame.shape
            if frame.shape != size:
                raise ValueError(
                    f"{path}: frames are {frame.shape[1]}x{frame.shape[0]}, the first segment's {size[1]}x{size[0]}"
                )
            if position < skip:
                continue
            if count < head:
                frame = blend(held[count], frame, weights[count])
            pending.append(frame)
            if len(pending) > tail:
                yield pending.popleft()
            count += 1
        if count < head + tail:
            raise ValueError(f"{path}: {count} frames cannot hold the overlaps at its ends ({head} + {tail})")
        held = list(pending)
