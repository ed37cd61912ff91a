"""Travel between images end to end through the table, on real Postgres and SQLite with the tiny VACE
model on the CPU: orchestrator -> chained segments -> cross-faded stitch -> one mp4."""
from __future__ import annotations

import os
import signal
from pathlib import Path

import sqlalchemy as sa

from conftest import FAST_WORKER_FLAGS, wait_for, wait_for_status
from worker.store import TaskStatus, TaskStore
from worker.travel.plan import plan_travel
from worker.video import probe
from worker_harness import resources, run_until_idle, write_keyframes  # noqa: F401 (resources is a fixture)

MODEL = "tiny_vace"


def travel(images: list[str], **fields: object) -> dict:
    """Our param form, sized for the CPU: 2 segments of 9 frames sharing 2, 64x48, 2 steps."""
    return {"model": MODEL, "images": images, "prompts": ["walk into the forest", "climb the hill"],
            "resolution": "64x48", "fps": 8, "segment_frames": 9, "frame_overlap": 2, "seed": 11,
            "num_inference_steps": 2, **fields}


def headless(images: list[str]) -> dict:
    """The same job in the headless Wan2GP form."""
    return {"orchestrator_details": {
        "model_name": MODEL, "input_image_paths_resolved": images, "base_prompts_expanded": ["a", "b"],
        "parsed_resolution_wh": "64x48", "fps_helpers": 8, "segment_frames_expanded": [9, 9],
        "frame_overlap_expanded": [2, 2], "seed_base": 11, "num_inference_steps": 2,
        "num_new_segments_to_generate": 2,
    }}


def children_by_key(store: TaskStore, orchestrator_id: str) -> dict[str, object]:
    return {child.params["child_key"]: child for child in store.children(orchestrator_id)}


# ---- the job ---------------------------------------------------------------------------------------------

def test_three_images_become_two_chained_segments_and_one_video_of_the_planned_shape(store: TaskStore, resources,
                                                                                     tmp_path: Path) -> None:
    params = travel(write_keyframes(tmp_path / "keys", 3))
    plan = plan_travel(params)
    orchestrator_id = store.enqueue("travel_orchestrator", params)

    run_until_idle(store, resources, tmp_path / "outputs")

    orchestrator = store.get(orchestrator_id)
    assert orchestrator.status == TaskStatus.COMPLETE, orchestrator.error_message
    info = probe(orchestrator.output_location)
    assert (info.frames, info.width, info.height, info.fps) == (plan.expected_frames, plan.width, plan.height, plan.fps)
    assert plan.expected_frames == 16 and orchestrator.result_data["frames"] == 16
    assert orchestrator.result_data["crossfade"] == {"curve": "smoothstep"}
    assert Path(orchestrator.result_data["thumbnail"]).is_file()
    assert Path(orchestrator.output_location).is_relative_to((tmp_path / "outputs").resolve())
    children = children_by_key(store, orchestrator_id)
    assert sorted(children) == ["segment-0", "segment-1", "stitch"]
    assert all(child.parent_task_id == orchestrator_id for child in children.values())
    assert all(child.status == TaskStatus.COMPLETE for child in children.values())
    assert children["segment-1"].dependant_on == [children["segment-0"].id]
    assert sorted(children["stitch"].dependant_on) == sorted([children["segment-0"].id, children["segment-1"].id])
    assert children["segment-0"].params["model"] == MODEL  # what the claim's model affinity reads
    assert children["stitch"].output_location == orchestrator.output_location


def test_with_input_dirs_a_job_reads_its_keyframes_there_and_one_naming_a_file_elsewhere_fails_at_once(
        sqlite_store: TaskStore, resources, tmp_path: Path) -> None:
    """--input-dirs: the keyframes in the folder it names are read, and the segments' and the stitch's
    videos in the worker's own output folder; a keyframe elsewhere (here through a link planted in the
    folder) fails the job before any child is written, naming the field."""
    inputs = tmp_path / "inputs"
    images = write_keyframes(inputs / "keys", 3)
    elsewhere = write_keyframes(tmp_path / "elsewhere", 1)[0]
    (inputs / "planted.png").symlink_to(elsewhere)
    good = sqlite_store.enqueue("travel_orchestrator", travel(images))
    bad = sqlite_store.enqueue("travel_orchestrator", travel([images[0], str(inputs / "planted.png"), images[2]]))

    run_until_idle(sqlite_store, resources, tmp_path / "outputs", input_dirs=(inputs,))

    assert sqlite_store.get(good).status == TaskStatus.COMPLETE, sqlite_store.get(good).error_message
    refused = sqlite_store.get(bad)
    assert refused.status == TaskStatus.FAILED and sqlite_store.children(bad) == []
    assert refused.error_message.startswith(f"ValidationError: images[1]: '{inputs / 'planted.png'}' is outside the "
                                            "folders this worker reads local inputs from")


def test_result_data_reports_segments_timings_and_resolved_parameters(sqlite_store: TaskStore, resources, tmp_path: Path) -> None:
    orchestrator_id = sqlite_store.enqueue("travel_orchestrator", travel(write_keyframes(tmp_path / "keys", 3)))

    run_until_idle(sqlite_store, resources, tmp_path / "outputs")

    job = sqlite_store.get(orchestrator_id).result_data
    assert (job["model"], job["fps"], job["resolution"]) == (MODEL, 8, "64x48")
    assert [segment["frames"] for segment in job["segments"]] == [9, 9]
    assert [segment["overlap"] for segment in job["segments"]] == [0, 2]
    assert all(Path(segment["output_location"]).is_file() for segment in job["segments"])
    assert {"model_load", "text_encode", "vace_encode", "denoise_main", "decode", "video_encode", "stitch"} <= set(job["phase_seconds"])
    assert job["total_seconds"] > 0
    segment = children_by_key(sqlite_store, orchestrator_id)["segment-1"].result_data
    assert segment["seed"] == 12  # seed + segment index
    assert segment["parameters"]["num_inference_steps"] == 2
    assert segment["parameter_sources"]["num_inference_steps"] == "request"
    assert segment["parameter_sources"]["flow_shift"] in ("definition", "family")
    assert segment["kept_frames"] == [0, 1, 8]  # the two overlap frames and the end image
    assert segment["phase_seconds"]["queue_wait"] >= 0


def test_the_headless_wan2gp_form_runs_the_same_job_by_the_headless_frame_rule(sqlite_store: TaskStore, resources,
                                                                              tmp_path: Path) -> None:
    """The chained second segment generates its 9 frames + the 2 it shares, rounded up to 13 (4n+1) as the
    headless orchestrator does (banodoco/reigh-worker travel/orchestrator.py, _quantize_frames_up)."""
    images = write_keyframes(tmp_path / "keys", 3)
    orchestrator_id = sqlite_store.enqueue("travel_orchestrator", headless(images))

    run_until_idle(sqlite_store, resources, tmp_path / "outputs")

    orchestrator = sqlite_store.get(orchestrator_id)
    assert orchestrator.status == TaskStatus.COMPLETE, orchestrator.error_message
    info = probe(orchestrator.output_location)
    assert (info.frames, info.width, info.height, info.fps) == (9 + 13 - 2, 64, 48, 8)
    assert orchestrator.result_data["crossfade"] == {"curve": "cosine", "sharpen": 0.3}  # the headless stitch's
    assert sorted(children_by_key(sqlite_store, orchestrator_id)) == ["segment-0", "segment-1", "stitch"]


# ---- bad input ---------------------------------------------------------------------------------------------

def bad_inputs(tmp_path: Path) -> dict[str, tuple[dict, str]]:
    """Each bad travel job of issue 5, with the field its error must name."""
    images = write_keyframes(tmp_path / "keys", 3)
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("not a picture")
    return {
        "too many keyframes": (travel(images[:1] * 201), "images"),
        "no images": (travel([]), "images"),
        "missing image": (travel([images[0], str(tmp_path / "nope.png"), images[2]]), "images[1]"),
        "not an image": (travel([images[0], str(not_an_image), images[2]]), "images[1]"),
        "prompt count": (travel(images, prompts=["a", "b", "c"]), "prompts"),
        "overlap >= frames": (travel(images, frame_overlap=10), "frame_overlap[0]"),
        "negative frames": (travel(images, segment_frames=-9), "segment_frames[0]"),
        "absurd frames": (travel(images, segment_frames=100_000), "segment_frames[0]"),
        "resolution not x16": (travel(images, resolution="70x48"), "resolution"),
        "resolution not WxH": (travel(images, resolution="wide"), "resolution"),
        "unknown model": (travel(images, model="wan9_imaginary"), "model"),
        "unknown preset": (travel(images, preset="nope_preset"), "preset"),
        "model without VACE": (travel(images, model="tiny_t2v"), "model"),
        "bad sampler": (travel(images, sample_solver="magic"), "sample_solver"),
        "unknown LoRA": (travel(images, lora_names=["no_such_lora"]), "lora_names"),
        "multiplier phases": (travel(images, lora_names=["tiny_kohya"], lora_multipliers=["1;0;0"]), "lora_multipliers"),
        "headless unknown model": ({"orchestrator_details": {**headless(images)["orchestrator_details"],
                                                             "model_name": "nope"}}, "orchestrator_details.model_name (model)"),
    }


def test_each_bad_input_fails_at_once_naming_its_field_and_the_worker_carries_on(store: TaskStore, resources, tmp_path: Path) -> None:
    cases = {name: (store.enqueue("travel_orchestrator", params), field) for name, (params, field) in bad_inputs(tmp_path).items()}
    probe_id = store.enqueue("health_check", {})

    run_until_idle(store, resources, tmp_path / "outputs")

    for name, (task_id, field) in cases.items():
        task = store.get(task_id)
        assert task.status == TaskStatus.FAILED, name
        assert task.attempts == 1, name
        assert f"{field}:" in task.error_message, (name, task.error_message)
        assert store.children(task_id) == [], name
    assert store.get(probe_id).status == TaskStatus.COMPLETE


# ---- failure, cancellation, crashes ------------------------------------------------------------------------

def test_a_failed_segment_fails_the_stitch_and_the_orchestrator_with_its_error(store: TaskStore, resources, tmp_path: Path) -> None:
    images = write_keyframes(tmp_path / "keys", 3)
    orchestrator_id = store.enqueue("travel_orchestrator", travel(images))
    run_until_idle(store, resources, tmp_path / "outputs", task_types=("travel_orchestrator",))
    os.remove(images[0])  # segment 0 can no longer read its start image

    run_until_idle(store, resources, tmp_path / "outputs")

    children = children_by_key(store, orchestrator_id)
    segment_error = children["segment-0"].error_message
    assert children["segment-0"].status == TaskStatus.FAILED and "images[0]" in segment_error
    for key in ("segment-1", "stitch"):
        assert children[key].status == TaskStatus.FAILED and segment_error in children[key].error_message
    orchestrator = store.get(orchestrator_id)
    assert orchestrator.status == TaskStatus.FAILED
    assert segment_error in orchestrator.error_message


def test_cancelling_the_orchestrator_cancels_its_children(store: TaskStore, resources, tmp_path: Path) -> None:
    orchestrator_id = store.enqueue("travel_orchestrator", travel(write_keyframes(tmp_path / "keys", 3)))
    run_until_idle(store, resources, tmp_path / "outputs", task_types=("travel_orchestrator",))
    assert len(store.children(orchestrator_id)) == 3

    store.cancel(orchestrator_id)

    assert store.get(orchestrator_id).status == TaskStatus.CANCELLED
    assert {child.status for child in store.children(orchestrator_id)} == {TaskStatus.CANCELLED}


def test_an_orchestrator_run_again_creates_no_second_set_of_children(store: TaskStore, resources, tmp_path: Path) -> None:
    orchestrator_id = store.enqueue("travel_orchestrator", travel(write_keyframes(tmp_path / "keys", 3)))
    run_until_idle(store, resources, tmp_path / "outputs", task_types=("travel_orchestrator",))
    first = sorted(child.id for child in store.children(orchestrator_id))
    with store.db.engine.begin() as conn:  # an operator puts the parked orchestrator back in the queue
        conn.execute(sa.text("UPDATE tasks SET status = 'Queued', worker_id = NULL WHERE id = :id"), {"id": orchestrator_id})

    run_until_idle(store, resources, tmp_path / "outputs", task_types=("travel_orchestrator",))

    assert store.get(orchestrator_id).attempts == 2
    assert sorted(child.id for child in store.children(orchestrator_id)) == first


def test_a_worker_killed_mid_segment_still_ends_in_one_complete_video(pg_store: TaskStore, start_worker, tiny_models_dir: Path,
                                                                       tmp_path: Path) -> None:
    params = travel(write_keyframes(tmp_path / "keys", 3), num_inference_steps=6)
    orchestrator_id = pg_store.enqueue("travel_orchestrator", params)
    url = pg_store.db.engine.url.render_as_string(hide_password=False)
    flags = ("--models-dir", str(tiny_models_dir), "--device", "cpu", *FAST_WORKER_FLAGS)
    doomed = start_worker(url, *flags, worker_id="doomed")

    def segment_generating() -> bool:
        """Segment 0 inside its generation. Denoising alone lasts ~0.1 s on the tiny model, which a poll
        under load can miss, so the encode and decode around it count too."""
        children = children_by_key(pg_store, orchestrator_id)
        segment = children.get("segment-0")
        if segment is None or segment.status != TaskStatus.IN_PROGRESS:
            return False
        return (segment.progress or {}).get("phase") in ("vace_encode", "denoise", "decode")

    wait_for(segment_generating, timeout_seconds=120, what="segment 0 to be generating")
    doomed.send_signal(signal.SIGKILL)
    doomed.wait()
    start_worker(url, *flags, worker_id="survivor")

    orchestrator = wait_for_status(pg_store, orchestrator_id, TaskStatus.COMPLETE, timeout_seconds=180)
    children = children_by_key(pg_store, orchestrator_id)
    assert sorted(children) == ["segment-0", "segment-1", "stitch"]  # no second set of children
    assert children["segment-0"].attempts == 2 and children["segment-0"].worker_id == "survivor"
    assert probe(orchestrator.output_location).frames == plan_travel(params).expected_frames
