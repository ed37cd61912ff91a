"""Prometheus metrics: what a worker counts, and what a scrape of --metrics-port returns."""
from __future__ import annotations

import math
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from worker.config import WorkerConfig
from worker.db import connect
from worker.metrics import MeteredTaskStore, WorkerMetrics
from worker.poller import Worker
from worker.store import Claim, TaskStore

from conftest import backdate, free_port, store_url, wait_for


def sample(metrics: WorkerMetrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def metered(store: TaskStore) -> tuple[MeteredTaskStore, WorkerMetrics]:
    metrics = WorkerMetrics()
    return MeteredTaskStore(store.db, metrics), metrics


def test_a_worker_counts_claims_completions_and_failures_by_type_and_model(store: TaskStore, tmp_path: Path) -> None:
    metered_store, metrics = metered(store)
    store.enqueue("health_check", {})
    store.enqueue("health_check", {})
    store.enqueue("health_check", {"model": "tiny_vace"})  # health_check rejects the field: fails at once
    config = WorkerConfig(database_url=store_url(store), output_dir=tmp_path, worker_id="metrics-test",
                          poll_seconds=0.1, notify_wakeups=False)

    Worker(config, metered_store).run(exit_when_idle=True)

    assert sample(metrics, "wan_worker_tasks_claimed_total", task_type="health_check", model="none") == 2
    assert sample(metrics, "wan_worker_tasks_completed_total", task_type="health_check", model="none") == 2
    assert sample(metrics, "wan_worker_tasks_claimed_total", task_type="health_check", model="tiny_vace") == 1
    assert sample(metrics, "wan_worker_tasks_failed_total", task_type="health_check", model="tiny_vace") == 1


def test_phase_seconds_of_a_completed_task_feed_the_histograms(store: TaskStore) -> None:
    metered_store, metrics = metered(store)
    task_id = store.enqueue("t2v", {"model": "tiny_t2v"})
    metered_store.claim("w", None, None)

    metered_store.complete(Claim(task_id, "w", 1), "/o.mp4", {"model": "tiny_t2v", "phase_seconds": {"decode": 0.3, "model_load": 7.0}})

    assert sample(metrics, "wan_worker_phase_seconds_count", phase="decode", model="tiny_t2v") == 1
    assert sample(metrics, "wan_worker_phase_seconds_sum", phase="model_load", model="tiny_t2v") == 7.0
    assert sample(metrics, "wan_worker_phase_seconds_bucket", phase="decode", model="tiny_t2v", le="0.5") == 1


def test_a_write_that_lost_the_lease_counts_nothing(store: TaskStore) -> None:
    metered_store, metrics = metered(store)
    task_id = store.enqueue("t2v", {"model": "tiny_t2v"})
    metered_store.claim("w", None, None)
    store.cancel(task_id)

    assert not metered_store.complete(Claim(task_id, "w", 1), "/o.mp4", {"model": "tiny_t2v"})
    assert sample(metrics, "wan_worker_tasks_completed_total", task_type="t2v", model="tiny_t2v") is None


def test_model_loads_count_switches_between_models() -> None:
    metrics = WorkerMetrics()

    metrics.model_loaded("tiny_t2v", previous=None)
    metrics.model_loaded("tiny_vace", previous="tiny_t2v")

    assert sample(metrics, "wan_worker_model_loads_total", model="tiny_t2v") == 1
    assert sample(metrics, "wan_worker_model_loads_total", model="tiny_vace") == 1
    assert sample(metrics, "wan_worker_model_switches_total") == 1


def test_the_metrics_port_serves_counters_and_the_oldest_queued_age(store: TaskStore) -> None:
    metered_store, metrics = metered(store)
    metrics.watch_oldest_queued(lambda: 42.5)
    metrics.watch_gpu_memory("cpu")
    store.enqueue("t2v", {"model": "tiny_t2v"})
    metered_store.claim("w", None, None)
    port = free_port()

    metrics.serve(port, address="127.0.0.1")
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()

    values = {(s.name, tuple(sorted(s.labels.items()))): s.value
              for family in text_string_to_metric_families(text) for s in family.samples}
    assert values[("wan_worker_tasks_claimed_total", (("model", "tiny_t2v"), ("task_type", "t2v")))] == 1
    assert values[("wan_worker_oldest_queued_task_age_seconds", ())] == 42.5
    assert values[("wan_worker_gpu_memory_bytes", (("kind", "allocated"),))] == 0


def test_the_oldest_queued_age_reads_the_database_at_scrape_time(store: TaskStore) -> None:
    from worker.stats import oldest_ready_task_age_seconds

    metrics = WorkerMetrics()
    metrics.watch_oldest_queued(lambda: oldest_ready_task_age_seconds(store.db))
    assert sample(metrics, "wan_worker_oldest_queued_task_age_seconds") == 0.0

    backdate(store, store.enqueue("t2v", {}), days=1)

    assert sample(metrics, "wan_worker_oldest_queued_task_age_seconds") >= 86_400


def test_an_unreachable_database_shows_as_a_gap_not_a_failed_scrape(tmp_path: Path) -> None:
    from worker.stats import oldest_ready_task_age_seconds

    db = connect(f"sqlite:///{tmp_path / 'no-schema.db'}")  # no tasks table: every read fails
    metrics = WorkerMetrics()
    metrics.watch_oldest_queued(lambda: oldest_ready_task_age_seconds(db))

    assert math.isnan(sample(metrics, "wan_worker_oldest_queued_task_age_seconds"))
    db.dispose()



def test_a_worker_run_with_metrics_port_and_preload_model_serves_its_load(sqlite_url: str, start_worker,
                                                                         tiny_models_dir: Path) -> None:
    port = free_port()
    start_worker(sqlite_url, "--metrics-port", str(port), "--preload-model", "tiny_t2v",
                 "--models-dir", str(tiny_models_dir), "--device", "cpu")

    def scrape() -> str | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
                text = response.read().decode()
        except OSError:
            return None
        return text if 'wan_worker_model_loads_total{model="tiny_t2v"} 1.0' in text else None

    text = wait_for(scrape, timeout_seconds=120, what="the preloaded model in the served metrics")
    assert "wan_worker_oldest_queued_task_age_seconds 0.0" in text
