"""Guide and mask frames that steer one VACE travel segment.

VACE is given a guide video and a mask of the same length. Where the mask is 0 (black, keep) the
guide frame is a fact the model must reproduce; where it is 255 (white, generate) the model invents
the frame and the guide there is neutral gray, which VACE reads as "no information".

For segment i with F frames and `overlap` frames shared with segment i-1:
  * frames 0 .. overlap-1 are the last `overlap` frames of segment i-1's output, so the motion
    carries on across the cut (for the first segment, or an overlap of 0, frame 0 is the start image);
  * frame F-1 is the end image (the next keyframe; a journey from a single keyframe has none, and
    its last frame is generated too);
  * every other frame is gray and generated.

Pure numpy: frames uint8 [F, H, W, 3], masks uint8 [F, H, W].
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

# Gray for frames to generate. VACE's "empty" value is 0 in the model's [-1, 1] range, i.e. 127.5 in
# uint8; 127 is the value Wan2GP / ComfyUI VACE workflows use for the same purpose.
NEUTRAL_GRAY = 127
MASK_KEEP = 0
MASK_GENERATE = 255


@dataclass(frozen=True)
class SegmentGuide:
    """guide: uint8 [F, H, W, 3]; mask: uint8 [F, H, W], MASK_KEEP on given frames, MASK_GENERATE elsewhere."""

    guide: np.ndarray
    mask: np.ndarray

    @property
    def kept_frames(self) -> list[int]:
        """Indices of the frames the model must keep (for logs and result_data)."""
        return [int(i) for i in np.flatnonzero((self.mask == MASK_KEEP).all(axis=(1, 2)))]


def segment_guide(
    frames: int,
    overlap: int,
    start_image: np.ndarray | None,
    end_image: np.ndarray | None,
    previous_tail: np.ndarray | None = None,
) -> SegmentGuide:
    """Build the guide and mask of one segment.

    start_image, end_image: uint8 [H, W, 3], already fitted to the resolution (video.load_image).
    previous_tail: uint8 [>= overlap, H, W, 3], the end of segment i-1's output; its last `overlap`
    frames open this segment. Needed when overlap > 0; start_image is then not used (the previous
    segment already ended on it), so a caller may pass None instead of loading it.
    """
    given = [a.shape if a.ndim == 3 else a.shape[1:] for a in (end_image, start_image, previous_tail) if a is not None]
    if not given:
        raise ValueError("a segment needs a start image, an end image or the previous segment's frames")
    size = given[0]
    height, width, _ = size
    if start_image is not None and start_image.shape != size:
        raise ValueError(f"start and end images differ in size: {start_image.shape} vs {end_image.shape}")
    if not 0 <= overlap < frames:
        raise ValueError(f"overlap must be in 0..{frames - 1} for a {frames}-frame segment, got {overlap}")
    if overlap == 0:
        if start_image is None:
            raise ValueError("a segment without overlap opens on its start image, and none was given")
        head = start_image[None]
    else:
        if previous_tail is None or len(previous_tail) < overlap:
            got = 0 if previous_tail is None else len(previous_tail)
            raise ValueError(f"overlap {overlap} needs that many frames of the previous segment, got {got}")
        head = previous_tail[-overlap:]
        if head.shape[1:] != size:
            raise ValueError(f"previous segment frames are {head.shape[1:]}, the images {size}")

    guide = np.full((frames, height, width, 3), NEUTRAL_GRAY, dtype=np.uint8)
    mask = np.full((frames, height, width), MASK_GENERATE, dtype=np.uint8)
    guide[: len(head)] = head
    mask[: len(head)] = MASK_KEEP
    if end_image is not None:
        guide[-1] = end_image
        mask[-1] = MASK_KEEP
    return SegmentGuide(guide=guide, mask=mask)


def gap_guide(before: np.ndarray, gap: int, after: np.ndarray, anchors: Mapping[int, np.ndarray] | None = None) -> SegmentGuide:
    """The guide of a generation that fills `gap` frames between two runs of kept frames (inpaint_frames:
    the video's frames on each side of the range it regenerates; a join: the clips' frames on each side
    of the cut): `before`, then `gap` gray frames to generate, then `after`. before, after: uint8
    [n, H, W, 3] of one size (either may hold no frames). `anchors` {position in the gap: frame} are
    kept inside the gap instead of gray (a join's keep_bridging_images)."""
    if before.shape[1:] != after.shape[1:]:
        raise ValueError(f"the frames before and after differ in size: {before.shape[1:]} vs {after.shape[1:]}")
    if gap < 1:
        raise ValueError(f"a gap needs at least one frame to generate, got {gap}")
    height, width, _ = before.shape[1:]
    guide = np.concatenate([before, np.full((gap, height, width, 3), NEUTRAL_GRAY, np.uint8), after])
    mask = np.full(guide.shape[:3], MASK_KEEP, np.uint8)
    mask[len(before): len(before) + gap] = MASK_GENERATE
    for position, frame in (anchors or {}).items():
        if not 0 <= position < gap:
            raise ValueError(f"an anchor at {position} is outside the gap of {gap} frames")
        guide[len(before) + position] = frame
        mask[len(before) + position] = MASK_KEEP
    return SegmentGuide(guide=guide, mask=mask)
