"""extract_frame rows (the headless worker's extract_frame.py): one frame of a finished task's video as a PNG."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from worker.resources import WorkerResources
from worker.store import Claim, TaskStatus, TaskStore
from worker.video import VideoWriter, read_video
from worker_harness import resources, run_until_idle  # noqa: F401 (fixture)


def finished_video(store: TaskStore, path: Path) -> str:
    """A row another worker finished with a 10-frame video whose frame k is flat gray 20 k."""
    with VideoWriter(path, 16, 32, 16) as writer:
        for k in range(10):
            writer.write(np.full((16, 32, 3), 20 * k, np.uint8))
    task_id = store.enqueue("vace", {"prompt": "elsewhere"})
    claimed = store.claim("another-worker", ["vace"], None)
    assert claimed is not None and store.complete(Claim.of(claimed), str(path), None)
    return task_id


@pytest.mark.parametrize(("index", "position"), [(0, 0), (3, 3), (-1, 9)])
def test_a_frame_of_a_finished_video_is_written_as_png(sqlite_store: TaskStore, resources: WorkerResources,
                                                       tmp_path: Path, index: int, position: int) -> None:
    video_task = finished_video(sqlite_store, tmp_path / "video.mp4")
    task_id = sqlite_store.enqueue("extract_frame", {"input_video_task_id": video_task, "frame_index": index,
                                                     "output_dir": "/elsewhere"})
    run_until_idle(sqlite_store, resources, tmp_path / "out")
    task = sqlite_store.get(task_id)
    assert task.status == TaskStatus.COMPLETE, task.error_message
    png = np.asarray(Image.open(task.output_location))
    assert np.array_equal(png, read_video(tmp_path / "video.mp4")[position])
    assert task.result_data["frame_index"] == position and task.result_data["video_frames"] == 10
    assert task.result_data["ignored_params"] == {"output_dir": "outputs go to the task's folder"}


@pytest.mark.parametrize(("params", "message"), [
    ({"frame_index": 10}, "frame_index: 10 is outside the video's 10 frames"),
    ({"frame_index": -11}, "frame_index: -11 is outside the video's 10 frames"),
    ({"input_video_task_id": "5e0c7a52-0000-4000-8000-00000000dead"}, "input_video_task_id: 5e0c7a52-0000-4000-8000-00000000dead has no finished video (no such row)"),
])  # fmt: skip
def test_a_bad_extract_frame_row_fails_naming_its_field(sqlite_store: TaskStore, resources: WorkerResources,
                                                        tmp_path: Path, params: dict, message: str) -> None:
    video_task = finished_video(sqlite_store, tmp_path / "video.mp4")
    task_id = sqlite_store.enqueue("extract_frame", {"input_video_task_id": video_task, **params})
    run_until_idle(sqlite_store, resources, tmp_path / "out")
    task = sqlite_store.get(task_id)
    assert task.status == TaskStatus.FAILED and message in task.error_message, task.error_message
