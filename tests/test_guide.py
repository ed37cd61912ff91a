"""worker.travel.guide: what VACE is told to keep and to generate, frame by frame."""
from __future__ import annotations

import numpy as np
import pytest

from worker.travel.guide import MASK_GENERATE, MASK_KEEP, NEUTRAL_GRAY, gap_guide, segment_guide

H, W = 16, 24


def solid(value: int) -> np.ndarray:
    return np.full((H, W, 3), value, np.uint8)


def distinct_frames(count: int, first_value: int) -> np.ndarray:
    """uint8 [count, H, W, 3], frame k filled with first_value + k (so frames can be told apart)."""
    return np.stack([solid(first_value + k) for k in range(count)])


START, END = solid(10), solid(240)


def test_first_segment_keeps_the_start_image_on_frame_0_and_the_end_image_on_the_last() -> None:
    result = segment_guide(frames=9, overlap=0, start_image=START, end_image=END)
    assert result.guide.shape == (9, H, W, 3) and result.mask.shape == (9, H, W)
    assert result.guide.dtype == np.uint8 and result.mask.dtype == np.uint8
    assert np.array_equal(result.guide[0], START)
    assert np.array_equal(result.guide[8], END)
    assert result.kept_frames == [0, 8]


def test_frames_between_the_given_ones_are_neutral_gray_and_generated() -> None:
    result = segment_guide(frames=9, overlap=0, start_image=START, end_image=END)
    for k in range(1, 8):
        assert (result.guide[k] == NEUTRAL_GRAY).all(), k
        assert (result.mask[k] == MASK_GENERATE).all(), k


def test_given_frames_are_masked_black_over_the_whole_frame() -> None:
    result = segment_guide(frames=9, overlap=0, start_image=START, end_image=END)
    assert (result.mask[0] == MASK_KEEP).all() and (result.mask[8] == MASK_KEEP).all()


def test_later_segment_opens_with_the_last_overlap_frames_of_the_previous_output() -> None:
    previous = distinct_frames(13, first_value=50)
    result = segment_guide(frames=9, overlap=4, start_image=START, end_image=END, previous_tail=previous)
    for k in range(4):
        assert np.array_equal(result.guide[k], previous[13 - 4 + k]), k
        assert (result.mask[k] == MASK_KEEP).all(), k
    for k in range(4, 8):
        assert (result.guide[k] == NEUTRAL_GRAY).all() and (result.mask[k] == MASK_GENERATE).all(), k
    assert np.array_equal(result.guide[8], END) and (result.mask[8] == MASK_KEEP).all()
    assert result.kept_frames == [0, 1, 2, 3, 8]


def test_later_segment_does_not_use_its_start_image_when_it_has_an_overlap() -> None:
    previous = distinct_frames(4, first_value=100)
    result = segment_guide(frames=9, overlap=2, start_image=START, end_image=END, previous_tail=previous)
    assert not any(np.array_equal(frame, START) for frame in result.guide)


def test_a_segment_with_an_overlap_needs_no_start_image() -> None:
    previous = distinct_frames(4, first_value=100)
    without = segment_guide(frames=9, overlap=2, start_image=None, end_image=END, previous_tail=previous)
    with_start = segment_guide(frames=9, overlap=2, start_image=START, end_image=END, previous_tail=previous)
    assert np.array_equal(without.guide, with_start.guide) and np.array_equal(without.mask, with_start.mask)


def test_a_segment_without_overlap_and_without_start_image_is_refused() -> None:
    with pytest.raises(ValueError, match="start image"):
        segment_guide(frames=9, overlap=0, start_image=None, end_image=END)


def test_a_zero_overlap_later_segment_starts_from_its_start_image() -> None:
    previous = distinct_frames(4, first_value=100)
    result = segment_guide(frames=5, overlap=0, start_image=START, end_image=END, previous_tail=previous)
    assert np.array_equal(result.guide[0], START)
    assert result.kept_frames == [0, 4]


def test_overlap_of_all_but_the_last_frame_leaves_nothing_gray() -> None:
    previous = distinct_frames(8, first_value=20)
    result = segment_guide(frames=5, overlap=4, start_image=START, end_image=END, previous_tail=previous)
    assert result.kept_frames == [0, 1, 2, 3, 4]
    assert not (result.guide == NEUTRAL_GRAY).all(axis=(1, 2, 3)).any()


def test_an_overlap_without_enough_previous_frames_is_refused() -> None:
    with pytest.raises(ValueError, match="needs that many frames"):
        segment_guide(frames=9, overlap=4, start_image=START, end_image=END, previous_tail=distinct_frames(3, 0))
    with pytest.raises(ValueError, match="needs that many frames"):
        segment_guide(frames=9, overlap=4, start_image=START, end_image=END)


def test_an_overlap_as_long_as_the_segment_is_refused() -> None:
    with pytest.raises(ValueError, match="overlap"):
        segment_guide(frames=5, overlap=5, start_image=START, end_image=END, previous_tail=distinct_frames(5, 0))


def test_previous_frames_of_another_size_are_refused() -> None:
    other_size = np.zeros((4, H, W + 8, 3), np.uint8)
    with pytest.raises(ValueError, match="previous segment frames"):
        segment_guide(frames=9, overlap=2, start_image=START, end_image=END, previous_tail=other_size)


def test_a_gap_guide_keeps_the_frames_on_each_side_and_generates_gray_between() -> None:
    before = np.stack([np.full((4, 6, 3), 10 * k, np.uint8) for k in range(1, 4)])
    after = np.stack([np.full((4, 6, 3), 200 + k, np.uint8) for k in range(2)])
    built = gap_guide(before, 4, after)
    assert built.guide.shape == (9, 4, 6, 3) and built.mask.shape == (9, 4, 6)
    assert np.array_equal(built.guide[:3], before) and np.array_equal(built.guide[7:], after)
    assert (built.guide[3:7] == NEUTRAL_GRAY).all()
    assert (built.mask[3:7] == MASK_GENERATE).all() and built.kept_frames == [0, 1, 2, 7, 8]
    assert gap_guide(before[:0], 2, after).kept_frames == [2, 3]  # no context before: the gap opens the video
    with pytest.raises(ValueError, match="at least one frame"):
        gap_guide(before, 0, after)
    with pytest.raises(ValueError, match="differ in size"):
        gap_guide(before, 2, after[:, :2])
