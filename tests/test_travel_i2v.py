"""Image-to-video through the worker, on real Postgres and SQLite with the tiny I2V model on the CPU:
generate_video with image_start / image_end, and travel between 3 keyframes chained and with
independent segments (which two workers can claim at once)."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from worker.errors import ValidationError
from worker.store import Claim, TaskStatus, TaskStore
from worker.travel.plan import TravelPlan, plan_travel
from worker.video import probe
from worker_harness import resources, run_until_idle, write_keyframes  # noqa: F401 (resources is a fixture)

MODEL = "tiny_i2v_2_2"
SEGMENT = "travel_segment"


def travel(images: list[str], **fields: object) -> dict:
    """Our param form, sized for the CPU: 2 segments of 9 frames, 64x48, 2 steps without CFG."""
    return {"model": MODEL, "images": images, "prompt": "a paper boat on a river", "resolution": "64x48", "fps": 8,
            "segment_frames": 9, "frame_overlap": 0, "seed": 5, "num_inference_steps": 2, "guidance_scale": 1.0,
            "guidance2_scale": 1.0, **fields}


def children_by_key(store: TaskStore, orchestrator_id: str) -> dict[str, object]:
    return {child.params["child_key"]: child for child in store.children(orchestrator_id)}


def assert_complete_with_planned_video(store: TaskStore, orchestrator_id: str, expected_frames: int) -> None:
    orchestrator = store.get(orchestrator_id)
    assert orchestrator.status == TaskStatus.COMPLETE, orchestrator.error_message
    info = probe(orchestrator.output_location)
    assert (info.frames, info.width, info.height) == (expected_frames, 64, 48)
    assert orchestrator.result_data["frames"] == expected_frames


@pytest.mark.parametrize(("overlap", "expected_frames"), [(0, 17), (2, 16)], ids=["shared_frame", "crossfade_2"])
def test_chained_i2v_travel_continues_each_segment_from_its_predecessor(sqlite_store: TaskStore, resources, tmp_path: Path,
                                                                       overlap: int, expected_frames: int) -> None:
    """Without overlap the segments share one frame, kept once (9 + 9 - 1); with 2 frames of overlap
    segment 1 starts where the overlap starts and the 2 frames are cross-faded (9 + 9 - 2)."""
    params = travel(write_keyframes(tmp_path / "keys", 3), frame_overlap=overlap)
    assert plan_travel(params).expected_frames == (18 if overlap == 0 else expected_frames)  # the model is not known yet
    orchestrator_id = sqlite_store.enqueue("travel_orchestrator", params)

    run_until_idle(sqlite_store, resources, tmp_path / "outputs")

    assert_complete_with_planned_video(sqlite_store, orchestrator_id, expected_frames)
    children = children_by_key(sqlite_store, orchestrator_id)
    assert children["segment-1"].dependant_on == [children["segment-0"].id]
    second = children["segment-1"].result_data
    assert second["kept_frames"] == [0, 8] and second["model"] == MODEL
    assert second["parameters"]["switch_threshold"] == 900.0  # the I2V boundary
    assert second["phase_seconds"]["image_encode"] > 0


def test_independent_i2v_segments_can_be_claimed_by_two_workers_at_once(pg_store: TaskStore, resources, tmp_path: Path) -> None:
    store = pg_store  # the fleet database: two boxes claim with FOR UPDATE SKIP LOCKED
    orchestrator_id = store.enqueue("travel_orchestrator", travel(write_keyframes(tmp_path / "keys", 3),
                                                                 independent_segments=True))
    run_until_idle(store, resources, tmp_path / "outputs", task_types=("travel_orchestrator",))
    children = children_by_key(store, orchestrator_id)
    assert children["segment-0"].dependant_on == [] and children["segment-1"].dependant_on == []

    first = store.claim("box-a", [SEGMENT], None)
    second = store.claim("box-b", [SEGMENT], None)
    assert first is not None and second is not None
    assert {first.params["child_key"], second.params["child_key"]} == {"segment-0", "segment-1"}
    assert store.release(Claim.of(first)) and store.release(Claim.of(second))

    run_until_idle(store, resources, tmp_path / "outputs")

    assert_complete_with_planned_video(store, orchestrator_id, 17)


def test_independent_vace_segments_open_on_their_own_keyframe(sqlite_store: TaskStore, resources, tmp_path: Path) -> None:
    params = travel(write_keyframes(tmp_path / "keys", 3), model="tiny_vace", frame_overlap=2, independent_segments=True)
    orchestrator_id = sqlite_store.enqueue("travel_orchestrator", params)

    run_until_idle(sqlite_store, resources, tmp_path / "outputs")

    assert_complete_with_planned_video(sqlite_store, orchestrator_id, 9 + 9 - 2)  # the 2 frames are cross-faded
    children = children_by_key(sqlite_store, orchestrator_id)
    assert children["segment-1"].dependant_on == []
    assert children["segment-1"].result_data["kept_frames"] == [0, 8]  # its start keyframe, not 2 frames of segment 0


def test_chained_segments_cannot_be_claimed_together(sqlite_store: TaskStore, resources, tmp_path: Path) -> None:
    orchestrator_id = sqlite_store.enqueue("travel_orchestrator", travel(write_keyframes(tmp_path / "keys", 3)))
    run_until_idle(sqlite_store, resources, tmp_path / "outputs", task_types=("travel_orchestrator",))

    first = sqlite_store.claim("box-a", [SEGMENT], None)
    assert first is not None and first.params["child_key"] == "segment-0"
    assert sqlite_store.claim("box-b", [SEGMENT], None) is None
    assert sqlite_store.release(Claim.of(first))
    assert children_by_key(sqlite_store, orchestrator_id)["segment-1"].status == TaskStatus.QUEUED


def test_a_headless_i2v_payload_runs_as_independent_segments_as_the_headless_orchestrator_does(
        sqlite_store: TaskStore, resources, tmp_path: Path) -> None:
    images = write_keyframes(tmp_path / "keys", 3)
    payload = {"orchestrator_details": {
        "model_name": MODEL, "model_type": "i2v", "chain_segments": True, "input_image_paths_resolved": images,
        "base_prompts_expanded": ["a", "b"], "parsed_resolution_wh": "64x48", "fps_helpers": 8,
        "segment_frames_expanded": [9, 9], "frame_overlap_expanded": [4, 4], "seed_base": 3, "num_inference_steps": 2,
    }}
    orchestrator_id = sqlite_store.enqueue("travel_orchestrator", payload)

    run_until_idle(sqlite_store, resources, tmp_path / "outputs")

    assert_complete_with_planned_video(sqlite_store, orchestrator_id, 9 + 9 - 4)
    assert all(child.dependant_on == [] for key, child in children_by_key(sqlite_store, orchestrator_id).items()
               if key.startswith("segment"))


def test_generate_video_takes_a_start_and_an_end_image(sqlite_store: TaskStore, resources, tmp_path: Path) -> None:
    start, end = write_keyframes(tmp_path / "keys", 2)
    task_id = sqlite_store.enqueue("generate_video", {
        "model": MODEL, "prompt": "a lantern", "resolution": "64x48", "video_length": 9, "num_inference_steps": 2,
        "image_start": start, "image_end": end})

    run_until_idle(sqlite_store, resources, tmp_path / "outputs")

    task = sqlite_store.get(task_id)
    assert task.status == TaskStatus.COMPLETE, task.error_message
    assert probe(task.output_location).frames == 9
    assert task.result_data["parameters"]["guidance_scale"] == 3.5


def test_bad_i2v_inputs_fail_naming_the_field(sqlite_store: TaskStore, resources, tmp_path: Path) -> None:
    start, _ = write_keyframes(tmp_path / "keys", 2)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG not really")
    base = {"prompt": "x", "resolution": "64x48", "video_length": 9, "num_inference_steps": 1}
    cases = {
        "image_end": {**base, "model": "tiny_t2v_2_2", "image_end": start},
        "image_start": {**base, "model": MODEL},
        "image_start:": {**base, "model": MODEL, "image_start": str(broken)},
        "resolution": {**base, "model": MODEL, "image_start": start, "resolution": "60x48"},
    }
    ids = {field: sqlite_store.enqueue("generate_video", params) for field, params in cases.items()}
    travel_id = sqlite_store.enqueue("travel_orchestrator", travel(write_keyframes(tmp_path / "more", 3), model="tiny_t2v"))

    run_until_idle(sqlite_store, resources, tmp_path / "outputs")

    for field, task_id in ids.items():
        task = sqlite_store.get(task_id)
        assert task.status == TaskStatus.FAILED and f"{field.rstrip(':')}:" in task.error_message, (field, task.error_message)
    failed = sqlite_store.get(travel_id)
    assert failed.status == TaskStatus.FAILED and "model:" in failed.error_message


# ---- the plan: segment mode and shared frames (no engine) ------------------------------------------

@pytest.mark.parametrize(("fields", "independent"), [
    ({}, False), ({"independent_segments": True}, True), ({"chain_segments": False}, True),
    ({"independent_segments": False, "chain_segments": True}, False),
])
def test_segment_mode_flags(tmp_path: Path, fields: dict, independent: bool) -> None:
    plan = plan_travel(travel(write_keyframes(tmp_path, 3), **fields))
    assert plan.independent is independent
    assert TravelPlan.from_params(plan.to_params()) == plan


@pytest.mark.parametrize(("fields", "field"), [
    ({"independent_segments": "yes"}, "independent_segments"),
    ({"chain_segments": 0}, "chain_segments"),
    ({"independent_segments": True, "chain_segments": True}, "chain_segments"),
])
def test_bad_segment_mode_flags_name_their_field(tmp_path: Path, fields: dict, field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        plan_travel(travel(write_keyframes(tmp_path, 3), **fields))
    assert caught.value.field == field


def test_headless_svi_chaining_is_refused_naming_the_field(tmp_path: Path) -> None:
    details = {"model_name": MODEL, "model_type": "i2v", "use_svi": True, "input_image_paths_resolved":
               write_keyframes(tmp_path, 2), "base_prompt": "a", "parsed_resolution_wh": "64x48"}
    with pytest.raises(ValidationError) as caught:
        plan_travel({"orchestrator_details": details})
    assert caught.value.field == "orchestrator_details.use_svi"


def test_image_to_video_transitions_without_overlap_keep_their_shared_frame_once(tmp_path: Path) -> None:
    plan = plan_travel(travel(write_keyframes(tmp_path, 4), segment_frames=[9, 13, 9], frame_overlap=[0, 4]))
    assert (plan.shared_frames, plan.expected_frames) == ([0, 0], 9 + 13 + 9 - 4)
    i2v = replace(plan, image_to_video=True)
    assert (i2v.shared_frames, i2v.expected_frames) == ([1, 0], 9 + 13 + 9 - 4 - 1)
    assert TravelPlan.from_params(i2v.to_params()) == i2v
