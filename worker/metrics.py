"""Prometheus metrics of one worker process, served on --metrics-port for fleet dashboards.

Counters and histograms are updated where things happen (claims, results, model loads); gauges that
describe the world outside the process (GPU memory, the age of the oldest queued task) are read at
scrape time, so they are never stale and cost nothing between scrapes.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from worker.db import Database
from worker.store import Claim, NewTask, Parked, Task, TaskStore

# Phases range from milliseconds (text encoding of the tiny model) to tens of minutes (a 14B
# segment at 720p), so buckets grow geometrically.
PHASE_BUCKETS_SECONDS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000)

NO_MODEL = "none"


class WorkerMetrics:
    """All metrics of one worker, in their own registry (so tests and several workers in one
    process never collide with the global default registry)."""

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        task_labels = ["task_type", "model"]
        self.tasks_claimed = Counter(
            "wan_worker_tasks_claimed", "Tasks this worker claimed.", task_labels, registry=self.registry)
        self.tasks_completed = Counter(
            "wan_worker_tasks_completed", "Tasks this worker completed.", task_labels, registry=self.registry)
        self.tasks_failed = Counter(
            "wan_worker_tasks_failed", "Tasks this worker failed for good.", task_labels, registry=self.registry)
        self.tasks_retried = Counter(
            "wan_worker_tasks_retried", "Tasks this worker gave back for a retry after an error.", task_labels,
            registry=self.registry)
        self.phase_seconds = Histogram(
            "wan_worker_phase_seconds", "Seconds spent per phase of a task (queue_wait, model_load, "
            "text_encode, denoise_<expert>, decode, video_encode, stitch).", ["phase", "model"],
            buckets=PHASE_BUCKETS_SECONDS, registry=self.registry)
        self.model_loads = Counter(
            "wan_worker_model_loads", "Models loaded by the resident engine.", ["model"], registry=self.registry)
        self.model_switches = Counter(
            "wan_worker_model_switches", "Loads that replaced another resident model.", registry=self.registry)
        self.gpu_memory_bytes = Gauge(
            "wan_worker_gpu_memory_bytes", "GPU memory held by this process's tensors (allocated) and "
            "by its caching allocator (reserved).", ["kind"], registry=self.registry)
        self.oldest_queued_task_age_seconds = Gauge(
            "wan_worker_oldest_queued_task_age_seconds", "Age of the oldest claimable 'Queued' task in the "
            "table of the types this worker takes (0 when none).", registry=self.registry)

    def task_claimed(self, task_type: str, model: str | None) -> None:
        self.tasks_claimed.labels(task_type, model or NO_MODEL).inc()

    def task_completed(self, task_type: str, model: str | None, phase_seconds: Mapping[str, float]) -> None:
        """Count a completed task and observe its phase timings."""
        label = model or NO_MODEL
        self.tasks_completed.labels(task_type, label).inc()
        for phase, seconds in phase_seconds.items():
            self.phase_seconds.labels(phase, label).observe(seconds)

    def task_failed(self, task_type: str, model: str | None) -> None:
        self.tasks_failed.labels(task_type, model or NO_MODEL).inc()

    def task_retried(self, task_type: str, model: str | None) -> None:
        self.tasks_retried.labels(task_type, model or NO_MODEL).inc()

    def model_loaded(self, model: str, previous: str | None) -> None:
        """One load of `model`; a switch when another model was resident before."""
        self.model_loads.labels(model).inc()
        if previous is not None and previous != model:
            self.model_switches.inc()

    def watch_gpu_memory(self, device: str) -> None:
        """Read GPU memory at scrape time (CUDA devices only; CPU workers report 0)."""
        self.gpu_memory_bytes.labels("allocated").set_function(lambda: _cuda_memory(device, "allocated"))
        self.gpu_memory_bytes.labels("reserved").set_function(lambda: _cuda_memory(device, "reserved"))

    def watch_oldest_queued(self, read_age_seconds: Callable[[], float | None]) -> None:
        """Read the oldest queued task's age at scrape time; NaN when the database cannot be read,
        so a dashboard shows a gap instead of a made-up value."""

        def age() -> float:
            try:
                value = read_age_seconds()
            except Exception:  # a scrape must never fail because the database is away
                return math.nan
            return 0.0 if value is None else float(value)

        self.oldest_queued_task_age_seconds.set_function(age)

    def serve(self, port: int, address: str = "0.0.0.0") -> None:
        """Serve /metrics over HTTP from a daemon thread."""
        start_http_server(port, addr=address, registry=self.registry)


def serve_worker_metrics(port: int, db: Database, resources: Any, task_types: Sequence[str] | None = None,
                         left_queued: Sequence[str] = ()) -> MeteredTaskStore:
    """Start serving a worker's metrics on `port`; returns the store the worker must use so that its
    claims and outcomes are counted. `resources` (WorkerResources) counts the engine's model loads;
    the oldest-queued age counts the rows this worker's claim filter (task_types, left_queued) takes."""
    from worker.stats import oldest_ready_task_age_seconds

    metrics = WorkerMetrics()
    resources.metrics = metrics
    metrics.watch_gpu_memory(resources.device)
    metrics.watch_oldest_queued(lambda: oldest_ready_task_age_seconds(db, task_types, left_queued))
    metrics.serve(port)
    return MeteredTaskStore(db, metrics)


def _cuda_memory(device: str, kind: str) -> float:
    if not device.startswith("cuda"):
        return 0.0
    import torch

    if not torch.cuda.is_available():
        return 0.0
    if kind == "allocated":
        return float(torch.cuda.memory_allocated(device))
    return float(torch.cuda.memory_reserved(device))


def requested_model(task: Task) -> str | None:
    """The model a row asks for (its resolved model, else params.model, else params.preset); None for
    model-less tasks."""
    if task.resolved_model:
        return task.resolved_model
    params = task.params if isinstance(task.params, dict) else {}
    value = params.get("model") or params.get("preset")
    return value if isinstance(value, str) else None


class MeteredTaskStore(TaskStore):
    """A TaskStore that counts this worker's claims and their outcomes, so the poller needs no metrics
    code: every outcome passes through one of these fenced writes. Only writes that changed the row
    count (a lost lease counts nothing)."""

    def __init__(self, db: Database, metrics: WorkerMetrics):
        super().__init__(db)
        self.metrics = metrics
        self._held: dict[str, tuple[str, str | None]] = {}  # task id -> (task_type, model) while claimed

    def claim(self, worker_id: str, task_types: Sequence[str] | None, loaded_model: str | None,
              **options: float) -> Task | None:
        task = super().claim(worker_id, task_types, loaded_model, **options)
        if task is not None:
            self._held[task.id] = (task.task_type, requested_model(task))
            self.metrics.task_claimed(*self._held[task.id])
        return task

    def complete(self, claim: Claim, output_location: str | None, result_data: dict[str, Any] | None) -> bool:
        written = super().complete(claim, output_location, result_data)
        held = self._held.pop(claim.task_id, None)
        if written and held is not None:
            result = result_data or {}
            phases = result.get("phase_seconds")
            self.metrics.task_completed(held[0], result.get("model") or held[1],
                                        phases if isinstance(phases, dict) else {})
        return written

    def fail(self, claim: Claim, message: str) -> bool:
        written = super().fail(claim, message)
        held = self._held.pop(claim.task_id, None)
        if written and held is not None:
            self.metrics.task_failed(*held)
        return written

    def retry_later(self, claim: Claim, message: str, delay_seconds: float) -> bool:
        written = super().retry_later(claim, message, delay_seconds)
        held = self._held.pop(claim.task_id, None)
        if written and held is not None:
            self.metrics.task_retried(*held)
        return written

    def release(self, claim: Claim) -> bool:
        self._held.pop(claim.task_id, None)
        return super().release(claim)

    def park_with_children(self, claim: Claim, children: Sequence[NewTask],
                           progress: dict[str, Any] | None) -> Parked | None:
        self._held.pop(claim.task_id, None)  # an orchestrator's outcome is written later, by its last child
        return super().park_with_children(claim, children, progress)
