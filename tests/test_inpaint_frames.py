"""inpaint_frames rows (banodoco/reigh-worker source/task_handlers/inpaint_frames.py) on the tiny VACE model:
the generation equals a `vace` row given the same guide and mask; bad ranges fail naming their field."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from worker.resources import WorkerResources
from worker.store import TaskStatus, TaskStore
from worker.video import VideoWriter, read_video
from worker_harness import resources, run_until_idle, write_lossless  # noqa: F401 (fixture)

SIZE, FPS = 32, 16


def source_video(path: Path, frames: int = 21) -> Path:
    """Frame k is a gradient shifted by k: every frame differs, so a context off by one shows."""
    x = np.arange(SIZE)[None, :, None]
    with VideoWriter(path, FPS, SIZE, SIZE) as writer:
        for k in range(frames):
            writer.write(np.broadcast_to((x * 6 + 11 * k) % 256, (SIZE, SIZE, 3)).astype(np.uint8))
    return path


def inpaint_row(video: str, **changes: Any) -> dict[str, Any]:
    row = {"video_path": video, "inpaint_start_frame": 8, "inpaint_end_frame": 13, "context_frame_count": 4,
           "prompt": "a gradient", "model": "tiny_vace_2_2", "num_inference_steps": 2, "seed": 7}
    row.update(changes)
    return row


def test_an_inpaint_row_generates_what_a_vace_row_with_the_same_guide_and_mask_does(
        sqlite_store: TaskStore, resources: WorkerResources, tmp_path: Path) -> None:
    """Frames 4..7 and 13..16 of the video kept, 8..12 gray and generated: 4 + 5 + 4 = 13 frames."""
    video = source_video(tmp_path / "source.mp4")
    decoded = read_video(video)
    guide = np.concatenate([decoded[4:8], np.full((5, SIZE, SIZE, 3), 127, np.uint8), decoded[13:17]])
    mask = np.zeros_like(guide)
    mask[4:9] = 255
    vace_row = {**inpaint_row(str(video)), "resolution": f"{SIZE}x{SIZE}", "video_length": 13, "fps": FPS,
                "video_guide": str(write_lossless(tmp_path / "guide.mkv", guide, FPS)),
                "video_mask": str(write_lossless(tmp_path / "mask.mkv", mask, FPS))}
    for key in ("video_path", "inpaint_start_frame", "inpaint_end_frame", "context_frame_count"):
        vace_row.pop(key)
    inpaint_id = sqlite_store.enqueue("inpaint_frames", inpaint_row(str(video)))
    vace_id = sqlite_store.enqueue("vace", vace_row)
    run_until_idle(sqlite_store, resources, tmp_path / "out")

    inpainted, reference = sqlite_store.get(inpaint_id), sqlite_store.get(vace_id)
    assert inpainted.status == TaskStatus.COMPLETE, inpainted.error_message
    assert reference.status == TaskStatus.COMPLETE, reference.error_message
    assert np.array_equal(read_video(inpainted.output_location), read_video(reference.output_location))
    result = inpainted.result_data
    assert (result["frames"], result["width"], result["height"], result["fps"]) == (13, SIZE, SIZE, FPS)
    assert result["inpaint"] == {"video_path": str(video), "inpaint_start_frame": 8, "inpaint_end_frame": 13,
                                 "context_frame_count": 4, "video_frames": 21, "kept_frames": [0, 1, 2, 3, 9, 10, 11, 12]}
    sources = result["parameter_sources"]
    assert sources["video_length"] == "context_frame_count 4 + the range's 5 + context_frame_count 4"
    assert sources["width"] == "video_path (its size)" and sources["fps"] == "video_path (its frame rate)"
    assert result["ignored_params"] == {}


def test_a_range_whose_frames_are_not_4n_plus_1_is_rounded_down_and_a_missing_prompt_is_empty(
        sqlite_store: TaskStore, resources: WorkerResources, tmp_path: Path) -> None:
    video = source_video(tmp_path / "source.mp4")
    task_id = sqlite_store.enqueue("inpaint_frames", inpaint_row(str(video), inpaint_end_frame=14, prompt="", fps_helpers=8,
                                                                 resolution="40x44"))
    run_until_idle(sqlite_store, resources, tmp_path / "out")
    task = sqlite_store.get(task_id)
    assert task.status == TaskStatus.COMPLETE, task.error_message
    assert task.result_data["frames"] == 13  # 4 + 6 + 4 = 14, rounded down
    assert (task.result_data["width"], task.result_data["height"]) == (32, 32)  # as headless Wan2GP snaps sizes
    assert task.result_data["parameter_sources"]["width"] == "task (40x44 rounded down to multiples of 16)"
    assert task.result_data["fps"] == 8 and task.result_data["parameter_sources"]["fps"] == "task (fps_helpers)"
    assert task.result_data["parameter_sources"]["video_length"].endswith("14 rounded down to 4n+1")
    assert task.result_data["parameters"]["prompt"] == "" and task.result_data["parameter_sources"]["prompt"] == "default"
    assert task.result_data["inpaint"]["kept_frames"] == [0, 1, 2, 3, 10, 11, 12]  # the dropped 14th was kept too


@pytest.mark.parametrize(("changes", "message"), [
    ({"video_path": None}, "video_path: is required"),
    ({"inpaint_end_frame": 22}, "inpaint_end_frame: 22 is past the end of the video (21 frames)"),
    ({"inpaint_end_frame": 8}, "inpaint_end_frame: must be >= 9"),
    ({"inpaint_start_frame": 3}, "inpaint_start_frame: needs context_frame_count = 4 frames before it; the video has 3"),
    ({"inpaint_end_frame": 18}, "inpaint_end_frame: needs context_frame_count = 4 frames after it; the video has 3"),
    ({"video_path": "NOT_VIDEO"}, "video_path: not a readable video"),
    ({"resolution": "12x40"}, "resolution: 12x40 is too small to generate at (16x16 at least)"),
])  # fmt: skip
def test_a_bad_inpaint_row_fails_naming_its_field(sqlite_store: TaskStore, resources: WorkerResources,
                                                  tmp_path: Path, changes: dict[str, Any], message: str) -> None:
    video = source_video(tmp_path / "source.mp4")
    if changes.get("video_path") == "NOT_VIDEO":
        (tmp_path / "not_video.mp4").write_text("not a video")
        changes = {"video_path": str(tmp_path / "not_video.mp4")}
    task_id = sqlite_store.enqueue("inpaint_frames", inpaint_row(str(video), **changes))
    run_until_idle(sqlite_store, resources, tmp_path / "out")
    task = sqlite_store.get(task_id)
    assert task.status == TaskStatus.FAILED and message in task.error_message, task.error_message
