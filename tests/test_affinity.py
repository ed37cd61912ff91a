"""One resident engine per worker, and a claim that prefers the loaded model without starving others:
real generations on the tiny models, loads counted through the worker's engine."""
from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
import structlog

from conftest import backdate
from worker.maintenance import Maintenance
from worker.metrics import WorkerMetrics
from worker.resources import WorkerResources
from worker.store import TaskStatus, TaskStore
from worker_harness import run_until_idle

SIZE = {"resolution": "32x32", "video_length": 5, "num_inference_steps": 2}


@pytest.fixture
def fresh_resources(tiny_models_dir: Path) -> WorkerResources:
    """A worker with no engine yet, counting its model loads."""
    return WorkerResources(device="cpu", models_dir=tiny_models_dir, metrics=WorkerMetrics())


def loads(resources: WorkerResources) -> dict[str, float]:
    registry = resources.metrics.registry
    return {
        model: registry.get_sample_value("wan_worker_model_loads_total", {"model": model}) or 0.0
        for model in ("tiny_t2v", "tiny_vace")
    }


def enqueue(store: TaskStore, model: str) -> str:
    return store.enqueue("generate_video", {"model": model, "prompt": f"a test of {model}", **SIZE})


def models_in_claim_order(store: TaskStore, task_ids: list[str]) -> list[str]:
    tasks = [store.get(task_id) for task_id in task_ids]
    assert all(task.status == TaskStatus.COMPLETE for task in tasks), [task.error_message for task in tasks]
    return [task.params["model"] for task in sorted(tasks, key=lambda task: task.generation_started_at)]


def test_several_tasks_of_one_model_load_it_once(sqlite_store: TaskStore, fresh_resources: WorkerResources, tmp_path: Path) -> None:
    task_ids = [enqueue(sqlite_store, "tiny_t2v") for _ in range(3)]

    run_until_idle(sqlite_store, fresh_resources, tmp_path / "outputs")

    assert loads(fresh_resources) == {"tiny_t2v": 1.0, "tiny_vace": 0.0}
    load_seconds = [sqlite_store.get(task_id).result_data["phase_seconds"]["model_load"] for task_id in task_ids]
    assert load_seconds[0] > 0 and load_seconds[1:] == [0.0, 0.0]


def test_a_queue_of_alternating_models_is_run_with_one_load_per_model(store: TaskStore, fresh_resources: WorkerResources,
                                                                      tmp_path: Path) -> None:
    task_ids = [enqueue(store, model) for model in ["tiny_t2v", "tiny_vace"] * 3]

    run_until_idle(store, fresh_resources, tmp_path / "outputs")

    assert loads(fresh_resources) == {"tiny_t2v": 1.0, "tiny_vace": 1.0}  # 2 loads for 6 tasks
    assert fresh_resources.metrics.registry.get_sample_value("wan_worker_model_switches_total") == 1.0
    assert models_in_claim_order(store, task_ids) == ["tiny_t2v"] * 3 + ["tiny_vace"] * 3


def test_within_the_bound_tasks_for_the_loaded_model_go_before_older_ones(store: TaskStore, fresh_resources: WorkerResources,
                                                                          tmp_path: Path) -> None:
    fresh_resources.load_model("tiny_t2v")
    task_ids = [enqueue(store, "tiny_vace"), enqueue(store, "tiny_t2v"), enqueue(store, "tiny_t2v")]

    run_until_idle(store, fresh_resources, tmp_path / "outputs", affinity_max_wait_seconds=600)

    assert models_in_claim_order(store, task_ids) == ["tiny_t2v", "tiny_t2v", "tiny_vace"]


def test_a_task_older_than_the_bound_goes_first_so_no_model_starves(store: TaskStore, fresh_resources: WorkerResources,
                                                                     tmp_path: Path) -> None:
    fresh_resources.load_model("tiny_t2v")
    waiting = enqueue(store, "tiny_vace")
    backdate(store, waiting, days=1)  # far past the 600 s bound
    task_ids = [waiting, enqueue(store, "tiny_t2v"), enqueue(store, "tiny_t2v")]

    run_until_idle(store, fresh_resources, tmp_path / "outputs", affinity_max_wait_seconds=600)

    assert models_in_claim_order(store, task_ids) == ["tiny_vace", "tiny_t2v", "tiny_t2v"]
    assert loads(fresh_resources) == {"tiny_t2v": 2.0, "tiny_vace": 1.0}  # preload, switch away, switch back


# ---- affinity on the resolved model -------------------------------------------------------------------------

def insert_as_a_backend(store: TaskStore, params: str) -> str:
    """A backend's own INSERT: the worker's resolver never saw the row."""
    task_id = str(uuid.uuid4())
    cast = "CAST(:params AS jsonb)" if store.db.is_postgres else ":params"
    with store.db.engine.begin() as conn:
        conn.execute(sa.text(f"INSERT INTO tasks (id, task_type, params) VALUES (:id, 'travel_orchestrator', {cast})"),
                     {"id": task_id, "params": params})
    return task_id


def test_the_claim_prefers_rows_whose_preset_or_headless_model_name_resolves_to_the_loaded_model(
        store: TaskStore) -> None:
    older = store.enqueue("generate_video", {"model": "t2v"})
    by_preset = store.enqueue("generate_video", {"preset": "vace_22_14b"})
    headless = insert_as_a_backend(store, '{"orchestrator_details": {"model_name": "vace_14B"}}')
    assert store.get(by_preset).resolved_model == "vace_14B_cocktail_2_2"
    assert store.get(headless).resolved_model is None
    Maintenance(store, lease_seconds=60, interval_seconds=60, log=structlog.get_logger()).run_once()
    assert store.get(headless).resolved_model == "vace_14B"

    assert store.claim("w", None, "vace_14B").id == headless
    assert store.claim("w", None, "vace_14B_cocktail_2_2").id == by_preset
    assert store.claim("w", None, "vace_14B_cocktail_2_2").id == older
