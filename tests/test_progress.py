"""Progress tells the truth: every phase of a generation reports as it begins (no stale step through
the load, the text and VACE encoders or the decode), and a finished row reads 100 %, the orchestrator
of a travel job included."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from wan_engine.engine import Engine
from wan_engine.request import GenerationRequest
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
