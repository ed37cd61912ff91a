"""Structure-guided travel end to end through the table, on the tiny VACE model on the CPU: our row
form and the Reigh app's (a structure video by URL, canny and depth through the tiny annotators), the
headless orchestrator's segment row that names its finished guidance video, and the checks an
orchestrator makes before it plans."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fleet_servers import file_server  # noqa: F401 (a fixture)
from test_row_forms_2026 import headless_segment_row, travel_row
from wan_engine.errors import WeightsMissing
from worker.errors import ValidationError
from worker.resources import WorkerResources
from worker.store import TaskStatus, TaskStore
from worker.travel.guidance import CANNY, FLOW, Guidance, GuidanceVideo, check_runnable
from worker.video import probe, read_video
from worker_harness import resources, run_until_idle, write_keyframes, write_lossless  # noqa: F401 (resources)

MODEL = "tiny_vace"


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    return write_keyframes(tmp_path_factory.mktemp("keys"), 3)


@pytest.fixture(scope="module")
def structure_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A moving bright square on dark gray, 24 frames at 16 fps, lossless."""
    frames = np.full((24, 48, 64, 3), 40, np.uint8)
    for i in range(24):
        frames[i, 12:36, 2 + i * 2: 26 + i * 2] = 220
    return write_lossless(tmp_path_factory.mktemp("structure") / "square.mkv", frames, 16)


def travel(images: list[str], **fields: object) -> dict:
    """Our form: 2 segments of 9 frames sharing 2 (a 16-frame journey), 64x48, 2 steps."""
    return {"model": MODEL, "images": images, "prompts": ["walk", "climb"], "resolution": "64x48", "fps": 16,
            "segment_frames": 9, "frame_overlap": 2, "seed": 3, "num_inference_steps": 2, **fields}


def segments_of(store: TaskStore, orchestrator_id: str) -> list:
    children = {child.params["child_key"]: child for child in store.children(orchestrator_id)}
    return [children[f"segment-{i}"] for i in range(2)]


def test_a_raw_structure_video_fills_each_segments_generated_frames_on_the_timeline(
        store: TaskStore, resources: WorkerResources, images: list[str], structure_video: Path, tmp_path: Path) -> None:
    guidance = {"kind": "vace", "mode": "raw",
                "videos": [{"path": str(structure_video), "start_frame": 4, "end_frame": 14, "treatment": "adjust"}]}
    guided_id = store.enqueue("travel_orchestrator", travel(images, travel_guidance=guidance))
    plain_id = store.enqueue("travel_orchestrator", travel(images))
    run_until_idle(store, resources, tmp_path / "outputs")

    guided, plain = store.get(guided_id), store.get(plain_id)
    assert guided.status == plain.status == TaskStatus.COMPLETE, guided.error_message
    assert probe(guided.output_location).frames == 16
    facts = [segment.result_data["structure_guidance"] for segment in segments_of(store, guided_id)]
    # segment 0: timeline 0..8, frames 1..7 generated, the video covers 4..13; segment 1 starts at 7,
    # its frames 0-1 are the overlap (kept) and 8 the end image.
    assert [(f["mode"], f["timeline_offset"], f["frames"]) for f in facts] == [
        ("raw", 0, [4, 5, 6, 7]), ("raw", 7, [2, 3, 4, 5, 6])]
    # frame k of segment 1 is the video's frame 7 + k - 4 of 10, spread over its 24 source frames
    assert facts[1]["sources"][0]["source_frames"] == [int((7 + k - 4) * 23 / 10) for k in range(2, 7)]
    assert segments_of(store, guided_id)[0].result_data["ignored_params"] == {}
    assert segments_of(store, guided_id)[0].result_data["phase_seconds"]["structure_guidance"] >= 0
    # the control frames reached the model: the guided segments differ from the unguided ones
    for with_video, without in zip(segments_of(store, guided_id), segments_of(store, plain_id)):
        assert not np.array_equal(read_video(with_video.output_location), read_video(without.output_location))


def test_the_apps_payload_with_a_depth_video_by_url_runs_and_canny_on_a_headless_segment(
        sqlite_store: TaskStore, resources: WorkerResources, structure_video: Path, tmp_path: Path,
        file_server) -> None:  # noqa: F811 (the fixture)
    url = file_server.serve("/structure.mkv", structure_video.read_bytes(), content_type="video/x-matroska")
    images = write_keyframes(tmp_path / "keys", 2, size=(40, 36))
    guidance = {"kind": "vace", "mode": "depth", "strength": 1, "depth_contrast": 1.2,
                "videos": [{"path": url, "start_frame": 0, "end_frame": None, "treatment": "clip"}]}
    row = travel_row(images, travel_guidance=guidance)
    orchestrator_id = sqlite_store.enqueue("travel_orchestrator", row)
    details = row["orchestrator_details"]
    segment_row = headless_segment_row(details, 0, "a9b3f3de-0d1e-4c52-9d7e-5b8a0c1d2e3f")
    segment_row["travel_guidance"] = {**guidance, "mode": "canny", "canny_intensity": 0.5, "_frame_offset": 0,
                                      "depth_contrast": 1}
    segment_id = sqlite_store.enqueue("travel_segment", segment_row)
    run_until_idle(sqlite_store, resources, tmp_path / "outputs")

    job, segment = sqlite_store.get(orchestrator_id), sqlite_store.get(segment_id)
    assert job.status == TaskStatus.COMPLETE, job.error_message
    assert segment.status == TaskStatus.COMPLETE, segment.error_message
    job_segment = segments_of_one(sqlite_store, orchestrator_id)
    assert job_segment.result_data["structure_guidance"]["mode"] == "depth"
    assert job_segment.result_data["structure_guidance"]["frames"] == list(range(1, 8))
    assert segment.result_data["structure_guidance"]["mode"] == "canny"
    assert segment.result_data["ignored_params"] == {}
    assert file_server.hits["/structure.mkv"] == 1  # fetched once on this box, read by every segment


def segments_of_one(store: TaskStore, orchestrator_id: str):
    return next(child for child in store.children(orchestrator_id) if child.params["child_key"] == "segment-0")


def test_a_headless_segment_reads_the_orchestrators_guidance_video_from_its_offset(
        sqlite_store: TaskStore, resources: WorkerResources, tmp_path: Path) -> None:
    """The headless orchestrator annotates the whole journey once, uploads it, and gives each segment
    `_guidance_video_url` and `_frame_offset`; the frames are used as they are."""
    levels = np.arange(30, dtype=np.uint8) * 8
    composite = write_lossless(tmp_path / "guidance.mkv",
                               np.repeat(levels[:, None, None, None], 32 * 32 * 3).reshape(30, 32, 32, 3), 16)
    images = write_keyframes(tmp_path / "keys", 2, size=(40, 36))
    details = travel_row(images)["orchestrator_details"]
    row = headless_segment_row(details, 0, "b9b3f3de-0d1e-4c52-9d7e-5b8a0c1d2e3f")
    row["travel_guidance"] = {"kind": "vace", "mode": "canny", "videos": [{"path": "https://example.com/s.mp4"}],
                              "_guidance_video_url": str(composite), "_frame_offset": 12}
    segment_id = sqlite_store.enqueue("travel_segment", row)
    run_until_idle(sqlite_store, resources, tmp_path / "outputs")
    segment = sqlite_store.get(segment_id)
    assert segment.status == TaskStatus.COMPLETE, segment.error_message
    facts = segment.result_data["structure_guidance"]
    assert facts["frames"] == list(range(1, 8))
    assert facts["sources"] == [{"guidance_video": str(composite), "frame_offset": 12}]


def test_an_orchestrator_checks_the_annotator_weights_and_the_model_before_planning(tmp_path: Path,
                                                                                     structure_video: Path) -> None:
    guidance = Guidance(CANNY, (GuidanceVideo(str(structure_video), 0, 9, field="travel_guidance.videos[0]"),))
    bare = WorkerResources(device="cpu", models_dir=tmp_path)
    with pytest.raises(WeightsMissing) as error:
        check_runnable(guidance, False, MODEL, (64, 48), bare)
    assert error.value.missing == ("scribble/netG_A_latest.pth",)
    with pytest.raises(ValidationError) as refused:
        check_runnable(guidance, True, "tiny_i2v_2_2", (64, 48), bare)
    assert refused.value.field == "travel_guidance" and "image-to-video" in refused.value.rule
    flow = Guidance(FLOW, guidance.videos)
    with pytest.raises(ValidationError, match="at least 128 pixels a side") as small:
        check_runnable(flow, False, MODEL, (160, 112), bare)  # a multiple of 8 already: 112 stays 112
    assert small.value.field == "travel_guidance"
    with pytest.raises(WeightsMissing):  # 160 x 124 pads to 160 x 128: big enough, but RAFT's file is missing
        check_runnable(flow, False, MODEL, (160, 124), bare)


def test_the_payloads_unused_guidance_settings_are_reported_once_prefixed(structure_video: Path,
                                                                         tmp_path: Path) -> None:
    from worker.travel.plan import read_travel

    images = write_keyframes(tmp_path / "keys", 2, size=(40, 36))
    guidance = {"kind": "vace", "mode": "raw", "strength": 0.4,
                "videos": [{"path": str(structure_video), "start_frame": 0, "end_frame": 5},
                           {"path": str(structure_video), "start_frame": 90, "end_frame": 99}]}
    plan, _ = read_travel(travel_row(images, travel_guidance=guidance))
    prefix = "orchestrator_details.travel_guidance."
    assert set(plan.ignored_params) == {f"{prefix}strength", f"{prefix}videos[1]"}
    assert [(v.start_frame, v.end_frame) for v in plan.guidance.videos] == [(0, 5)]


def test_flow_guidance_runs_raft_on_the_structure_video_and_draws_its_motion(
        sqlite_store: TaskStore, resources: WorkerResources, images: list[str], structure_video: Path,
        tmp_path: Path) -> None:
    """Flow (the app's default mode) at the smallest size RAFT takes, 128 x 128, with the tiny models'
    RAFT (its one size, random weights): each generated frame shows the colour-wheel drawing of the
    flow between the two source frames the headless annotator pairs for it."""
    guidance = {"kind": "vace", "mode": "flow", "strength": 1.5,
                "videos": [{"path": str(structure_video), "start_frame": 0, "end_frame": 9}]}
    job = sqlite_store.enqueue("travel_orchestrator", travel(images[:2], prompts=["walk"], resolution="128x128",
                                                                travel_guidance=guidance))
    run_until_idle(sqlite_store, resources, tmp_path / "outputs")
    assert sqlite_store.get(job).status == TaskStatus.COMPLETE, sqlite_store.get(job).error_message
    segment = segments_of_one(sqlite_store, job)
    facts = segment.result_data["structure_guidance"]
    loaded = [int(i * 23 / 9) for i in range(10)]  # 10 frames read for 9 timeline frames
    assert facts["mode"] == "flow" and facts["frames"] == list(range(1, 8))
    assert facts["sources"][0]["source_frames"] == [[loaded[k - 1], loaded[k]] for k in range(1, 8)]
    assert segment.result_data["ignored_params"] == {}  # strength is flow's


def test_the_apps_remade_segment_takes_its_structure_video_at_its_place_in_the_shot(
        sqlite_store: TaskStore, resources: WorkerResources, structure_video: Path, tmp_path: Path) -> None:
    """A lightbox re-make (individual_travel_segment) carries only its pair and lays its structure video
    over exactly the segment, at the segment's frames in the shot (reigh-app submitSegmentTask.ts:
    start_frame = segmentStart, end_frame = segmentEnd); the row and its payload both carry it."""
    from test_row_forms_2026 import individual_row

    images = write_keyframes(tmp_path / "keys", 2, size=(40, 36))
    guidance = {"kind": "vace", "mode": "raw", "strength": 1,
                "videos": [{"path": str(structure_video), "start_frame": 40, "end_frame": 49, "treatment": "adjust"}]}
    row = individual_row(images, 3)
    row["travel_guidance"] = row["orchestrator_details"]["travel_guidance"] = guidance
    task_id = sqlite_store.enqueue("individual_travel_segment", row)
    run_until_idle(sqlite_store, resources, tmp_path / "outputs")
    task = sqlite_store.get(task_id)
    assert task.status == TaskStatus.COMPLETE, task.error_message
    facts = task.result_data["structure_guidance"]
    assert (facts["timeline_offset"], facts["frames"]) == (40, list(range(1, 8)))
    assert task.result_data["ignored_params"] == {}
