"""edit_video_orchestrator rows as the Reigh app writes them (src/tools/edit-video/hooks/useReplaceMode.ts):
the kept parts of the video come through, each portion is generated anew between them, and bad
portions fail naming their entry before any child is written."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from worker.resources import WorkerResources
from worker.store import TaskStatus, TaskStore
from worker.video import VideoWriter, iter_frames, read_video
from worker_harness import resources, run_until_idle  # noqa: F401 (fixture)

SIZE, FPS = 32, 16
CODEC_TOLERANCE = 6


def source_video(path: Path, frames: int = 40, fps: float = FPS) -> Path:
    x = np.arange(SIZE)[None, :, None]
    with VideoWriter(path, fps, SIZE, SIZE) as writer:
        for k in range(frames):
            writer.write(np.broadcast_to((x * 4 + 6 * k) % 256, (SIZE, SIZE, 3)).astype(np.uint8))
    return path


def app_edit(video: str, portions: list[dict[str, Any]], **changes: Any) -> dict[str, Any]:
    details = {"run_id": "20261201160000001", "priority": 0, "tool_type": "edit-video", "source_video_url": video,
               "source_video_fps": FPS, "source_video_total_frames": 40, "portions_to_regenerate": portions,
               "model": "tiny_vace_2_2", "resolution": [SIZE, SIZE], "seed": 9, "context_frame_count": 2,
               "gap_frame_count": 12, "replace_mode": False, "keep_bridging_images": False, "prompt": "a gradient",
               "negative_prompt": "", "enhance_prompt": False, "num_inference_steps": 2, "guidance_scale": 3,
               "motion_mode": "basic", "selected_phase_preset_id": "__builtin_vace_default__",
               "parent_generation_id": "gen-2", "based_on": "gen-2"}
    details.update(changes)
    return {"orchestrator_details": details, "tool_type": "edit-video", "parent_generation_id": "gen-2", "based_on": "gen-2"}


def portion(start: int, end: int, **settings: Any) -> dict[str, Any]:
    """A portion as selectionsToFrameRanges writes it."""
    return {"start_frame": start, "end_frame": end, "start_time": start / FPS, "end_time": end / FPS,
            "frame_count": end - start, **settings}


@pytest.mark.parametrize(("anchored", "video_fps"), [(False, FPS), (True, 24)])
def test_portions_are_generated_anew_between_the_kept_frames(
        store: TaskStore, resources: WorkerResources, tmp_path: Path, anchored: bool, video_fps: int) -> None:
    """Frames 12..17 and 28..31 of 40 regenerated: kept 0..11, 18..27, 32..39 (with replace_mode the
    portions' first and last frames are kept too: 0..12, 17..28, 31..39). Each portion becomes a join
    inserting its gap_frame_count between contexts of 2: 2 + 5 + 2 = 9 frames, and 2 + 3 + 2 = 7, which
    rounds down to 5 with a gap of 1. A 24 fps video is read at the app's 16 fps: 60 frames make 40."""
    video = source_video(tmp_path / "source.mp4", frames=40 * video_fps // FPS, fps=video_fps)
    portions = [portion(28, 31, gap_frame_count=3), portion(12, 17, gap_frame_count=5, prompt="a new middle")]
    task_id = store.enqueue("edit_video_orchestrator", app_edit(str(video), portions, replace_mode=anchored))
    run_until_idle(store, resources, tmp_path / "out")

    task = store.get(task_id)
    assert task.status == TaskStatus.COMPLETE, task.error_message
    kept = 13 + 12 + 9 if anchored else 12 + 10 + 8
    edited = read_video(task.output_location).astype(float)
    assert len(edited) == kept + 5 + 1 == task.result_data["frames"]
    original = np.stack(list(iter_frames(video, fps=FPS))).astype(float)
    assert len(original) == 40
    assert np.abs(edited[:10] - original[:10]).mean() < CODEC_TOLERANCE  # up to the first join's context
    assert np.abs(edited[-6:] - original[-6:]).mean() < CODEC_TOLERANCE
    joins = sorted((child for child in store.children(task_id) if child.task_type == "join_clips_segment"),
                   key=lambda child: child.params["transition_index"])
    assert [join.params["replace_mode"] for join in joins] == [False, False]
    assert [join.result_data["parameters"]["prompt"] for join in joins] == ["a new middle", "a gradient"]
    assert [join.result_data["transition"]["gap_frames"] for join in joins] == [5, 1]
    assert task.result_data["ignored_params"] == {}


@pytest.mark.parametrize(("portions", "message"), [
    ([], "orchestrator_details.portions_to_regenerate: must list at least one"),
    ([portion(0, 5)], "orchestrator_details.portions_to_regenerate[0]: starts at frame 0, with no kept frame"),
    ([portion(30, 39)], "orchestrator_details.portions_to_regenerate[0]: ends at frame 39 of a 40-frame video"),
    ([portion(10, 20), portion(20, 25)], "orchestrator_details.portions_to_regenerate[1]: frames 20..25 overlap"),
    ([portion(10, 8)], "orchestrator_details.portions_to_regenerate[0]: frames 10..8: need 0 <= start_frame <= end_frame"),
    ([portion(10, 20, gap_frame_count=-1)], "orchestrator_details.portions_to_regenerate[0].gap_frame_count: must be >= 1"),
])  # fmt: skip
def test_a_bad_portion_fails_naming_its_entry(sqlite_store: TaskStore, resources: WorkerResources, tmp_path: Path,
                                              portions: list[dict[str, Any]], message: str) -> None:
    video = source_video(tmp_path / "source.mp4")
    task_id = sqlite_store.enqueue("edit_video_orchestrator", app_edit(str(video), portions))
    run_until_idle(sqlite_store, resources, tmp_path / "out")
    task = sqlite_store.get(task_id)
    assert task.status == TaskStatus.FAILED and message in task.error_message, task.error_message
    assert sqlite_store.children(task_id) == []


def test_the_apps_frame_count_gives_way_to_the_videos_own_and_is_reported(
        sqlite_store: TaskStore, resources: WorkerResources, tmp_path: Path) -> None:
    video = source_video(tmp_path / "source.mp4")
    task_id = sqlite_store.enqueue("edit_video_orchestrator", app_edit(str(video), [portion(12, 17, gap_frame_count=5)],
                                                                       source_video_total_frames=42))
    run_until_idle(sqlite_store, resources, tmp_path / "out")
    task = sqlite_store.get(task_id)
    assert task.status == TaskStatus.COMPLETE, task.error_message
    assert len(read_video(task.output_location)) == 12 + 22 + 5  # the 40 frames it has, not 42
    assert task.result_data["ignored_params"] == {
        "orchestrator_details.source_video_total_frames": "the video's own count at 16 fps, 40, is used"}
