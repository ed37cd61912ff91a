"""worker.travel.stitch: frame counts, cross-fade values and the thumbnail of stitched travel videos."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from worker.travel.stitch import Crossfade, Source, crossfade_weights, stitch
from worker.video import VideoWriter, probe, read_video, thumbnail_path

W, H, FPS = 64, 48, 16
# Gray levels survive H.264 (CRF 18, yuv420p) to within a level or two; allow a few.
CODEC_TOLERANCE = 3


def write_grays(path: Path, levels: list[int], width: int = W) -> Path:
    """A segment whose frame k is flat gray `levels[k]`."""
    with VideoWriter(path, FPS, width, H) as writer:
        for level in levels:
            writer.write(np.full((H, width, 3), level, np.uint8))
    return path


def mean_levels(path: Path) -> np.ndarray:
    """Mean gray level of each decoded frame: float [F]."""
    return read_video(path).reshape(probe(path).frames, -1).mean(axis=1)


def test_two_flat_segments_cross_fade_with_the_eased_weights(tmp_path: Path) -> None:
    dark, light, overlap = 30, 220, 6
    a = write_grays(tmp_path / "a.mp4", [dark] * 13)
    b = write_grays(tmp_path / "b.mp4", [light] * 9)
    result = stitch([a, b], [overlap], tmp_path / "out.mp4", FPS)

    weights = crossfade_weights(overlap)
    expected = np.array([dark] * (13 - overlap) + list(dark + (light - dark) * weights) + [light] * (9 - overlap))
    levels = mean_levels(result.path)
    assert len(levels) == 13 + 9 - overlap
    assert np.abs(levels - expected).max() <= CODEC_TOLERANCE


def test_blended_frames_are_computed_from_both_segments_per_pixel(tmp_path: Path) -> None:
    # Left half and right half swap between segments: every overlap pixel must be its own blend.
    left_dark = np.full((H, W, 3), 200, np.uint8)
    left_dark[:, : W // 2] = 40
    a, b = tmp_path / "a.mp4", tmp_path / "b.mp4"
    for path, frame in [(a, left_dark), (b, 240 - left_dark)]:
        with VideoWriter(path, FPS, W, H) as writer:
            writer.write(np.stack([frame] * 9))
    out = read_video(stitch([a, b], [4], tmp_path / "out.mp4", FPS).path).astype(float)
    weights = crossfade_weights(4)
    for k, weight in enumerate(weights):
        frame = out[9 - 4 + k]
        assert abs(frame[:, 4 : W // 2 - 4].mean() - (40 + (200 - 40) * weight)) <= CODEC_TOLERANCE
        assert abs(frame[:, W // 2 + 4 : -4].mean() - (200 + (40 - 200) * weight)) <= CODEC_TOLERANCE


def test_length_is_the_sum_of_frames_minus_the_sum_of_overlaps(tmp_path: Path) -> None:
    frames, overlaps = [9, 13, 5, 9], [4, 2, 0]
    paths = [write_grays(tmp_path / f"s{i}.mp4", [60 + 20 * i] * n) for i, n in enumerate(frames)]
    result = stitch(paths, overlaps, tmp_path / "out.mp4", FPS)
    info = probe(result.path)
    assert result.frames == info.frames == sum(frames) - sum(overlaps)
    assert (result.width, result.height, result.fps) == (info.width, info.height, info.fps) == (W, H, FPS)


def test_frames_outside_the_overlaps_appear_once_and_in_order(tmp_path: Path) -> None:
    # Every frame has its own gray level; the stitched video must run through the unshared ones in order.
    first = [20 + 8 * k for k in range(9)]  # 20 .. 84
    second = [120 + 8 * k for k in range(9)]  # 120 .. 184
    paths = [write_grays(tmp_path / "a.mp4", first), write_grays(tmp_path / "b.mp4", second)]
    levels = mean_levels(stitch(paths, [2], tmp_path / "out.mp4", FPS).path)
    assert np.abs(levels[:7] - first[:7]).max() <= CODEC_TOLERANCE
    assert np.abs(levels[9:] - second[2:]).max() <= CODEC_TOLERANCE
    shared = [first[7 + k] + (second[k] - first[7 + k]) * w for k, w in enumerate(crossfade_weights(2))]
    assert np.abs(levels[7:9] - shared).max() <= CODEC_TOLERANCE


def test_zero_overlap_is_a_plain_cut(tmp_path: Path) -> None:
    paths = [write_grays(tmp_path / "a.mp4", [50] * 5), write_grays(tmp_path / "b.mp4", [200] * 5)]
    levels = mean_levels(stitch(paths, [0], tmp_path / "out.mp4", FPS).path)
    assert np.abs(levels - np.array([50] * 5 + [200] * 5)).max() <= CODEC_TOLERANCE


def test_a_single_segment_is_written_unchanged(tmp_path: Path) -> None:
    levels = [40, 80, 120, 160, 200]
    result = stitch([write_grays(tmp_path / "a.mp4", levels)], [], tmp_path / "out.mp4", FPS)
    assert np.abs(mean_levels(result.path) - levels).max() <= CODEC_TOLERANCE


def test_the_thumbnail_is_the_first_frame_beside_the_video(tmp_path: Path) -> None:
    paths = [write_grays(tmp_path / "a.mp4", [90, 10, 10, 10, 10]), write_grays(tmp_path / "b.mp4", [200] * 5)]
    result = stitch(paths, [2], tmp_path / "final.mp4", FPS)
    assert result.thumbnail == thumbnail_path(result.path) and result.thumbnail.parent == result.path.parent
    thumbnail = np.asarray(Image.open(result.thumbnail))
    assert thumbnail.shape == (H, W, 3)
    assert np.abs(thumbnail.astype(int) - 90).max() <= CODEC_TOLERANCE


def test_a_segment_of_another_size_is_stretched_to_the_first_ones(tmp_path: Path) -> None:
    """The second segment is wider, bright on its left half and dark on its right: scaled to the first
    segment's width, both halves keep their place and level, and the cross-fade is unchanged."""
    a = write_grays(tmp_path / "a.mp4", [50] * 5)
    wide = W + 32
    with VideoWriter(tmp_path / "b.mp4", FPS, wide, H) as writer:
        frame = np.full((H, wide, 3), 30, np.uint8)
        frame[:, : wide // 2] = 200
        writer.write(np.stack([frame] * 6))
    result = stitch([a, tmp_path / "b.mp4"], [2], tmp_path / "out.mp4", FPS)
    assert (result.width, result.height, result.frames, result.scaled) == (W, H, 5 + 6 - 2, (1,))
    video = read_video(result.path).astype(int)
    assert video.shape == (9, H, W, 3)
    assert np.abs(video[-1, :, : W // 2 - 2] - 200).max() <= CODEC_TOLERANCE
    assert np.abs(video[-1, :, W // 2 + 2 :] - 30).max() <= CODEC_TOLERANCE
    weights = crossfade_weights(2)
    left = video[3:5, :, : W // 2 - 2].reshape(2, -1).mean(axis=1)
    assert np.abs(left - (50 + (200 - 50) * weights)).max() <= CODEC_TOLERANCE
    assert stitch([a, a], [2], tmp_path / "same.mp4", FPS).scaled == ()


def test_a_segment_shorter_than_its_overlaps_is_refused_and_nothing_is_written(tmp_path: Path) -> None:
    paths = [write_grays(tmp_path / f"s{i}.mp4", [50] * n) for i, n in enumerate([9, 5, 9])]
    with pytest.raises(ValueError, match="cannot hold the overlaps"):
        stitch(paths, [4, 2], tmp_path / "out.mp4", FPS)
    assert not (tmp_path / "out.mp4").exists() and not thumbnail_path(tmp_path / "out.mp4").exists()


def test_the_overlap_count_must_match_the_segments(tmp_path: Path) -> None:
    paths = [write_grays(tmp_path / f"s{i}.mp4", [50] * 5) for i in range(3)]
    with pytest.raises(ValueError, match="need 2 overlaps"):
        stitch(paths, [2], tmp_path / "out.mp4", FPS)


@given(st.integers(min_value=1, max_value=64))
def test_crossfade_weights_rise_strictly_inside_0_and_1_and_are_symmetric(overlap: int) -> None:
    weights = crossfade_weights(overlap)
    assert weights.shape == (overlap,)
    assert ((weights > 0) & (weights < 1)).all()
    assert (np.diff(weights) > 0).all()
    assert np.allclose(weights + weights[::-1], 1.0)


@given(st.integers(min_value=4, max_value=64))
def test_crossfade_weights_ease_in_and_out(overlap: int) -> None:
    # Eased: the fade changes slowest at its ends and fastest in the middle (unlike a linear ramp).
    steps = np.diff(np.concatenate([[0.0], crossfade_weights(overlap), [1.0]]))
    middle = steps[len(steps) // 2]
    assert steps[0] < middle and steps[-1] < middle


def test_a_shared_joining_frame_is_kept_once_from_the_outgoing_segment(tmp_path: Path) -> None:
    # Image-to-video segments both hold their joining keyframe: the second's copy is skipped, no blend.
    first = [20 + 8 * k for k in range(9)]
    second = [150 + 8 * k for k in range(9)]
    paths = [write_grays(tmp_path / "a.mp4", first), write_grays(tmp_path / "b.mp4", second)]
    levels = mean_levels(stitch([paths[0], Source(paths[1], skip=1)], [0], tmp_path / "out.mp4", FPS).path)
    assert len(levels) == 9 + 9 - 1
    assert np.abs(levels - (first + second[1:])).max() <= CODEC_TOLERANCE


def test_sources_drop_their_ends_before_the_overlaps_are_blended(tmp_path: Path) -> None:
    # How a join trims clips around a transition: a's last 3 and b's first 2 frames never show, and
    # the fade blends the frames next to them.
    first = [10 + 10 * k for k in range(10)]
    second = [200 - 10 * k for k in range(10)]
    paths = [write_grays(tmp_path / "a.mp4", first), write_grays(tmp_path / "b.mp4", second)]
    result = stitch([Source(paths[0], drop=3), Source(paths[1], skip=2)], [2], tmp_path / "out.mp4", FPS)
    kept_a, kept_b = np.array(first[:7], float), np.array(second[2:], float)
    weights = crossfade_weights(2)
    expected = np.concatenate([kept_a[:5], kept_a[5:] + (kept_b[:2] - kept_a[5:]) * weights, kept_b[2:]])
    assert result.frames == 7 + 8 - 2
    assert np.abs(mean_levels(result.path) - expected).max() <= CODEC_TOLERANCE
    with pytest.raises(ValueError, match="cannot hold the overlaps"):
        stitch([Source(paths[0], drop=9), paths[1]], [2], tmp_path / "short.mp4", FPS)
    with pytest.raises(ValueError, match="skip or drop"):
        stitch([Source(paths[0], skip=-1), paths[1]], [2], tmp_path / "negative.mp4", FPS)


def test_a_source_of_another_rate_is_resampled_and_one_of_another_shape_is_center_cropped(tmp_path: Path) -> None:
    # 24 frames at 24 fps are one second: 16 frames at the stitch's 16 fps. A 2:1 clip cropped to 4:3
    # keeps its middle, so a left half dark and right half light becomes a frame half dark, half light.
    fast = tmp_path / "fast.mp4"
    with VideoWriter(fast, 24, W, H) as writer:
        for k in range(24):
            writer.write(np.full((H, W, 3), 10 * k, np.uint8))
    wide = tmp_path / "wide.mp4"
    with VideoWriter(wide, FPS, 2 * H, H) as writer:
        frame = np.full((H, 2 * H, 3), 30, np.uint8)
        frame[:, H:] = 220
        for _ in range(4):
            writer.write(frame)
    result = stitch([Source(fast, resample=True), Source(wide, aspect=W / H)], [0], tmp_path / "out.mp4", FPS)
    assert result.frames == 16 + 4 and (result.width, result.height) == (W, H)
    last = read_video(result.path)[-1].astype(float).mean(axis=(0, 2))
    assert abs(last[: W // 2 - 4].mean() - 30) <= CODEC_TOLERANCE and abs(last[W // 2 + 4:].mean() - 220) <= CODEC_TOLERANCE
    assert result.scaled == ()  # cropped to the first video's shape at its size: nothing was scaled


# ---- the headless stitch's fade, against the OpenCV code it runs (banodoco/reigh-worker crossfade.py) --------

def headless_fade(outgoing: np.ndarray, incoming: np.ndarray, overlap: int, sharpen: float) -> list[np.ndarray]:
    """cross_fade_overlap_frames(..., "linear_sharp", sharpen) as the headless worker computes it."""
    import cv2

    frames = []
    for k in range(overlap):
        t = (1 - np.cos((k + 1) / overlap * np.pi)) / 2
        a, b = outgoing[k].astype(np.float32), incoming[k].astype(np.float32)
        base = cv2.addWeighted(a, 1.0 - t, b, t, 0)
        if sharpen > 0:
            blur = cv2.GaussianBlur(base, (0, 0), 3)
            base = cv2.addWeighted(base, 1.0 + sharpen * t, blur, -sharpen * t, 0)
        frames.append(np.clip(base, 0, 255).astype(np.uint8))
    return frames


@pytest.mark.parametrize("sharpen", [0.0, 0.3, 1.0])
def test_the_headless_crossfade_matches_opencvs(sharpen: float) -> None:
    rng = np.random.default_rng(3)
    outgoing, incoming = (rng.integers(0, 256, (5, 40, 56, 3), dtype=np.uint8) for _ in range(2))
    fade = Crossfade(sharpen=sharpen)
    ours = [fade.blend(outgoing[k], incoming[k], w) for k, w in enumerate(fade.weights(5))]
    for mine, theirs in zip(ours, headless_fade(outgoing, incoming, 5, sharpen)):
        assert np.abs(mine.astype(int) - theirs).max() <= 1  # float rounding at the truncation only
    if sharpen == 0:  # unsharpened, the last overlap frame is the incoming one
        assert np.array_equal(ours[-1], incoming[-1])


def test_a_headless_stitch_keeps_the_frame_count_and_ends_the_fade_on_the_incoming_segment(tmp_path: Path) -> None:
    a = write_grays(tmp_path / "a.mp4", [30] * 9)
    b = write_grays(tmp_path / "b.mp4", [220] * 9)
    result = stitch([a, b], [4], tmp_path / "out.mp4", FPS, crossfade=Crossfade(sharpen=0.3))
    levels = mean_levels(result.path)
    assert result.frames == len(levels) == 14
    weights = (1 - np.cos(np.arange(1, 5) / 4 * np.pi)) / 2  # flat frames: the sharpening changes nothing
    assert np.abs(levels[5:9] - (30 + 190 * weights)).max() <= CODEC_TOLERANCE
