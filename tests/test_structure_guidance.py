"""Structure guidance (worker/travel/guidance.py): every form of the row read into one Guidance, the
videos placed on the journey's timeline, the source frame each timeline frame shows, and a segment's
guide filled with control frames from real videos (FFV1, so pixel values can be compared)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from worker.errors import ValidationError
from worker.params import ParamReader
from worker.travel.guidance import (
    CANNY,
    DEPTH,
    FLOW,
    RAW,
    Guidance,
    GuidanceVideo,
    guide_segment,
    loaded_indices,
    place,
    read_guidance,
    resampled_indices,
    segment_offsets,
)
from worker.travel.guide import MASK_GENERATE, MASK_KEEP, NEUTRAL_GRAY, segment_guide
from worker_harness import write_lossless

DETAILS = "orchestrator_details."


def read(params: dict, prefix: str = DETAILS):
    return read_guidance(ParamReader(params, prefix=prefix))


def placed(guidance: Guidance) -> Guidance:
    """The guidance as a plan holds it: its videos placed on a journey long enough for them (probed)."""
    return place(guidance, max(video.end_frame for video in guidance.videos))[0]


def level_video(path: Path, levels: list[int], size: tuple[int, int] = (32, 24), fps: float = 16) -> str:
    """A lossless video whose frame i is flat gray at levels[i]."""
    frames = np.stack([np.full((size[1], size[0], 3), level, np.uint8) for level in levels])
    return str(write_lossless(path, frames, fps))


# ---- the forms ----------------------------------------------------------------------------------------

def test_travel_guidance_vace_is_read_with_its_videos_and_settings() -> None:
    reading = read({"travel_guidance": {
        "kind": "vace", "mode": "canny", "strength": 1, "canny_intensity": 0.8,
        "videos": [{"path": "a.mp4", "start_frame": 10, "end_frame": None, "treatment": "clip",
                    "source_start_frame": 3, "source_end_frame": 40}]}})
    guidance = reading.guidance
    assert guidance.mode == CANNY and guidance.canny_intensity == 0.8 and reading.ignored == {}
    assert guidance.videos == (GuidanceVideo("a.mp4", 10, None, "clip", 3, 40,
                                             f"{DETAILS}travel_guidance.videos[0]"),)


def test_kind_none_asks_for_nothing_and_other_kinds_are_refused_naming_the_field() -> None:
    assert read({"travel_guidance": {"kind": "none", "videos": []}}).guidance is None
    for kind, words in (("uni3c", "Uni3C"), ("ltx_control", "LTX-2"), ("ltx_hybrid", "LTX-2")):
        with pytest.raises(ValidationError, match="Uni3C|LTX-2") as error:
            read({"travel_guidance": {"kind": kind, "videos": [{"path": "a.mp4"}]}})
        assert error.value.field == f"{DETAILS}travel_guidance.kind" and words in error.value.rule


def test_flow_is_the_default_mode_and_an_unknown_mode_lists_the_modes() -> None:
    reading = read({"travel_guidance": {"kind": "vace", "strength": 0.5, "videos": [{"path": "a.mp4"}]}})
    assert reading.guidance.mode == FLOW and reading.guidance.strength == 0.5 and reading.ignored == {}
    with pytest.raises(ValidationError, match="raw, canny, depth, flow") as error:
        read({"travel_guidance": {"kind": "vace", "mode": "pose", "videos": [{"path": "a.mp4"}]}})
    assert error.value.field == f"{DETAILS}travel_guidance.mode"


def test_structure_guidance_preprocessing_none_is_raw_and_its_uni3c_target_is_refused() -> None:
    guidance = read({"structure_guidance": {"target": "vace", "preprocessing": "none", "depth_contrast": 1.0,
                                            "videos": [{"path": "a.mp4", "start_frame": 0, "end_frame": 9}]}}).guidance
    assert guidance.mode == RAW and guidance.field == f"{DETAILS}structure_guidance"
    with pytest.raises(ValidationError) as error:
        read({"structure_guidance": {"target": "uni3c", "videos": [{"path": "a.mp4"}]}})
    assert error.value.field == f"{DETAILS}structure_guidance.target"


def test_the_legacy_flat_keys_one_path_or_a_list_whose_first_entry_gives_the_type() -> None:
    single = read({"structure_type": "depth", "structure_video_path": "a.mp4", "structure_video_treatment": "clip",
                   "structure_depth_contrast": 1.5}).guidance
    assert single.mode == DEPTH and single.depth_contrast == 1.5
    assert [(v.path, v.treatment, v.end_frame) for v in single.videos] == [("a.mp4", "clip", None)]
    listed = read({"structure_videos": [{"path": "b.mp4", "start_frame": 0, "end_frame": 20, "structure_type": "raw",
                                         "metadata": {"fps": 24}, "resource_id": "r1"}]}).guidance
    assert listed.mode == RAW and listed.videos[0].end_frame == 20
    assert read({"structure_type": "flow", "structure_videos": []}).guidance is None  # no video: nothing asked
    assert read({"structure_video_path": "a.mp4"}).guidance.mode == FLOW  # the headless default type
    with pytest.raises(ValidationError) as error:
        read({"use_uni3c": True, "uni3c_guide_video": "u.mp4"})
    assert error.value.field == f"{DETAILS}use_uni3c"
    assert read({"use_uni3c": False}).guidance is None


def test_travel_guidance_next_to_an_older_form_is_refused_naming_the_older_key() -> None:
    with pytest.raises(ValidationError, match="cannot be combined") as error:
        read({"travel_guidance": {"kind": "vace", "mode": "raw", "videos": [{"path": "a.mp4"}]},
              "structure_video_path": "b.mp4"})
    assert error.value.field == f"{DETAILS}structure_video_path"


def test_settings_the_mode_does_not_use_are_reported_and_bad_entries_fail_naming_them() -> None:
    reading = read({"travel_guidance": {"kind": "vace", "mode": "raw", "strength": 0.5, "canny_intensity": 2,
                                        "depth_contrast": 1, "colour": "x",
                                        "videos": [{"path": "a.mp4", "start_frame": 0, "speed": 2}]}})
    prefix = f"{DETAILS}travel_guidance."
    assert set(reading.ignored) == {f"{prefix}strength", f"{prefix}canny_intensity", f"{prefix}colour",
                                    f"{prefix}videos[0].speed"}
    legacy = read({"structure_type": "raw", "structure_video_path": "a.mp4", "structure_video_motion_strength": 0.3})
    assert list(legacy.ignored) == [f"{DETAILS}structure_video_motion_strength"]
    with pytest.raises(ValidationError) as error:
        read({"travel_guidance": {"kind": "vace", "mode": "raw", "videos": [{"path": "a.mp4", "treatment": "loop"}]}})
    assert error.value.field == f"{prefix}videos[0].treatment"
    with pytest.raises(ValidationError) as error:
        read({"travel_guidance": {"kind": "vace", "mode": "raw", "videos": [{"start_frame": 0}]}})
    assert error.value.field == f"{prefix}videos[0].path"
    with pytest.raises(ValidationError, match="at least one video"):
        read({"travel_guidance": {"kind": "vace", "mode": "raw", "videos": []}})


# ---- the timeline -------------------------------------------------------------------------------------

def test_videos_are_sorted_and_fitted_to_the_journey_and_one_past_its_end_is_reported(tmp_path: Path) -> None:
    path = level_video(tmp_path / "v.mkv", [10, 20, 30])
    field = "travel_guidance.videos"
    guidance = Guidance(RAW, (GuidanceVideo(path, 14, None, field=f"{field}[0]"),
                              GuidanceVideo(path, 0, 12, field=f"{field}[1]"),
                              GuidanceVideo(path, 50, 60, field=f"{field}[2]")))
    placed, ignored = place(guidance, 40)
    assert [(v.field, v.start_frame, v.end_frame) for v in placed.videos] == [
        (f"{field}[1]", 0, 12), (f"{field}[0]", 14, 40)]
    assert list(ignored) == [f"{field}[2]"] and "after the journey's 40 frames" in ignored[f"{field}[2]"]
    overlapping = GuidanceVideo(path, 30, 99, field=f"{field}[3]")  # inside [14, 40) once both ends are fitted
    with pytest.raises(ValidationError) as error:
        place(Guidance(RAW, (guidance.videos[0], overlapping)), 40)
    assert error.value.field == f"{field}[3].start_frame"


def test_empty_ranges_and_unreadable_sources_fail_naming_the_entry(tmp_path: Path) -> None:
    path = level_video(tmp_path / "v.mkv", [10, 20])
    with pytest.raises(ValidationError) as error:
        place(Guidance(RAW, (GuidanceVideo(path, 8, 8, field="g.videos[0]"),)), 20)
    assert error.value.field == "g.videos[0].end_frame"
    not_video = tmp_path / "notes.txt"
    not_video.write_text("hello")
    with pytest.raises(ValidationError, match="not a readable video") as error:
        place(Guidance(RAW, (GuidanceVideo(str(not_video), 0, 4, field="g.videos[0]"),)), 20)
    assert error.value.field == "g.videos[0].path"


def test_segment_offsets_start_each_segment_where_its_overlap_begins() -> None:
    assert segment_offsets([17, 21, 13], [0, 4, 6]) == [0, 13, 28]
    assert segment_offsets([9], [3]) == [0]  # a continued journey's first overlap is the video's


def source_indices(video: GuidanceVideo, source_frames: int, source_fps: float, fps: float) -> list[int]:
    """The source frame shown at each of the video's timeline frames: the loaded ones but the last."""
    return loaded_indices(video, source_frames, source_fps, fps)[: video.end_frame - video.start_frame]


def test_adjust_spreads_the_source_range_with_the_headless_formula() -> None:
    video = GuidanceVideo("v", 10, 15)  # 5 timeline frames; the loader reads 6 and drops the last
    assert source_indices(video, 11, 16, 16) == [int(i * 10 / 5) for i in range(5)] == [0, 2, 4, 6, 8]
    assert source_indices(video, 3, 16, 16) == [0, 0, 0, 1, 1]  # stretched
    ranged = GuidanceVideo("v", 0, 4, source_start_frame=5, source_end_frame=9)
    assert source_indices(ranged, 100, 16, 16) == [5 + int(i * 3 / 4) for i in range(4)]
    clamped = GuidanceVideo("v", 0, 3, source_start_frame=50)
    assert source_indices(clamped, 20, 16, 16) == [19, 19, 19]


def test_clip_plays_the_source_at_its_rate_and_loops_when_short() -> None:
    assert resampled_indices(32, 100, 5, 16) == [0, 2, 4, 6, 8]  # 32 fps seen at 16 fps: every other frame
    # 8 fps at 16: each frame twice, Wan2GP's formula rounding up (frame 1 already at the second tick)
    assert resampled_indices(8, 100, 5, 16) == [0, 1, 1, 2, 2]
    assert source_indices(GuidanceVideo("v", 0, 7, treatment="clip"), 3, 16, 16) == [0, 1, 2, 0, 1, 2, 0]
    assert source_indices(GuidanceVideo("v", 0, 4, treatment="clip", source_start_frame=10), 40, 32.2, 16) == \
        [10, 12, 14, 16]  # the source's rate is rounded first, as the headless loader does
    assert source_indices(GuidanceVideo("v", 0, 3, treatment="clip"), 5, 0.4, 16) == [0, 1, 1]  # read as 1 fps


# ---- a segment's guide --------------------------------------------------------------------------------

def test_generated_frames_show_the_video_at_their_timeline_frames_and_kept_ones_stay(tmp_path: Path) -> None:
    levels = [10 * (i + 1) for i in range(20)]
    path = level_video(tmp_path / "v.mkv", levels, size=(64, 48))
    start, end = (np.full((24, 32, 3), value, np.uint8) for value in (200, 250))
    guide = segment_guide(9, 0, start, end)
    video = GuidanceVideo(path, 12, 18, field="g.videos[0]")  # timeline [12, 18) over a segment from 10
    guided = guide_segment(guide, placed(Guidance(RAW, (video,))), offset=10, size=(32, 24), fps=16, annotate=None)

    indices = source_indices(video, 20, 16, 16)
    assert guided.frames == [2, 3, 4, 5, 6, 7]
    for k in guided.frames:
        assert np.abs(guided.guide.guide[k].astype(int) - levels[indices[10 + k - 12]]).max() <= 1
    assert (guided.guide.guide[0] == 200).all() and (guided.guide.guide[8] == 250).all()  # kept frames
    assert (guided.guide.guide[1] == NEUTRAL_GRAY).all()  # no video covers timeline frame 11
    assert (guided.guide.mask[1:8] == MASK_GENERATE).all() and (guided.guide.mask[[0, 8]] == MASK_KEEP).all()
    assert guided.sources == [{"video": "g.videos[0]", "path": path, "frames": [2, 3, 4, 5, 6, 7],
                               "source_frames": [indices[k - 2] for k in range(2, 8)]}]


def test_a_source_of_another_shape_is_center_cropped_to_the_job_aspect(tmp_path: Path) -> None:
    frames = np.zeros((3, 24, 64, 3), np.uint8)
    frames[:, :, 16:48] = 180  # the middle 32 columns: what a 4:3 crop of a 8:3 frame keeps
    path = str(write_lossless(tmp_path / "wide.mkv", frames, 16))
    guide = segment_guide(5, 0, np.zeros((24, 32, 3), np.uint8), None)
    guided = guide_segment(guide, placed(Guidance(RAW, (GuidanceVideo(path, 0, 5, field="v"),))), 0, (32, 24), 16,
                           None)
    assert guided.frames == [1, 2, 3, 4] and (np.abs(guided.guide.guide[1:].astype(int) - 180) <= 2).all()


def test_annotated_modes_go_through_the_annotator_with_the_headless_adjustments(tmp_path: Path) -> None:
    path = level_video(tmp_path / "v.mkv", [100] * 6)
    calls = []

    def annotate(mode: str, frames: np.ndarray) -> np.ndarray:
        calls.append((mode, frames.shape))
        return np.full_like(frames, 200)

    guide = segment_guide(5, 0, np.zeros((24, 32, 3), np.uint8), None)
    canny = Guidance(CANNY, (GuidanceVideo(path, 0, 5, field="v"),), canny_intensity=0.5)
    assert (guide_segment(guide, placed(canny), 0, (32, 24), 16, annotate).guide.guide[1:] == 100).all()
    depth = Guidance(DEPTH, (GuidanceVideo(path, 0, 5, field="v"),), depth_contrast=1.5)
    level = int((((200 / 255) - 0.5) * 1.5 + 0.5) * 255)  # contrast around mid-gray: 236
    assert (guide_segment(guide, placed(depth), 0, (32, 24), 16, annotate).guide.guide[1:] == level).all()
    assert calls == [(CANNY, (4, 24, 32, 3)), (DEPTH, (4, 24, 32, 3))]


def test_a_headless_guidance_video_is_read_from_the_segment_offset(tmp_path: Path) -> None:
    levels = [5 * (i + 1) for i in range(30)]
    path = level_video(tmp_path / "composite.mkv", levels, size=(32, 24))
    guide = segment_guide(5, 2, None, np.full((24, 32, 3), 250, np.uint8), np.zeros((2, 24, 32, 3), np.uint8))
    guidance = Guidance(CANNY, guidance_video=path, frame_offset=20)  # annotated already: no annotator runs
    guided = guide_segment(guide, guidance, offset=0, size=(32, 24), fps=16, annotate=None)
    assert guided.frames == [2, 3]
    assert [int(guided.guide.guide[k].mean()) for k in (2, 3)] == [levels[22], levels[23]]


@pytest.mark.parametrize("guidance,field", [
    ("vace", "travel_guidance"),
    ({"kind": "vace", "mode": "raw", "videos": {"path": "a.mp4"}}, "travel_guidance.videos"),
    ({"kind": "vace", "mode": "raw", "videos": ["a.mp4"]}, "travel_guidance.videos[0]"),
    ({"kind": "vace", "mode": "raw", "videos": [{"path": "a.mp4", "start_frame": "soon"}]},
     "travel_guidance.videos[0].start_frame"),
    ({"kind": "vace", "mode": "raw", "videos": [{"path": "a.mp4", "end_frame": 0}]},
     "travel_guidance.videos[0].end_frame"),
    ({"kind": "vace", "mode": "canny", "canny_intensity": -1, "videos": [{"path": "a.mp4"}]},
     "travel_guidance.canny_intensity"),
    ({"kind": "sparkles", "videos": [{"path": "a.mp4"}]}, "travel_guidance.kind"),
])
def test_malformed_guidance_fails_naming_the_field(guidance: object, field: str) -> None:
    with pytest.raises(ValidationError) as error:
        read({"travel_guidance": guidance})
    assert error.value.field == DETAILS + field


def test_a_source_range_ending_before_it_starts_fails_naming_it(tmp_path: Path) -> None:
    path = level_video(tmp_path / "v.mkv", [10, 20, 30])
    video = GuidanceVideo(path, 0, 4, source_start_frame=5, source_end_frame=3, field="g.videos[0]")
    with pytest.raises(ValidationError) as error:
        place(Guidance(RAW, (video,)), 10)
    assert error.value.field == "g.videos[0].source_end_frame"


def test_flow_shows_the_motion_into_each_frame_from_the_pairs_the_headless_annotator_draws(tmp_path: Path) -> None:
    """The headless flow annotator reads one frame more than the range, draws the flow between
    consecutive frames and repeats the first: timeline frame i shows the flow from loaded frame
    max(i - 1, 0) to the next. Flow is scaled by strength before it is drawn."""
    levels = [10 * (i + 1) for i in range(12)]
    path = level_video(tmp_path / "v.mkv", levels)
    pairs_seen = []

    def annotate(mode: str, pairs: np.ndarray) -> np.ndarray:
        pairs_seen.append([(int(a.mean()), int(b.mean())) for a, b in pairs])
        fields = np.zeros((len(pairs), 24, 32, 2), np.float32)
        fields[..., 0] = np.array([b.mean() - a.mean() for a, b in pairs])[:, None, None]  # "motion" to the right
        return fields

    guide = segment_guide(5, 0, np.zeros((24, 32, 3), np.uint8), None)
    video = GuidanceVideo(path, 0, 5, field="v")
    guided = guide_segment(guide, placed(Guidance(FLOW, (video,), strength=2.0)), 0, (32, 24), 16, annotate)
    loaded = [int(i * 11 / 5) for i in range(6)]  # adjust: 6 loaded frames over 12
    expected_pairs = [(loaded[max(i - 1, 0)], loaded[max(i - 1, 0) + 1]) for i in range(1, 5)]
    assert guided.frames == [1, 2, 3, 4]
    assert guided.sources[0]["source_frames"] == [list(pair) for pair in expected_pairs]
    assert pairs_seen == [[(levels[a], levels[b]) for a, b in expected_pairs]]
    from wan_engine.nn.raft import flow_to_image
    right = flow_to_image(np.stack([np.full((24, 32), 20.0), np.zeros((24, 32))], -1).astype(np.float32))
    assert all(np.array_equal(guided.guide.guide[k], right) for k in guided.frames)  # uniform motion right


def test_an_entrys_own_strength_or_type_is_reported_and_mixed_entry_types_are_refused() -> None:
    """The headless composite scales every video by the guidance's one strength, takes a top-level
    structure_type over the entries', and refuses entries of different types."""
    reading = read({"structure_type": "raw", "structure_video_motion_strength": 1.0, "structure_videos": [
        {"path": "a.mp4", "start_frame": 0, "end_frame": 9, "motion_strength": 0.5, "structure_type": "canny"},
        {"path": "b.mp4", "start_frame": 9, "end_frame": 18, "motion_strength": 1.0}]})
    assert reading.guidance.mode == RAW
    assert set(reading.ignored) == {f"{DETAILS}structure_videos[0].motion_strength",
                                    f"{DETAILS}structure_videos[0].structure_type"}
    with pytest.raises(ValidationError, match="every video takes one type") as error:
        read({"structure_videos": [{"path": "a.mp4", "structure_type": "depth"},
                                   {"path": "b.mp4", "type": "canny"}]})
    assert error.value.field == f"{DETAILS}structure_videos[1].type"
