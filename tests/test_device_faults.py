"""A failing GPU: which torch errors are device faults (and which are sticky), the engine raising
DeviceFault, and the worker requeueing the task for another worker and exiting with 70 (for a systemd
restart) once the device is beyond use. Real databases, the real engine on the tiny models; the faults
are genuine torch error types injected at the first denoising step (tests/fault_injection.py)."""
from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from conftest import FAST_WORKER_FLAGS, REPO_ROOT, store_url, wait_for
from device_fault_worker import cublas_failure
from fault_injection import faults
from wan_engine.device_faults import as_device_fault
from wan_engine.engine import Engine
from wan_engine.errors import DeviceFault
from wan_engine.request import GenerationRequest
from worker.poller import EXIT_DEVICE_FAULT, Worker
from worker.resources import WorkerResources
from worker.store import TaskStatus, TaskStore
from worker_harness import resources, run_until_idle, worker_config  # noqa: F401 (resources is a fixture)

ILLEGAL_ACCESS = "CUDA error: an illegal memory access was encountered\nCUDA kernel errors might be asynchronously reported"


def illegal_memory_access() -> BaseException:
    """What torch >= 2.8 raises after a kernel read out of bounds (sticky)."""
    return torch.AcceleratorError(ILLEGAL_ACCESS)


def t2v(seed: int = 5) -> dict:
    return {"model": "tiny_t2v", "prompt": "a red car on a coast road", "seed": seed, "resolution": "32x32",
            "video_length": 5, "num_inference_steps": 2}


def request() -> GenerationRequest:
    return GenerationRequest(model="tiny_t2v", prompt="a red car", width=32, height=32, video_length=5,
                             num_inference_steps=2)


# ---- which errors are device faults -------------------------------------------------------------------

@pytest.mark.parametrize(("error", "sticky"), [
    (torch.AcceleratorError("CUDA error: device-side assert triggered\nSearch for `cudaErrorAssert'"), True),
    (RuntimeError(ILLEGAL_ACCESS), True),
    (RuntimeError("CUDA error: unspecified launch failure"), True),
    (RuntimeError("CUDA error: uncorrectable ECC error encountered"), True),
    (cublas_failure(), False),
    (RuntimeError("cuDNN error: CUDNN_STATUS_INTERNAL_ERROR"), False),
    (RuntimeError("NCCL error in: ProcessGroupNCCL.cpp:1970, unhandled cuda error"), False),
    (torch.AcceleratorError("CUDA error: unknown error"), False),
], ids=["device-side-assert", "illegal-access", "launch-failure", "ecc", "cublas", "cudnn", "nccl", "accelerator-type"])
def test_cuda_library_and_driver_errors_are_device_faults_and_context_poisoning_ones_sticky(error: BaseException,
                                                                                           sticky: bool) -> None:
    fault = as_device_fault(error, "cuda:0")
    assert fault is not None and fault.sticky is sticky
    assert str(fault).startswith("cuda:0 failed: " + str(error).splitlines()[0])


@pytest.mark.parametrize("error", [
    torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
    torch.AcceleratorError("CUDA error: out of memory"),
    RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"),
    RuntimeError("mat1 and mat2 shapes cannot be multiplied (3x4 and 5x6)"),
    ValueError("CUDA error: not raised by torch"),
], ids=["oom-type", "oom-accelerator", "cublas-alloc", "shape", "not-runtime"])
def test_out_of_memory_and_ordinary_errors_are_not_device_faults(error: BaseException) -> None:
    assert as_device_fault(error, "cuda:0") is None


# ---- the engine ------------------------------------------------------------------------------------------

def test_a_device_error_in_a_generation_is_raised_as_device_fault_and_the_engine_carries_on(tiny_models_dir: Path):
    engine = Engine(tiny_models_dir, device="cpu", dtype=torch.float32)
    injected = cublas_failure()
    faults(engine).device = [injected]

    with pytest.raises(DeviceFault) as raised:
        engine.generate(request())

    assert raised.value.__cause__ is injected and not raised.value.sticky
    assert engine.device_fault is None and engine.loaded_model == "tiny_t2v"
    assert engine.generate(request()).frames.shape == (5, 32, 32, 3)


def test_a_sticky_device_fault_makes_the_engine_refuse_every_later_load_and_generation(tiny_models_dir: Path):
    engine = Engine(tiny_models_dir, device="cpu", dtype=torch.float32)
    faults(engine).device = [illegal_memory_access()]

    with pytest.raises(DeviceFault, match="illegal memory access") as raised:
        engine.generate(request())

    assert raised.value.sticky and engine.device_fault is raised.value
    with pytest.raises(DeviceFault, match="unusable since an earlier fault"):
        engine.generate(request())
    with pytest.raises(DeviceFault, match="unusable since an earlier fault"):
        engine.load("tiny_t2v")


# ---- the worker ------------------------------------------------------------------------------------------

def run_worker(store: TaskStore, resources: WorkerResources, tmp_path: Path, **settings: object) -> tuple[Worker, int]:
    """Run a worker in this thread until it is idle or gives its device up; returns it and its exit code."""
    worker = run_until_idle(store, resources, tmp_path / "outputs", **settings)
    return worker, worker.exit_code


def finish_with_another_worker(store: TaskStore, resources: WorkerResources, tmp_path: Path,
                               task_ids: list[str]) -> list:
    """A healthy worker runs until every task is Complete (the requeued ones wait out their short delay)."""
    worker = Worker(worker_config(store, tmp_path / "outputs", resources.models_dir, worker_id="healthy"), store,
                    resources=resources)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: all(store.get(task_id).status == TaskStatus.COMPLETE for task_id in task_ids),
                 timeout_seconds=120, what="the healthy worker to complete every task")
    finally:
        worker.request_stop()
        thread.join(timeout=30)
    return [store.get(task_id) for task_id in task_ids]


def test_one_device_fault_requeues_the_task_with_the_attempt_counted_and_the_worker_carries_on(
        store: TaskStore, resources: WorkerResources, tmp_path: Path) -> None:
    faulted = store.enqueue("t2v", t2v(seed=1))
    healthy = store.enqueue("t2v", t2v(seed=2))
    faults(resources.resident_engine()).device = [cublas_failure()]

    _, exit_code = run_worker(store, resources, tmp_path, retry_base_seconds=60.0)  # the requeued row waits

    assert exit_code == 0
    requeued = store.get(faulted)
    assert requeued.status == TaskStatus.QUEUED and requeued.attempts == 1 and requeued.worker_id is None
    assert requeued.error_message.startswith("DeviceFault: cpu failed: CUDA error: CUBLAS_STATUS_EXECUTION_FAILED")
    assert "(attempt 1 of 3; requeued for another worker)" in requeued.error_message
    assert store.get(healthy).status == TaskStatus.COMPLETE


def test_two_device_faults_in_a_row_requeue_the_task_and_stop_the_worker_with_exit_code_70(
        store: TaskStore, resources: WorkerResources, tmp_path: Path) -> None:
    task_ids = [store.enqueue("t2v", t2v(seed=seed)) for seed in (1, 2, 3)]
    faults(resources.resident_engine()).device = [cublas_failure(), cublas_failure()]

    worker, exit_code = run_worker(store, resources, tmp_path)

    assert exit_code == EXIT_DEVICE_FAULT == 70
    assert worker.consecutive_device_faults == 2
    rows = [store.get(task_id) for task_id in task_ids]
    assert all(row.status == TaskStatus.QUEUED and row.worker_id is None for row in rows)
    assert sum(row.attempts for row in rows) == 2  # two claims, both back in the queue
    assert rows[2].attempts == 0  # no claim after the device was given up
    finished = finish_with_another_worker(store, resources, tmp_path, task_ids)
    assert {row.worker_id for row in finished} == {"healthy"}


def test_a_sticky_device_fault_stops_the_worker_after_one_fault(store: TaskStore, tiny_models_dir: Path,
                                                                tmp_path: Path) -> None:
    own = WorkerResources(device="cpu", models_dir=tiny_models_dir)  # its engine ends unusable
    faulted = store.enqueue("t2v", t2v(seed=1))
    untouched = store.enqueue("t2v", t2v(seed=2))
    faults(own.resident_engine()).device = [illegal_memory_access()]

    _, exit_code = run_worker(store, own, tmp_path)

    assert exit_code == EXIT_DEVICE_FAULT
    requeued = store.get(faulted)
    assert requeued.status == TaskStatus.QUEUED and requeued.attempts == 1
    assert "illegal memory access" in requeued.error_message and "restarts" in requeued.error_message
    assert store.get(untouched).attempts == 0


def test_a_generation_that_succeeds_between_device_faults_resets_the_count(
        store: TaskStore, resources: WorkerResources, tmp_path: Path) -> None:
    task_ids = [store.enqueue("t2v", t2v(seed=seed)) for seed in (1, 2, 3)]
    faults(resources.resident_engine()).device = [cublas_failure(), None, cublas_failure()]

    # retries far off: each task is claimed once, oldest first
    worker, exit_code = run_worker(store, resources, tmp_path, retry_base_seconds=60.0)

    assert exit_code == 0 and worker.consecutive_device_faults == 1
    assert [store.get(task_id).status for task_id in task_ids] == [
        TaskStatus.QUEUED, TaskStatus.COMPLETE, TaskStatus.QUEUED]


def test_a_task_that_never_touches_the_gpu_does_not_reset_the_count(store: TaskStore, resources: WorkerResources,
                                                                   tmp_path: Path) -> None:
    first = store.enqueue("t2v", t2v(seed=1))
    probe = store.enqueue("health_check", {})
    second = store.enqueue("t2v", t2v(seed=2))
    faults(resources.resident_engine()).device = [cublas_failure(), cublas_failure()]

    # affinity 0: strictly oldest first, so the probe runs between the two generations
    worker, exit_code = run_worker(store, resources, tmp_path, retry_base_seconds=60.0, affinity_max_wait_seconds=0.0)

    assert exit_code == EXIT_DEVICE_FAULT and worker.consecutive_device_faults == 2
    assert store.get(probe).status == TaskStatus.COMPLETE
    assert [store.get(task_id).status for task_id in (first, second)] == [TaskStatus.QUEUED, TaskStatus.QUEUED]


def test_a_device_fault_on_the_last_attempt_fails_the_task(store: TaskStore, resources: WorkerResources,
                                                           tmp_path: Path) -> None:
    task_id = store.enqueue("t2v", t2v(), max_attempts=1)
    faults(resources.resident_engine()).device = [cublas_failure()]

    _, exit_code = run_worker(store, resources, tmp_path)

    failed = store.get(task_id)
    assert failed.status == TaskStatus.FAILED and failed.attempts == 1
    assert failed.error_message.startswith("DeviceFault:") and "(attempt 1 of 1; giving up)" in failed.error_message
    assert exit_code == 0  # one fault is below max_device_faults


def test_wan_worker_run_exits_70_after_requeueing_its_task_and_another_worker_completes_it(
        pg_store: TaskStore, resources: WorkerResources, tiny_models_dir: Path, tmp_path: Path) -> None:
    task_id = pg_store.enqueue("t2v", t2v())
    log_path = tmp_path / "doomed.log"
    command = [sys.executable, str(REPO_ROOT / "tests" / "device_fault_worker.py"), "2", "run",
               "--database-url", store_url(pg_store), "--worker-id", "doomed", "--models-dir", str(tiny_models_dir),
               "--device", "cpu", "--output-dir", str(tmp_path / "outputs"), "--log-format", "json",
               *FAST_WORKER_FLAGS]
    with open(log_path, "w") as log:
        exit_code = subprocess.run(command, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, timeout=180).returncode

    assert exit_code == 70
    requeued = pg_store.get(task_id)
    assert requeued.status == TaskStatus.QUEUED and requeued.attempts == 2 and requeued.worker_id is None
    events = [json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")]
    stopped = next(event for event in events if event["event"] == "worker stopped")
    assert stopped["exit_code"] == 70 and stopped["retried"] == 2
    [finished] = finish_with_another_worker(pg_store, resources, tmp_path, [task_id])
    assert finished.attempts == 3
