"""worker.join: which frames a transition keeps, generates and replaces (the headless join arithmetic,
banodoco/reigh-worker join/generation.py and vace_quantization.py), and how a joined video is laid out."""
from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker.errors import ValidationError
from worker.join import StitchedTransition, Transition, join_layout, plan_transition
from worker.travel.stitch import Source


def test_the_reigh_apps_default_join_replaces_the_gap_split_in_half() -> None:
    # joinClips.ts defaults: context 15, gap 23, replace_mode on; 15 + 23 + 15 = 53 is already 4n+1.
    transition, notes = plan_transition(81, 81, context=15, gap=23, replace=True)
    assert transition == Transition(81, 81, 15, 23, 15, 11, 12, "replace")
    assert notes == []
    assert transition.clip1_context == (55, 70) and transition.clip2_context == (12, 27)
    assert transition.metadata()["frames"] == 53


def test_the_headless_default_inserts_and_rounds_the_gap_down_to_4n_plus_1() -> None:
    assert plan_transition(40, 40, context=8, gap=53, replace=False)[0] == Transition(40, 40, 8, 53, 8, 0, 0, "insert")
    transition, notes = plan_transition(40, 40, context=8, gap=20, replace=False)  # 36 -> 33
    assert (transition.gap_frames, transition.frames) == (17, 33)
    assert notes == ["gap_frame_count 20 -> 17: 8 + 20 + 8 frames rounded down to 4n+1"]


def test_short_clips_shrink_gap_and_context_in_proportion_when_replacing() -> None:
    # 40-frame clips cannot give 23 + 2 x 15: ratio 38 / 53 makes gap 16 and context 10, whose 36 frames
    # round down to 33 by taking 3 from the gap; the 13 generated frames replace 6 + 7 of the clips.
    transition, notes = plan_transition(40, 40, context=15, gap=23, replace=True)
    assert transition == Transition(40, 40, 10, 13, 10, 6, 7, "replace")
    assert len(notes) == 2 and notes[0].startswith("gap_frame_count 23 -> 16 and context_frame_count 15 -> 10")


def test_context_is_cut_to_the_shorter_clip_and_a_gap_rounded_to_nothing_fails() -> None:
    transition, notes = plan_transition(5, 30, context=8, gap=10, replace=False)
    assert (transition.context_from_clip1, transition.gap_frames) == (5, 7)  # 5 + 10 + 5 = 20 -> 17
    assert notes[0] == "context_frame_count 8 -> 5: the shorter clip has 5 frames"
    with pytest.raises(ValidationError, match="gap_frame_count: 7 \\+ 1 \\+ 7 frames round down"):
        plan_transition(30, 30, context=7, gap=1, replace=False)


def test_a_clip_too_short_for_its_half_of_the_gap_passes_the_rest_to_the_other() -> None:
    transition, _ = plan_transition(1, 100, context=4, gap=6, replace=True)
    assert (transition.gap_from_clip1, transition.gap_from_clip2) == (0, transition.gap_frames)
    with pytest.raises(ValidationError, match="gap_frame_count: .* cannot replace the clips' ends"):
        plan_transition(1, 1, context=4, gap=6, replace=True)


@given(st.integers(1, 200), st.integers(1, 200), st.integers(1, 40), st.integers(1, 120), st.booleans())
def test_every_planned_transition_fits_its_clips_and_the_vae(clip1: int, clip2: int, context: int, gap: int,
                                                             replace: bool) -> None:
    try:
        transition, _ = plan_transition(clip1, clip2, context, gap, replace)
    except ValidationError as error:
        assert error.field == "gap_frame_count"
        return
    assert (transition.frames - 1) % 4 == 0 and transition.gap_frames >= 1
    most = max(context, 2)  # a reduced guide is at least gap 1 + 2 x context 2, the headless minimum
    assert 1 <= transition.context_from_clip1 <= most and 1 <= transition.context_from_clip2 <= most
    # what a segment decodes of each clip's end (JoinSpec.read_context) holds what the transition takes
    assert transition.gap_from_clip1 + transition.context_from_clip1 <= gap + most
    assert transition.gap_from_clip2 + transition.context_from_clip2 <= gap + most
    start1, end1 = transition.clip1_context
    start2, end2 = transition.clip2_context
    assert 0 <= start1 < end1 <= clip1 and 0 <= start2 < end2 <= clip2
    if replace:  # the generated frames stand in for exactly as many of the clips': the length is kept
        assert transition.gap_from_clip1 + transition.gap_from_clip2 == transition.gap_frames
        assert end1 == clip1 - transition.gap_from_clip1 and start2 == transition.gap_from_clip2
    else:
        assert (transition.gap_from_clip1, transition.gap_from_clip2) == (0, 0) and (end1, start2) == (clip1, 0)


def test_a_transitions_facts_are_read_from_either_workers_row() -> None:
    ours = Transition(81, 81, 15, 23, 15, 11, 12, "replace").metadata()
    read = StitchedTransition.read({**ours, "transition_index": 2, "fps": 16, "resolution": [832, 480]}, 0, "t")
    assert read == StitchedTransition(2, 15, 15, 11, 12, 16.0, 832 / 480)  # the headless form: its resolution's shape
    assert StitchedTransition.read({**ours, "resolution": [832, 480], "crop_aspect": 1.5}, 0, "t").aspect == 1.5
    with pytest.raises(ValidationError, match="t: the transition's gap_from_clip2 must be a count >= 0"):
        StitchedTransition.read({**ours, "gap_from_clip2": -1}, 0, "t")


def test_the_joined_video_trims_each_clip_by_what_its_transitions_replace(tmp_path: Path) -> None:
    clips = [Source(tmp_path / f"clip{i}.mp4", resample=True) for i in range(3)]
    first, second = StitchedTransition(0, 4, 5, 2, 3, 16.0, None), StitchedTransition(1, 6, 7, 0, 0, 16.0, None)
    videos, overlaps = join_layout(clips, [(tmp_path / "t0.mp4", first), (tmp_path / "t1.mp4", second)])
    assert [(video.path.name, video.skip, video.drop) for video in videos] == [
        ("clip0.mp4", 0, 2), ("t0.mp4", 0, 0), ("clip1.mp4", 3, 0), ("t1.mp4", 0, 0), ("clip2.mp4", 0, 0)]
    assert overlaps == [4, 5, 6, 7] and videos[2].resample
