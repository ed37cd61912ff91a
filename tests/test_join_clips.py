"""The join_clips family on the tiny VACE model: a join_clips_segment generates what a `vace` row given
the same guide does; a join_clips_orchestrator row in the Reigh app's form ends as one joined video on
the orchestrator; bad jobs fail naming the field before any child is written."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from worker.resources import WorkerResources
from worker.store import Claim, TaskStatus, TaskStore
from worker.video import VideoWriter, iter_frames, probe, read_video, run_ffmpeg
from fleet_servers import file_server  # noqa: F401 (fixture)
from worker.poller import Worker
from worker_harness import resources, run_until_idle, worker_config, write_lossless  # noqa: F401 (fixture)

SIZE, FPS = 32, 16
CODEC_TOLERANCE = 6  # mean absolute difference of a re-encoded frame (H.264, CRF 18)


def clip(path: Path, frames: int, shade: int, fps: float = FPS, width: int = SIZE) -> Path:
    """Frame k is a gradient of `shade` shifted by k: every frame differs, so an off-by-one shows."""
    x = np.arange(width)[None, :, None]
    with VideoWriter(path, fps, width, SIZE) as writer:
        for k in range(frames):
            writer.write(np.broadcast_to((x * 3 + shade + 5 * k) % 256, (SIZE, width, 3)).astype(np.uint8))
    return path


SAMPLING = {"model": "tiny_vace_2_2", "num_inference_steps": 2, "seed": 11, "prompt": "a gradient"}


def test_a_transition_generates_what_a_vace_row_with_the_same_guide_does(
        sqlite_store: TaskStore, resources: WorkerResources, tmp_path: Path) -> None:
    """Replace mode, context 3, gap 6: the 24 fps second clip is resampled to 16 fps; the guide keeps
    clip 1's frames 8..10 and clip 2's 3..5 (at 16 fps) around 6 gray frames, 3 + 6 + 3 = 12 -> 9 by
    taking 3 from the gap, which then replaces 1 + 2 frames of the clips."""
    first, second = clip(tmp_path / "a.mp4", 12, 20), clip(tmp_path / "b.mp4", 18, 140, fps=24)
    row = {"starting_video_path": str(first), "ending_video_path": str(second), "context_frame_count": 3,
           "gap_frame_count": 6, "replace_mode": True, "transition_only": True, "transition_index": 0,
           **SAMPLING}
    decoded1 = np.stack(list(iter_frames(first)))
    decoded2 = np.stack(list(iter_frames(second, fps=16)))
    assert len(decoded2) == 12
    guide = np.concatenate([decoded1[8:11], np.full((3, SIZE, SIZE, 3), 127, np.uint8), decoded2[2:5]])
    mask = np.zeros_like(guide)
    mask[3:6] = 255
    vace = {"video_guide": str(write_lossless(tmp_path / "guide.mkv", guide, FPS)),
            "video_mask": str(write_lossless(tmp_path / "mask.mkv", mask, FPS)),
            "resolution": f"{SIZE}x{SIZE}", "video_length": 9, "fps": FPS, **SAMPLING}
    join_id, vace_id = sqlite_store.enqueue("join_clips_segment", row), sqlite_store.enqueue("vace", vace)
    run_until_idle(sqlite_store, resources, tmp_path / "out")

    joined, reference = sqlite_store.get(join_id), sqlite_store.get(vace_id)
    assert joined.status == TaskStatus.COMPLETE, joined.error_message
    assert reference.status == TaskStatus.COMPLETE, reference.error_message
    assert np.array_equal(read_video(joined.output_location), read_video(reference.output_location))
    facts = joined.result_data["transition"]
    assert {key: facts[key] for key in ("frames", "context_from_clip1", "gap_frames", "context_from_clip2",
                                        "gap_from_clip1", "gap_from_clip2", "clip1_total_frames", "clip2_total_frames")} == {
        "frames": 9, "context_from_clip1": 3, "gap_frames": 3, "context_from_clip2": 3, "gap_from_clip1": 1,
        "gap_from_clip2": 2, "clip1_total_frames": 12, "clip2_total_frames": 12}
    assert facts["mode"] == "replace" and facts["fps"] == FPS and facts["resolution"] == [SIZE, SIZE]
    sources = joined.result_data["parameter_sources"]
    assert sources["video_length"].startswith("context 3 + gap 3 + context 3")
    assert sources["width"] == "starting_video_path (its size)" and sources["fps"] == "default"
    assert joined.result_data["ignored_params"] == {}


def app_join(clips: list[str], **changes: Any) -> dict[str, Any]:
    """A join_clips_orchestrator row as the Reigh app writes it (create-task/resolvers/joinClips.ts)."""
    details = {"orchestrator_task_id": "join_clips_orchestrator_ab12", "run_id": "20261201153000123",
               "clip_list": [{"url": url, "name": f"Clip {i + 1}"} for i, url in enumerate(clips)],
               "prompt": "", "gap_frame_count": 5, "context_frame_count": 2, "replace_mode": True,
               "enhance_prompt": False, "model": "tiny_vace_2_2", "num_inference_steps": 2, "guidance_scale": 3.0,
               "seed": 5, "negative_prompt": "", "priority": 0, "advanced_mode": True, "motion_mode": "basic",
               "selected_phase_preset_id": "__builtin_vace_default__"}
    details.update(changes)
    return {"orchestrator_details": details, "parent_generation_id": "gen-1", "tool_type": "join-clips",
            "task_family": "join_clips"}


def test_an_app_join_of_three_clips_ends_as_one_video_on_the_orchestrator(
        store: TaskStore, resources: WorkerResources, tmp_path: Path) -> None:
    """Replace mode, context 2, gap 5 (2 + 5 + 2 = 9 frames): each transition's 5 generated frames stand
    in for 2 + 3 frames of its clips and its context frames are cross-faded with the clip frames they
    copy, so the joined video keeps the clips' 14 + 13 + 12 frames; far from the cuts the clips' frames
    come through as they were."""
    clips = [clip(tmp_path / f"clip{i}.mp4", frames, 30 + 60 * i) for i, frames in enumerate((14, 13, 12))]
    orchestrator_id = store.enqueue("join_clips_orchestrator", app_join([str(path) for path in clips]))
    run_until_idle(store, resources, tmp_path / "out")

    orchestrator = store.get(orchestrator_id)
    assert orchestrator.status == TaskStatus.COMPLETE, orchestrator.error_message
    children = store.children(orchestrator_id)
    assert sorted(child.task_type for child in children) == ["join_clips_segment", "join_clips_segment", "join_final_stitch"]
    assert all(child.status == TaskStatus.COMPLETE for child in children)
    joined = read_video(orchestrator.output_location)
    assert len(joined) == 14 + 13 + 12 == orchestrator.result_data["frames"]
    originals = [read_video(path).astype(float) for path in clips]
    # clip 0's frames 0..9 open the video untouched (10, 11 blend with the transition; 12, 13 are replaced)
    assert np.abs(joined[:10] - originals[0][:10]).mean() < CODEC_TOLERANCE
    # clip 2 after the second transition: frames 5..11 close it (0..2 replaced, 3..4 blended)
    assert np.abs(joined[-7:] - originals[2][5:]).mean() < CODEC_TOLERANCE
    result = orchestrator.result_data
    assert [join["gap_frames"] for join in result["joins"]] == [5, 5]
    assert result["model"] == "tiny_vace_2_2" and result["crossfade"] == {"curve": "cosine", "sharpen": 0.3}
    assert result["ignored_params"] == {}
    segment = next(child for child in children if child.task_type == "join_clips_segment")
    assert segment.result_data["ignored_params"] == {}


def test_loop_first_clip_joins_a_clip_to_itself_played_backwards(
        sqlite_store: TaskStore, resources: WorkerResources, tmp_path: Path) -> None:
    source = clip(tmp_path / "clip.mp4", 12, 90)
    row = app_join([str(source)], loop_first_clip=True, replace_mode=False,
                   per_join_settings=[{"prompt": "a loop", "resolution": [40, 36]}])  # the app's sizes: snapped
    orchestrator_id = sqlite_store.enqueue("join_clips_orchestrator", row)
    run_until_idle(sqlite_store, resources, tmp_path / "out")
    orchestrator = sqlite_store.get(orchestrator_id)
    assert orchestrator.status == TaskStatus.COMPLETE, orchestrator.error_message
    # inserting: 12 + a 9-frame transition (2 + 5 + 2) + 12, less the 2 x 2 context frames blended
    assert probe(orchestrator.output_location).frames == 12 + 9 + 12 - 4
    segment = next(child for child in sqlite_store.children(orchestrator_id) if child.task_type == "join_clips_segment")
    assert segment.result_data["parameters"]["prompt"] == "a loop"
    assert segment.result_data["width"] == 32
    assert segment.result_data["parameter_sources"]["width"] == "task (40x36 rounded down to multiples of 16)"
    assert np.abs(read_video(orchestrator.output_location)[-1].astype(float) - read_video(source)[0]).mean() < CODEC_TOLERANCE


@pytest.mark.parametrize(("changes", "message"), [
    ({"clip_list": "ONE"}, "orchestrator_details.clip_list: must name at least two clips to join"),
    ({"clip_list": "UNREADABLE"}, "orchestrator_details.clip_list[2]: not a readable video"),
    ({"replace_mode": False, "context_frame_count": 7}, "orchestrator_details.clip_list[1]: has 13 frames; joins 0 and 1 need 14"),
    ({"per_join_settings": [{}, {}, {}]}, "orchestrator_details.per_join_settings: must be a list of at most 2 objects"),
    ({"per_join_settings": [{}, {"num_inference_steps": -2}]}, "orchestrator_details.per_join_settings[1].num_inference_steps"),
    ({"model": "tiny_t2v_2_2"}, "orchestrator_details.model: 'tiny_t2v_2_2' is not a VACE model"),
    ({"vid2vid_init_strength": 0.5}, "orchestrator_details.vid2vid_init_strength: is not supported"),
])  # fmt: skip
def test_a_bad_join_fails_naming_its_field_before_any_child_is_written(
        sqlite_store: TaskStore, resources: WorkerResources, tmp_path: Path, changes: dict[str, Any], message: str) -> None:
    paths = [str(clip(tmp_path / f"clip{i}.mp4", frames, 40 * i)) for i, frames in enumerate((14, 13, 12))]
    if changes.get("clip_list") == "ONE":
        changes = {"clip_list": [{"url": paths[0]}]}
    elif changes.get("clip_list") == "UNREADABLE":
        (tmp_path / "broken.mp4").write_text("not a video")
        changes = {"clip_list": [{"url": paths[0]}, {"url": paths[1]}, {"url": str(tmp_path / "broken.mp4")}]}
    orchestrator_id = sqlite_store.enqueue("join_clips_orchestrator", app_join(paths, **changes))
    run_until_idle(sqlite_store, resources, tmp_path / "out")
    orchestrator = sqlite_store.get(orchestrator_id)
    assert orchestrator.status == TaskStatus.FAILED and message in orchestrator.error_message, orchestrator.error_message
    assert sqlite_store.children(orchestrator_id) == []


def headless_segment(first: Path, second: Path, **changes: Any) -> dict[str, Any]:
    """A join_clips_segment row as the headless orchestrator writes it (join/task_builder.py
    _create_parallel_join_tasks, with the settings of shared.py _extract_join_settings_from_payload)."""
    row = {"orchestrator_task_id_ref": "5e0c7a52-0000-4000-8000-000000000001", "orchestrator_run_id": "run-7",
           "project_id": "p-1", "join_index": 0, "transition_index": 0, "is_first_join": False, "is_last_join": False,
           "child_order": 0, "skip_generation": True, "starting_video_path": str(first), "ending_video_path": str(second),
           "transition_only": True, "context_frame_count": 2, "gap_frame_count": 7, "replace_mode": False,
           "prompt": "smooth transition", "negative_prompt": "", "model": "tiny_vace_2_2", "aspect_ratio": None,
           "resolution": None, "use_input_video_resolution": False, "fps": None, "use_input_video_fps": False,
           "phase_config": None, "num_inference_steps": 2, "guidance_scale": 3.0, "seed": 3, "additional_loras": {},
           "keep_bridging_images": False, "vid2vid_init_strength": None, "audio_url": None,
           "current_run_base_output_dir": "/srv/headless/join_clips_run_run-7",
           "join_output_dir": "/srv/headless/join_clips_run_run-7/transition_0",
           "orchestrator_details": {"clip_list": [{"url": str(first)}, {"url": str(second)}], "run_id": "run-7"}}
    row.update(changes)
    return row


def test_headless_rows_join_alike_whichever_worker_made_the_transition(
        sqlite_store: TaskStore, resources: WorkerResources, tmp_path: Path) -> None:
    """A headless transition row runs here with nothing ignored and answers in the headless JSON form
    (so a headless stitch can read it); a final stitch reads a transition made here (result_data) and
    one the headless worker made (only its JSON) alike; and a standalone join (transition_only false)
    makes the same video, with the audio laid under it."""
    first, second = clip(tmp_path / "a.mp4", 10, 20), clip(tmp_path / "b.mp4", 10, 150)
    transition_id = sqlite_store.enqueue("join_clips_segment", headless_segment(first, second))
    run_until_idle(sqlite_store, resources, tmp_path / "out")
    ours = sqlite_store.get(transition_id)
    assert ours.status == TaskStatus.COMPLETE, ours.error_message
    assert ours.result_data["ignored_params"] == {}
    assert ours.result_data["transition"]["frames"] == 9  # 2 + 7 + 2 = 11 -> 9
    answer = json.loads(ours.output_location)
    assert answer["transition_url"] == ours.result_data["output"] and answer["gap_frames"] == 5

    theirs_id = sqlite_store.enqueue("join_clips_segment", headless_segment(first, second))
    claimed = sqlite_store.claim("headless-worker", ["join_clips_segment"], None)
    assert claimed is not None and claimed.id == theirs_id
    assert sqlite_store.complete(Claim.of(claimed), ours.output_location, None)

    audio = tmp_path / "tone.wav"
    run_ffmpeg(["-y", "-f", "lavfi", "-i", "sine=frequency=440:duration=3", str(audio)], check=True)
    stitch_row = {"orchestrator_task_id_ref": "5e0c7a52-0000-4000-8000-000000000001", "orchestrator_run_id": "run-7",
                  "clip_list": [{"url": str(first)}, {"url": str(second)}], "blend_frames": 2, "fps": 16, "audio_url": None}
    from_ours = sqlite_store.enqueue("join_final_stitch", {**stitch_row, "transition_task_ids": [transition_id]})
    from_theirs = sqlite_store.enqueue("join_final_stitch", {**stitch_row, "transition_task_ids": [theirs_id]})
    standalone = sqlite_store.enqueue("join_clips_segment", headless_segment(first, second, transition_only=False,
                                                                             audio_url=str(audio)))
    run_until_idle(sqlite_store, resources, tmp_path / "out")
    rows = [sqlite_store.get(task_id) for task_id in (from_ours, from_theirs, standalone)]
    assert all(row.status == TaskStatus.COMPLETE for row in rows), [row.error_message for row in rows]
    videos = [read_video(row.output_location) for row in rows]
    assert len(videos[0]) == 10 + 9 + 10 - 4  # inserting: the transition's 2 + 2 context frames are blended
    assert np.array_equal(videos[0], videos[1]) and np.array_equal(videos[0], videos[2])
    assert "Audio:" in run_ffmpeg(["-i", rows[2].output_location]) and "Audio:" not in run_ffmpeg(["-i", rows[0].output_location])
    assert probe(rows[2].result_data["transition_video"]).frames == 9


def test_a_clip_of_another_shape_is_center_cropped_alike_for_its_transition_and_the_stitch(
        sqlite_store: TaskStore, resources: WorkerResources, tmp_path: Path) -> None:
    """A 48x32 clip after a 32x32 one is cropped to the first clip's square (as the headless worker
    standardizes it), the same way when its frames guide the transition and when they are stitched:
    its untouched frames close the video as its middle 32 columns."""
    first = clip(tmp_path / "square.mp4", 10, 40)
    wide = clip(tmp_path / "wide.mp4", 10, 120, width=48)
    orchestrator_id = sqlite_store.enqueue("join_clips_orchestrator", app_join([str(first), str(wide)], replace_mode=False))
    run_until_idle(sqlite_store, resources, tmp_path / "out")
    orchestrator = sqlite_store.get(orchestrator_id)
    assert orchestrator.status == TaskStatus.COMPLETE, orchestrator.error_message
    joined = read_video(orchestrator.output_location).astype(float)
    assert joined.shape == (10 + 9 + 10 - 4, SIZE, SIZE, 3)
    middle = read_video(wide)[:, :, 8:40].astype(float)
    assert np.abs(joined[-8:] - middle[2:]).mean() < CODEC_TOLERANCE
    segment = next(child for child in sqlite_store.children(orchestrator_id) if child.task_type == "join_clips_segment")
    assert segment.result_data["transition"]["crop_aspect"] == 1.0


def test_the_apps_default_join_payload_runs_with_its_phase_config_loras(
        sqlite_store: TaskStore, resources: WorkerResources, tmp_path: Path, file_server) -> None:
    """joinClips.ts as the app sends it by default: DEFAULT_VACE_PHASE_CONFIG (3 phases of 2, 2, 5 steps,
    the expert switch after phase 2, Lightning and motion LoRAs by URL with per-phase multipliers) with
    the user's LoRA appended to every phase and also given as `loras` / `additional_loras`. The LoRAs
    are fetched once into the models' loras folder and every join runs the 9 steps with them."""
    models = tmp_path / "models"
    shutil.copytree(resources.models_dir, models, copy_function=os.link)  # LoRAs get installed here
    payload = (models / "loras" / "tiny_kohya.safetensors").read_bytes()
    high, low, motion, user = (file_server.serve(f"/loras/{name}.safetensors", payload)
                               for name in ("high_noise_model", "low_noise_model", "motion_scale", "user_style"))
    phases = [{"phase": i + 1, "guidance_scale": 3.0 if i == 0 else 1.0,
               "loras": [{"url": high if i < 2 else low, "multiplier": "0.75" if i == 0 else "1.0"},
                         {"url": motion, "multiplier": "1.25"}, {"url": user, "multiplier": "0.80"}]}
              for i in range(3)]
    phase_config = {"num_phases": 3, "steps_per_phase": [2, 2, 5], "flow_shift": 5.0, "sample_solver": "euler",
                    "model_switch_phase": 2, "mode": "vace", "phases": phases}
    clips = [str(clip(tmp_path / f"clip{i}.mp4", 14, 50 * i)) for i in range(2)]
    row = app_join(clips, phase_config=phase_config, num_inference_steps=6, guidance_scale=3.0,
                   additional_loras={user: 0.8}, model="tiny_vace_2_2")
    orchestrator_id = sqlite_store.enqueue("join_clips_orchestrator", row)
    run_until_idle(sqlite_store, WorkerResources(device="cpu", models_dir=models), tmp_path / "out",
                   cache_dir=tmp_path / "cache")
    orchestrator = sqlite_store.get(orchestrator_id)
    assert orchestrator.status == TaskStatus.COMPLETE, orchestrator.error_message
    segment = next(child for child in sqlite_store.children(orchestrator_id) if child.task_type == "join_clips_segment")
    parameters = segment.result_data["parameters"]
    assert parameters["num_inference_steps"] == 9 and len(parameters["lora_names"]) == 4
    assert all((models / "loras" / f"{name}.safetensors").is_file()
               for name in ("high_noise_model", "low_noise_model", "motion_scale", "user_style"))
    assert file_server.hits["/loras/user_style.safetensors"] == 1
    # the app's num_inference_steps 6 gives way to the phase config's 9 steps, as in the headless worker
    replaced = {"num_inference_steps": "replaced by phase_config"}
    assert orchestrator.result_data["ignored_params"] == {f"orchestrator_details.{k}": v for k, v in replaced.items()}
    assert segment.result_data["ignored_params"] == replaced


def test_the_orchestrator_row_shows_each_finished_join_and_then_the_stitch(
        sqlite_store: TaskStore, resources: WorkerResources, tmp_path: Path) -> None:
    clips = [str(clip(tmp_path / f"clip{i}.mp4", frames, 30 + 60 * i)) for i, frames in enumerate((14, 13, 12))]
    orchestrator_id = sqlite_store.enqueue("join_clips_orchestrator", app_join(clips))
    run_until_idle(sqlite_store, resources, tmp_path / "out", task_types=("join_clips_orchestrator",))
    assert sqlite_store.get(orchestrator_id).progress == {
        "phase": "waiting_for_children", "joins": 2, "expected_frames": 39, "ignored_params": {}}
    def one_join() -> None:
        Worker(worker_config(sqlite_store, tmp_path / "out", resources.models_dir, task_types=("join_clips_segment",)),
               sqlite_store, resources=resources).run(once=True)

    one_join()
    progress = sqlite_store.get(orchestrator_id).progress
    assert {key: progress[key] for key in ("phase", "joins_done", "joins", "percent", "expected_frames")} == {
        "phase": "joins", "joins_done": 1, "joins": 2, "percent": 33.3, "expected_frames": 39}
    assert progress["current"] in ("join-0", "join-1")
    one_join()
    assert sqlite_store.get(orchestrator_id).progress["joins_done"] == 2
    run_until_idle(sqlite_store, resources, tmp_path / "out")
    assert sqlite_store.get(orchestrator_id).status == TaskStatus.COMPLETE
