"""Stitch rows the Reigh app writes (a crossfade join of clips), and child rows of a travel job that the
headless Wan2GP / Reigh orchestrator wrote (banodoco/Reigh-Worker
source/task_handlers/travel/orchestrator.py: segment_payload and stitch_payload), run by this worker,
so a fleet that mixes headless workers and ours finishes the job whichever box claims which row.

The headless orchestrator names the run in each child's params (orchestrator_run_id,
orchestrator_task_id_ref), not in parent_task_id; its stitch finds the run's finished segments by
those (Reigh-Worker source/core/db/task_dependencies.py: get_completed_segment_outputs_for_stitch)."""
from __future__ import annotations

import re
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from worker.resources import WorkerResources
from worker.store import Claim, TaskStatus, TaskStore
from fleet_servers import file_server  # noqa: F401 (fixture)
from worker.video import VideoWriter, probe, read_video, run_ffmpeg
from worker_harness import resources, run_until_idle, write_keyframes  # noqa: F401 (fixture)

RUN_ID = "20261201112233445"


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    return write_keyframes(tmp_path_factory.mktemp("keys"), 3, size=(40, 36))


def payload(images: list[str], **changes: Any) -> dict[str, Any]:
    """The orchestrator_details a Reigh travel job carries (banodoco/Reigh src/shared/lib/tasks/
    travelBetweenImages.ts), chained VACE segments of 9 frames overlapping by 4."""
    details = {
        "run_id": RUN_ID, "input_image_paths_resolved": images, "num_new_segments_to_generate": len(images) - 1,
        "base_prompts_expanded": ["a walk"] * (len(images) - 1), "negative_prompts_expanded": [""] * (len(images) - 1),
        "segment_frames_expanded": [9] * (len(images) - 1), "frame_overlap_expanded": [4] * (len(images) - 1),
        "parsed_resolution_wh": "32x32", "model_name": "tiny_vace_2_2", "model_type": "vace", "seed_base": 7,
        "steps": 2, "fps_helpers": 16, "chain_segments": True, "independent_segments": False, "use_svi": False,
    }  # fmt: skip
    details.update(changes)
    return details


def segment_row(details: dict[str, Any], index: int, orchestrator_id: str, **changes: Any) -> dict[str, Any]:
    """A travel_segment row as the headless orchestrator writes it (segment_payload): segment 1 on
    generates its frames plus the overlap with its predecessor (segment_frames_target_with_context)."""
    overlap = 0 if index == 0 else details["frame_overlap_expanded"][index - 1]
    row = {
        "orchestrator_task_id_ref": orchestrator_id, "orchestrator_run_id": RUN_ID, "project_id": "project-1",
        "parent_generation_id": None, "segment_index": index, "is_first_segment": index == 0,
        "is_last_segment": index == details["num_new_segments_to_generate"] - 1, "child_order": index,
        "is_single_item": False, "current_run_base_output_dir": "/outputs/travel_run_x",
        "base_prompt": details["base_prompts_expanded"][index], "negative_prompt": "",
        "segment_frames_target": details["segment_frames_expanded"][index] + overlap,
        "frame_overlap_from_previous": overlap, "frame_overlap_with_next": details["frame_overlap_expanded"][index],
        "parsed_resolution_wh": details["parsed_resolution_wh"], "model_name": details["model_name"],
        "seed_to_use": details["seed_base"], "fps_helpers": 16, "debug_mode_enabled": False,
        "orchestrator_details": details, "use_svi": False,
    }  # fmt: skip
    row.update(changes)
    return row


def stitch_row(details: dict[str, Any], orchestrator_id: str, **changes: Any) -> dict[str, Any]:
    """A travel_stitch row as the headless orchestrator writes it (stitch_payload)."""
    row = {
        "orchestrator_task_id_ref": orchestrator_id, "orchestrator_run_id": RUN_ID, "project_id": "project-1",
        "parent_generation_id": None, "num_total_segments_generated": details["num_new_segments_to_generate"],
        "current_run_base_output_dir": "/outputs/travel_run_x",
        "frame_overlap_settings_expanded": details["frame_overlap_expanded"], "crossfade_sharp_amt": 0.3,
        "parsed_resolution_wh": details["parsed_resolution_wh"], "fps_final_video": 16, "upscale_factor": 0.0,
        "upscale_model_name": None, "seed_for_upscale": 5007, "debug_mode_enabled": False,
        "skip_cleanup_enabled": False, "initial_continued_video_path": None,
        "final_stitched_output_path": f"/outputs/travel_final_stitched_{RUN_ID}.mp4",
        "poll_interval_from_orchestrator": 15, "poll_timeout_from_orchestrator": 1800,
        "orchestrator_details": details, "use_svi": False,
    }  # fmt: skip
    row.update(changes)
    return row


def enqueue_run(store: TaskStore, details: dict[str, Any], orchestrator_id: str,
                segment_changes: dict[str, Any] | None = None) -> tuple[list[str], str]:
    """The children as the headless orchestrator enqueues them: each segment depends on the one before,
    the stitch on the last segment."""
    segments: list[str] = []
    for index in range(details["num_new_segments_to_generate"]):
        row = segment_row(details, index, orchestrator_id, **(segment_changes or {}))
        segments.append(store.enqueue("travel_segment", row, dependant_on=segments[-1:]))
    stitch = store.enqueue("travel_stitch", stitch_row(details, orchestrator_id), dependant_on=segments[-1:])
    return segments, stitch


def test_a_headless_runs_segments_and_stitch_all_run_here(store: TaskStore, resources: WorkerResources,
                                                          images: list[str], tmp_path: Path) -> None:
    details = payload(images)
    segments, stitch_id = enqueue_run(store, details, str(uuid.uuid4()))
    # Another orchestrator's run under the same run id (the headless run ids are timestamps).
    other_run = enqueue_run(store, payload(images[:2]), str(uuid.uuid4()))
    run_until_idle(store, resources, tmp_path / "out")

    stitch = store.get(stitch_id)
    assert stitch.status == TaskStatus.COMPLETE, stitch.error_message
    made = [store.get(task_id) for task_id in segments]
    assert [task.result_data["frames"] for task in made] == [9, 13]
    assert probe(stitch.output_location).frames == stitch.result_data["frames"] == 9 + 13 - 4
    assert stitch.result_data["segments"] == [
        {"task_id": task.id, "output_location": task.output_location, "frames": task.result_data["frames"],
         "overlap": overlap, "seed": task.result_data["seed"], "phase_seconds": task.result_data["phase_seconds"]}
        for task, overlap in zip(made, [0, 4])]
    assert stitch.result_data["overlap_source"] == "frame_overlap_settings_expanded"
    assert stitch.result_data["orchestrator_run_id"] == RUN_ID
    # The rest of the row is bookkeeping (paths on the headless box, its polling) or neutral (no upscale).
    assert stitch.result_data["ignored_params"] == {}
    assert stitch.result_data["crossfade"] == {"curve": "cosine", "sharpen": 0.3}  # the headless stitch's seams
    # The other run's stitch found its own segment, not this run's.
    assert store.get(other_run[1]).result_data["segments"][0]["task_id"] == other_run[0][0]


def test_a_stitch_here_takes_the_newest_of_segments_another_worker_made(
        store: TaskStore, resources: WorkerResources, images: list[str], tmp_path: Path) -> None:
    """Segments a headless worker finished (its own result_data, its own files); segment 0 was made
    twice (the headless orchestrator retried it) and the newer one is stitched."""
    details = payload(images[:3], frame_overlap_expanded=[2, 2])
    orchestrator_id = str(uuid.uuid4())
    shades = {"stale": 200, "first": 40, "second": 120}
    for name, index, frames in (("stale", 0, 9), ("first", 0, 9), ("second", 1, 11)):
        path = tmp_path / f"{name}.mp4"
        with VideoWriter(path, 16, 32, 32) as writer:
            writer.write(np.full((frames, 32, 32, 3), shades[name], np.uint8))
        row = segment_row(details, index, orchestrator_id)
        task_id = store.enqueue("travel_segment", row, task_id=str(uuid.uuid4()))
        claimed = store.claim("headless-box", ["travel_segment"], None)
        assert claimed is not None and claimed.id == task_id
        assert store.complete(Claim.of(claimed), str(path), {"note": "written by a headless worker"})
    stitch_id = store.enqueue("travel_stitch", stitch_row(details, orchestrator_id))
    run_until_idle(store, resources, tmp_path / "out", task_types=("travel_stitch",))

    stitch = store.get(stitch_id)
    assert stitch.status == TaskStatus.COMPLETE, stitch.error_message
    video = read_video(stitch.output_location).astype(int)
    assert len(video) == 9 + 11 - 2
    assert abs(video[0].mean() - shades["first"]) < 4 and abs(video[-1].mean() - shades["second"]) < 4
    assert [segment["frames"] for segment in stitch.result_data["segments"]] == [None, None]


def test_a_segment_without_the_payload_reads_it_from_its_orchestrator_row(
        sqlite_store: TaskStore, resources: WorkerResources, images: list[str], tmp_path: Path) -> None:
    """Reigh-Worker task_registry.py (_resolve_segment_context): a segment row without
    orchestrator_details fetches them from the orchestrator row its orchestrator_task_id_ref names.
    That row is held by a headless worker, so this worker runs only the children."""
    details = payload(images[:2])
    orchestrator_id = sqlite_store.enqueue("travel_orchestrator", {"orchestrator_details": details})
    assert sqlite_store.claim("headless-box", ["travel_orchestrator"], None).id == orchestrator_id
    row = segment_row(details, 0, orchestrator_id)
    del row["orchestrator_details"]
    segment_id = sqlite_store.enqueue("travel_segment", row)
    stitch = stitch_row(details, orchestrator_id)
    stitch["full_orchestrator_payload"] = stitch.pop("orchestrator_details")  # the older name
    stitch_id = sqlite_store.enqueue("travel_stitch", stitch, dependant_on=[segment_id])
    run_until_idle(sqlite_store, resources, tmp_path / "out", task_types=("travel_segment", "travel_stitch"))

    segment, stitched = sqlite_store.get(segment_id), sqlite_store.get(stitch_id)
    assert segment.status == stitched.status == TaskStatus.COMPLETE, (segment.error_message, stitched.error_message)
    assert stitched.result_data["frames"] == segment.result_data["frames"] == 9
    assert sqlite_store.get(orchestrator_id).status == TaskStatus.IN_PROGRESS  # the headless worker's to end


@pytest.mark.parametrize(("changes", "message"), [
    ({"orchestrator_task_id_ref": None}, "orchestrator_task_id_ref: is required"),
    ({"num_total_segments_generated": 3}, "num_total_segments_generated: says 3 segments; the payload in "
                                          "orchestrator_details plans 2"),
    ({"frame_overlap_settings_expanded": ["x", 4]}, "frame_overlap_settings_expanded[0]"),
    ({"frame_overlap_settings_expanded": []}, "frame_overlap_settings_expanded: must list at least 1 overlaps"),
])  # fmt: skip
def test_a_bad_headless_stitch_row_fails_naming_its_field(sqlite_store: TaskStore, resources: WorkerResources,
                                                          images: list[str], tmp_path: Path, changes: dict[str, Any],
                                                          message: str) -> None:
    details = payload(images[:3])
    stitch_id = sqlite_store.enqueue("travel_stitch", stitch_row(details, str(uuid.uuid4()), **changes))
    run_until_idle(sqlite_store, resources, tmp_path / "out", task_types=("travel_stitch",))
    task = sqlite_store.get(stitch_id)
    assert task.status == TaskStatus.FAILED and message in task.error_message, task.error_message


def test_a_stitch_whose_run_misses_a_segment_names_it(sqlite_store: TaskStore, resources: WorkerResources,
                                                      images: list[str], tmp_path: Path) -> None:
    details = payload(images)
    orchestrator_id = str(uuid.uuid4())
    segments, stitch_id = enqueue_run(sqlite_store, details, orchestrator_id)
    sqlite_store.cancel(segments[1])  # cancelling a segment ends its dependants; the stitch is re-queued by hand
    run_until_idle(sqlite_store, resources, tmp_path / "out", task_types=("travel_segment",))
    lone_stitch = sqlite_store.enqueue("travel_stitch", stitch_row(details, orchestrator_id))
    run_until_idle(sqlite_store, resources, tmp_path / "out", task_types=("travel_stitch",))
    task = sqlite_store.get(lone_stitch)
    assert task.status == TaskStatus.FAILED
    assert task.error_message.endswith(f"orchestrator_run_id: run {RUN_ID!r} of orchestrator {orchestrator_id} has no "
                                  "finished travel_segment row for segment_index [1] (of 2)")
    assert sqlite_store.get(stitch_id).status == TaskStatus.CANCELLED


# ---- the Reigh app's crossfade join -------------------------------------------------------------------------

def clip(path: Path, frames: int, shade: int, width: int = 32, height: int = 32) -> Path:
    with VideoWriter(path, 16, width, height) as writer:
        writer.write(np.full((frames, height, width, 3), shade, np.uint8))
    return path


def join_row(clips: list[str], overlaps: list[int], **changes: Any) -> dict[str, Any]:
    """A travel_stitch row as banodoco/reigh-app writes a crossfade join
    (supabase/functions/create-task/resolvers/crossfadeJoin.ts, frontend-created join)."""
    payload = {"run_id": "20261201120000000", "shot_id": "shot-1", "parent_generation_id": "gen-1", "clip_urls": clips,
               "frame_overlap_settings_expanded": overlaps, "tool_type": "join-clips"}
    row = {"shot_id": "shot-1", "parent_generation_id": "gen-1", "clip_urls": clips,
           "frame_overlap_settings_expanded": overlaps, "full_orchestrator_payload": payload,
           "orchestration_contract": {"contract_version": 3, "task_family": "join_clips", "run_id": payload["run_id"],
                                      "parent_generation_id": "gen-1", "shot_id": "shot-1",
                                      "generation_routing": "variant_parent"},
           "tool_type": "join-clips"}
    row.update(changes)
    return row


def test_the_apps_crossfade_join_stitches_its_clips_under_its_audio(
        sqlite_store: TaskStore, resources: WorkerResources, tmp_path: Path, file_server) -> None:
    served = [file_server.serve(f"/clips/{i}.mp4", clip(tmp_path / f"{i}.mp4", 9, shade).read_bytes())
              for i, shade in enumerate((40, 200))]
    local = str(clip(tmp_path / "third.mp4", 7, 120))
    sound = tmp_path / "sound.wav"
    run_ffmpeg(["-f", "lavfi", "-i", "sine=frequency=440:duration=5", str(sound)], check=True)
    audio = file_server.serve("/audio/sound.wav", sound.read_bytes())
    task_id = sqlite_store.enqueue("travel_stitch", join_row([*served, local], [2, 3], audio_url=audio))
    run_until_idle(sqlite_store, resources, tmp_path / "out", task_types=("travel_stitch",), cache_dir=tmp_path / "cache")

    task = sqlite_store.get(task_id)
    assert task.status == TaskStatus.COMPLETE, task.error_message
    video = read_video(task.output_location).astype(int)
    assert len(video) == task.result_data["frames"] == 9 + 9 + 7 - 2 - 3
    assert abs(video[0].mean() - 40) < 4 and abs(video[9].mean() - 200) < 4 and abs(video[-1].mean() - 120) < 4
    header = run_ffmpeg(["-i", task.output_location])
    minutes, seconds = re.search(r"Duration: 00:(\d\d):(\d\d\.\d\d)", header).groups()
    assert "Audio: aac" in header, header
    assert abs(60 * int(minutes) + float(seconds) - 21 / 16) < 0.1, header  # the 5 s sound cut at the video's end
    assert task.result_data["fps"] == 16 and task.result_data["overlaps"] == [2, 3]
    assert task.result_data["crossfade"] == {"curve": "cosine", "sharpen": 0.3}
    assert task.result_data["ignored_params"] == {}


def test_clips_of_other_sizes_are_stretched_to_the_first_ones(sqlite_store: TaskStore, resources: WorkerResources,
                                                               tmp_path: Path) -> None:
    """As the headless stitch does (every frame resized to the first clip's size); result_data names them."""
    clips = [str(clip(tmp_path / "a.mp4", 9, 40)), str(clip(tmp_path / "b.mp4", 9, 200, 64, 16)),
             str(clip(tmp_path / "c.mp4", 9, 120, 32, 32))]
    task_id = sqlite_store.enqueue("travel_stitch", join_row(clips, [2, 2]))
    run_until_idle(sqlite_store, resources, tmp_path / "out", task_types=("travel_stitch",))
    task = sqlite_store.get(task_id)
    assert task.status == TaskStatus.COMPLETE, task.error_message
    video = read_video(task.output_location).astype(int)
    assert video.shape == (9 * 3 - 4, 32, 32, 3)
    assert (task.result_data["width"], task.result_data["height"], task.result_data["scaled_videos"]) == (32, 32, [1])
    assert abs(video[10].mean() - 200) < 4 and abs(video[-1].mean() - 120) < 4


@pytest.mark.parametrize(("changes", "message"), [
    ({"clip_urls": ["/one.mp4"]}, "clip_urls: must name at least two clips to join, got 1"),
    ({"clip_urls": ["FIRST", "NOT_VIDEO"]}, "clip_urls[1]: not a readable video"),
    ({"frame_overlap_settings_expanded": [0]}, "frame_overlap_settings_expanded: overlaps must be >= 1, got [0]"),
    ({"frame_overlap_settings_expanded": [2, 2]}, "frame_overlap_settings_expanded: must list exactly 1 overlaps"),
    ({"clip_urls": ["/nowhere/a.mp4", "/nowhere/b.mp4"]}, "clip_urls[0]: not a readable video"),
    ({"audio_url": "NOT_AUDIO"}, "audio_url: not a readable audio file"),
])  # fmt: skip
def test_a_bad_crossfade_join_fails_naming_its_field(sqlite_store: TaskStore, resources: WorkerResources,
                                                     tmp_path: Path, changes: dict[str, Any], message: str) -> None:
    clips = [str(clip(tmp_path / f"{i}.mp4", 9, 100)) for i in range(2)]
    if changes.get("clip_urls") == ["FIRST", "NOT_VIDEO"]:
        (tmp_path / "not_video.mp4").write_text("not a video")
        changes = {"clip_urls": [clips[0], str(tmp_path / "not_video.mp4")]}
    if changes.get("audio_url") == "NOT_AUDIO":
        (tmp_path / "not_audio.wav").write_text("not audio")
        changes = {"audio_url": str(tmp_path / "not_audio.wav")}
    task_id = sqlite_store.enqueue("travel_stitch", join_row(clips, [2], **changes))
    run_until_idle(sqlite_store, resources, tmp_path / "out", task_types=("travel_stitch",))
    task = sqlite_store.get(task_id)
    assert task.status == TaskStatus.FAILED and message in task.error_message, task.error_message
