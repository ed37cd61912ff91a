"""Helpers for tests that run real handlers on the tiny models: an in-process worker (in the test's
thread, or in the background), keyframe images, lossless control videos, and one resident engine
per test module."""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
from PIL import Image

from conftest import store_url
from worker.config import WorkerConfig
from worker.demo import keyframe
from worker.poller import Worker
from worker.resources import WorkerResources
from worker.store import TaskStore
from worker.video import run_ffmpeg

# Short intervals: a cancellation is seen within 0.2 s, an idle worker polls every 0.05 s.
FAST_SETTINGS = dict(heartbeat_seconds=0.2, poll_seconds=0.05, maintenance_seconds=0.3, notify_wakeups=False,
                     retry_base_seconds=0.05, retry_max_seconds=0.2)


@pytest.fixture(scope="module")
def resources(tiny_models_dir: Path) -> WorkerResources:
    """A worker's resources on the CPU; the engine in it stays resident across a module's tests."""
    return WorkerResources(device="cpu", models_dir=tiny_models_dir)


def worker_config(store: TaskStore, output_dir: Path, models_dir: Path, **settings: Any) -> WorkerConfig:
    return WorkerConfig(database_url=store_url(store), models_dir=models_dir, output_dir=output_dir, device="cpu",
                        worker_id=settings.pop("worker_id", "test-worker"), **{**FAST_SETTINGS, **settings})


def run_until_idle(store: TaskStore, resources: WorkerResources, output_dir: Path, **settings: Any) -> Worker:
    """Run a worker in this thread until nothing is claimable."""
    worker = Worker(worker_config(store, output_dir, resources.models_dir, **settings), store, resources=resources)
    worker.run(exit_when_idle=True)
    return worker


class BackgroundWorker:
    """A worker running in a thread, for tests that act on the table while it works."""

    def __init__(self, store: TaskStore, resources: WorkerResources, output_dir: Path, **settings: Any):
        config = worker_config(store, output_dir, resources.models_dir, **settings)
        self.worker = Worker(config, store, resources=resources)
        self.thread = threading.Thread(target=self.worker.run, kwargs={"exit_when_idle": True}, daemon=True)
        self.thread.start()

    def join(self, timeout_seconds: float = 120.0) -> None:
        self.thread.join(timeout=timeout_seconds)
        assert not self.thread.is_alive(), "the worker did not become idle"


@pytest.fixture
def background_workers() -> Iterator[list[BackgroundWorker]]:
    """Background workers a test starts; any still running at its end is stopped."""
    started: list[BackgroundWorker] = []
    yield started
    for running in started:
        running.worker.request_stop()
        running.worker.request_stop()
        running.thread.join(timeout=30)


def write_keyframes(folder: Path, count: int, size: tuple[int, int] = (80, 56)) -> list[str]:
    """`count` distinct synthetic PNG keyframes (a different aspect than the videos, so fitting runs)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        path = folder / f"key_{index}.png"
        Image.fromarray(keyframe(index, size)).save(path)
        paths.append(str(path))
    return paths


def write_lossless(path: Path, frames: np.ndarray, fps: float) -> Path:
    """frames uint8 [F, H, W, 3] as an FFV1 RGB video: read back bit for bit (a guide or mask given to a
    `vace` row, to compare with what a handler built itself)."""
    raw = path.with_suffix(".rgb")
    raw.write_bytes(np.ascontiguousarray(frames).tobytes())
    run_ffmpeg(["-y", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{frames.shape[2]}x{frames.shape[1]}",
                "-r", str(fps), "-i", str(raw), "-c:v", "ffv1", "-pix_fmt", "bgr0", str(path)], check=True)
    return path
