"""Progress tells the truth: every phase of a generation reports as it begins (no stale step through
the load, the text and VACE encoders or the decode), and a finished row reads 100 %, the orchestrator
of a travel job included."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from conftest import store_url
from fleet_servers import file_server  # noqa: F401
from wan_engine.engine import Engine
from wan_engine.request import GenerationRequest
from worker.config import WorkerConfig
from worker.handlers import HandlerResult, TaskContext, load_handlers
from worker.params import ParamReader
from worker.poller import Worker
from worker.store import Claim, NewTask, TaskStore


def test_every_phase_of_a_generation_reports_in_order(tiny_models_dir: Path) -> None:
    engine = Engine(tiny_models_dir, device="cpu", dtype=torch.float32)
    guide = np.full((5, 32, 32, 3), 127, np.uint8)
    reports: list[dict] = []
    engine.generate(GenerationRequest(model="tiny_vace", prompt="a boat", width=32, height=32, video_length=5,
                                      num_inference_steps=2, video_guide=guide), on_progress=reports.append)

    phases = [report["phase"] for report in reports]
    assert phases == ["load", "text_encode", "vace_encode", "denoise", "denoise", "decode"]
    assert [report.get("step") for report in reports if report["phase"] == "denoise"] == [1, 2]


def test_a_finished_row_and_a_finished_job_read_100_percent(store: TaskStore) -> None:
    task_id = store.enqueue("health_check", {})
    held = Claim.of(store.claim("w", ["health_check"], None))
    store.progress(held, {"phase": "denoise", "step": 7, "steps": 10, "percent": 70.0})
    assert store.complete(held, None, {})
    assert store.get(task_id).progress == {"phase": "complete", "step": 7, "steps": 10, "percent": 100}

    parent = store.enqueue("travel_orchestrator", {})
    planner = Claim.of(store.claim("w", ["travel_orchestrator"], None))
    store.park_with_children(planner, [NewTask("travel_stitch", {"child_key": "stitch"})],
                             {"phase": "stitch", "segments_done": 2, "segments": 2, "percent": 66.7})
    stitcher = Claim.of(store.claim("w", ["travel_stitch"], None))
    assert store.complete_parked(stitcher, "/out/travel.mp4", {})
    assert store.get(parent).progress == {"phase": "complete", "segments_done": 2, "segments": 2, "percent": 100}


def fetches_input(ctx: TaskContext) -> HandlerResult:
    """A handler whose path field is a URL: the download happens while it reads its params."""
    path = ParamReader(ctx.task.params).input_file("video_guide")
    return HandlerResult(result_data={"bytes": path.stat().st_size})


def test_a_download_shows_as_a_phase_of_its_own(store: TaskStore, tmp_path: Path, file_server) -> None:
    url = file_server.serve("/guides/walk.mp4", b"\0" * 4096)
    task_id = store.enqueue("fetches_input", {"video_guide": url})
    config = WorkerConfig(database_url=store_url(store), worker_id="w", output_dir=tmp_path / "out", poll_seconds=0.05,
                          notify_wakeups=False, cache_dir=tmp_path / "cache")
    Worker(config, store, handlers={**load_handlers(), "fetches_input": fetches_input}).run(exit_when_idle=True)

    task = store.get(task_id)
    assert task.result_data == {"bytes": 4096}
    # the last phase written before completion was the download, of that field and URL
    assert task.progress == {"phase": "complete", "field": "video_guide", "url": url, "percent": 100}
