"""The claim loop end to end: real worker processes (and in-process workers where a test needs its own
handler) against real Postgres and SQLite. Lease, heartbeat and poll intervals are short (conftest)."""
from __future__ import annotations

import json
import os
import signal
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest
import sqlalchemy as sa

from conftest import FAST_WORKER_FLAGS, stop_worker, store_url, wait_for, wait_for_status
from wan_engine.errors import WeightsMissing
from worker.config import WorkerConfig
from worker.db import connect
from worker.errors import ValidationError
from worker.handlers import HandlerResult, TaskContext, load_handlers
from worker.migrate import migrate
from worker.poller import Worker
from worker.store import NewTask, TaskStatus, TaskStore


# ---- in-process workers ----------------------------------------------------------------------------------

def needs_prompt(ctx: TaskContext) -> HandlerResult:
    """A handler with a required field, as generation handlers have."""
    prompt = ctx.task.params.get("prompt")
    if prompt is None:
        raise ValidationError("prompt", "is required")
    if not isinstance(prompt, str):
        raise ValidationError("prompt", f"must be a string, got {type(prompt).__name__}")
    return HandlerResult(result_data={"prompt": prompt})


def flaky_until_attempt(ctx: TaskContext) -> HandlerResult:
    """Raises an unexpected error until the attempt named in params."""
    if ctx.task.attempts < ctx.task.params["succeeds_on_attempt"]:
        raise RuntimeError(f"transient trouble on attempt {ctx.task.attempts}")
    return HandlerResult(result_data={"attempt": ctx.task.attempts})


def missing_weights(ctx: TaskContext) -> HandlerResult:
    raise WeightsMissing("wan2.1_text2video_14B_bf16.safetensors not in models/")


def plans_children(ctx: TaskContext) -> HandlerResult:
    first = NewTask("health_check", {"child_key": "a"})
    second = NewTask("health_check", {"child_key": "b"}, dependant_on=[first.id])
    return HandlerResult(park_children=[first, second], park_progress={"phase": "waiting", "children": 2})


def reports_progress(ctx: TaskContext) -> HandlerResult:
    ctx.report_progress({"phase": "denoise", "step": 3, "steps": 10, "percent": 30.0})
    return HandlerResult(output_location=str(ctx.output_dir / "out.mp4"))


def returns_nan(ctx: TaskContext) -> HandlerResult:
    """A result JSON cannot hold (a metric of identical frames can be infinite)."""
    return HandlerResult(result_data={"psnr": float("inf")})


def ignores_stop(ctx: TaskContext) -> HandlerResult:
    """Stuck where no stop is seen (a hung kernel, a subprocess): sleeps without looking."""
    time.sleep(float(ctx.task.params["seconds"]))
    return HandlerResult()


TEST_HANDLERS = {
    "ignores_stop": ignores_stop,
    "returns_nan": returns_nan,
    "needs_prompt": needs_prompt,
    "flaky": flaky_until_attempt,
    "missing_weights": missing_weights,
    "plans_children": plans_children,
    "reports_progress": reports_progress,
}


class RunningWorker:
    """A Worker running `run()` in a thread of the test process."""

    def __init__(self, worker: Worker, **run_options: bool):
        self.worker = worker
        self.thread = threading.Thread(target=worker.run, kwargs=run_options, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.worker.request_stop()
        self.thread.join(timeout=30)
        assert not self.thread.is_alive()


@pytest.fixture
def in_process_worker(tmp_path: Path) -> Iterator:
    running: list[RunningWorker] = []

    def start(store: TaskStore, *, exit_when_idle: bool = False, **settings: object) -> RunningWorker:
        fast = dict(lease_seconds=1.5, heartbeat_seconds=0.2, poll_seconds=0.2, maintenance_seconds=0.3,
                    retry_base_seconds=0.05, retry_max_seconds=0.2)
        config = WorkerConfig(database_url=store_url(store), worker_id="in-process",
                              output_dir=tmp_path / "outputs", **{**fast, **settings})
        handlers = {**load_handlers(), **TEST_HANDLERS}
        worker = RunningWorker(Worker(config, store, handlers=handlers), exit_when_idle=exit_when_idle)
        running.append(worker)
        return worker

    yield start
    for worker in running:
        if worker.thread.is_alive():
            worker.stop()


def run_until_idle(in_process_worker, store: TaskStore) -> None:
    in_process_worker(store, exit_when_idle=True).thread.join(timeout=60)


# ---- many workers --------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("dialect", "worker_count", "task_count"), [("postgres", 8, 2000), ("sqlite", 4, 400)],
                         ids=["postgres-8x2000", "sqlite-4x400"])
def test_worker_processes_complete_every_task_each_claimed_exactly_once(
    request: pytest.FixtureRequest, start_worker, tmp_path: Path, dialect: str, worker_count: int, task_count: int
) -> None:
    store: TaskStore = request.getfixturevalue(f"{'pg' if dialect == 'postgres' else 'sqlite'}_store")
    ids = store.enqueue_many([NewTask("health_check", {}) for _ in range(task_count)])
    workers = [start_worker(store_url(store), "--exit-when-idle", *FAST_WORKER_FLAGS) for _ in range(worker_count)]
    codes = [w.wait(timeout=180) for w in workers]
    assert codes == [0] * worker_count, {i: (tmp_path / f"test-worker-{i}.log").read_text()[-3000:]
                                         for i, code in enumerate(codes) if code}

    tasks = [store.get(task_id) for task_id in ids]
    assert {t.status for t in tasks} == {"Complete"}
    assert {t.attempts for t in tasks} == {1}
    assert all(t.result_data["worker_id"] == t.worker_id for t in tasks)
    claims = [json.loads(line) for log in tmp_path.glob("test-worker-*.log")
              for line in log.read_text().splitlines() if line.startswith("{")]
    claimed_ids = [entry["task_id"] for entry in claims if entry.get("event") == "task claimed"]
    assert sorted(claimed_ids) == sorted(ids)


def test_a_worker_whose_lease_was_taken_over_stops_its_handler_and_writes_nothing(
    store: TaskStore, in_process_worker
) -> None:
    worker = in_process_worker(store)
    task_id = store.enqueue("health_check", {"sleep_seconds": 60})
    wait_for_status(store, task_id, TaskStatus.IN_PROGRESS)
    with store.db.transaction() as conn:  # another worker rescued and re-claimed it
        conn.execute(sa.text("UPDATE tasks SET worker_id = 'other', attempts = 2 WHERE id = :id"), {"id": task_id})
    wait_for(lambda: worker.worker.counts["cancelled"] == 1, what="the worker to stop the task it lost")
    task = store.get(task_id)
    assert (task.status, task.worker_id, task.result_data) == ("In Progress", "other", None)
    worker.stop()


# ---- crashes, leases, restarts ----------------------------------------------------------------------------------

def test_a_task_of_a_killed_worker_is_finished_by_another_after_the_lease_expires(store: TaskStore, start_worker) -> None:
    victim = store.enqueue("health_check", {"sleep_seconds": 2})
    others = [store.enqueue("health_check", {}) for _ in range(3)]
    crashed = start_worker(store_url(store), *FAST_WORKER_FLAGS, worker_id="crashed")
    wait_for(lambda: store.get(victim).worker_id == "crashed", what="the first worker to claim the task")
    os.kill(crashed.pid, signal.SIGKILL)
    crashed.wait()

    survivor = start_worker(store_url(store), *FAST_WORKER_FLAGS, worker_id="survivor")
    task = wait_for_status(store, victim, TaskStatus.COMPLETE)
    assert (task.attempts, task.worker_id, task.result_data["worker_id"]) == (2, "survivor", "survivor")
    assert all(wait_for_status(store, i, TaskStatus.COMPLETE).attempts == 1 for i in others)
    assert stop_worker(survivor) == 0


def test_a_worker_carries_on_after_postgres_restarts(private_postgres, start_worker) -> None:
    store = TaskStore(connect(private_postgres.url))
    migrate(store.db)
    worker = start_worker(private_postgres.url, "--lease-seconds", "30", "--heartbeat-seconds", "0.2",
                          "--poll-seconds", "0.2", "--maintenance-seconds", "0.3")
    running = store.enqueue("health_check", {"sleep_seconds": 1.5})
    wait_for_status(store, running, TaskStatus.IN_PROGRESS)
    private_postgres.restart()  # drops every connection: the worker's pool, heartbeat and LISTEN ones
    store.db.engine.dispose()  # this test's own client reconnects too

    after = [store.enqueue("health_check", {}) for _ in range(3)]
    for task_id in (running, *after):
        assert wait_for_status(store, task_id, TaskStatus.COMPLETE).attempts == 1
    assert worker.poll() is None
    assert stop_worker(worker) == 0
    store.db.dispose()


def test_notify_wakes_an_idle_worker_long_before_its_poll_interval(pg_store: TaskStore, in_process_worker) -> None:
    running = in_process_worker(pg_store, poll_seconds=600.0)
    wait_for(lambda: listeners(pg_store) == 1, what="the worker to LISTEN")
    wakeup = running.worker.wakeup
    idle = threading.Event()
    wait_600_seconds = wakeup.wait

    def wait_and_record(timeout_seconds: float) -> bool:
        if not wakeup._event.is_set():  # a real wait: the claim before it found nothing
            idle.set()
        return wait_600_seconds(timeout_seconds)

    wakeup.wait = wait_and_record
    wakeup.set()  # one more loop turn, so an empty claim is followed by the recorded wait
    assert idle.wait(10), "the worker never went idle"
    task_id = pg_store.enqueue("health_check", {})  # now only a NOTIFY can wake it within 600 s
    wait_for_status(pg_store, task_id, TaskStatus.COMPLETE, timeout_seconds=30)


def listeners(store: TaskStore) -> int:
    query = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND query LIKE 'LISTEN %'"
    with store.db.engine.begin() as conn:
        return conn.execute(sa.text(query)).scalar()


# ---- shutdown ---------------------------------------------------------------------------------------------------

def test_sigterm_lets_the_running_task_finish_within_the_grace_period(store: TaskStore, start_worker) -> None:
    task_id = store.enqueue("health_check", {"sleep_seconds": 1})
    worker = start_worker(store_url(store), *FAST_WORKER_FLAGS, "--grace-seconds", "20")
    wait_for_status(store, task_id, TaskStatus.IN_PROGRESS)
    assert stop_worker(worker) == 0
    task = store.get(task_id)
    assert (task.status, task.attempts) == ("Complete", 1)


def test_sigterm_releases_a_task_that_outlives_the_grace_period_without_using_an_attempt(
    store: TaskStore, start_worker
) -> None:
    task_id = store.enqueue("health_check", {"sleep_seconds": 60})
    queued = store.enqueue("health_check", {})
    worker = start_worker(store_url(store), *FAST_WORKER_FLAGS, "--grace-seconds", "0.5", "--task-types", "health_check")
    wait_for_status(store, task_id, TaskStatus.IN_PROGRESS)
    assert stop_worker(worker) == 0
    task = store.get(task_id)
    assert (task.status, task.attempts, task.worker_id) == ("Queued", 0, None)
    assert store.get(queued).status == TaskStatus.QUEUED  # stopped claiming


def test_under_systemd_the_worker_reports_ready_watchdog_and_stopping(sqlite_url: str, start_worker) -> None:
    folder = tempfile.mkdtemp(prefix="notify-")  # unix socket paths must stay short
    address = os.path.join(folder, "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify_socket:
        notify_socket.bind(address)
        notify_socket.settimeout(30)
        worker = start_worker(sqlite_url, *FAST_WORKER_FLAGS,
                              env={"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "400000"})
        messages = [notify_socket.recv(4096).decode()]
        while "WATCHDOG=1" not in messages[-1]:
            messages.append(notify_socket.recv(4096).decode())
        assert stop_worker(worker) == 0
        while "STOPPING=1" not in messages[-1]:
            messages.append(notify_socket.recv(4096).decode())
    os.remove(address)
    os.rmdir(folder)
    assert messages[0].splitlines()[0] == "READY=1"


# ---- cancellation -----------------------------------------------------------------------------------------------

def test_cancelling_a_running_task_stops_it_and_the_worker_carries_on(store: TaskStore, in_process_worker) -> None:
    worker = in_process_worker(store)
    running = store.enqueue("health_check", {"sleep_seconds": 60})
    wait_for_status(store, running, TaskStatus.IN_PROGRESS)
    store.cancel(running)
    wait_for(lambda: worker.worker.counts["cancelled"] == 1, what="the worker to stop the cancelled task")
    following = store.enqueue("health_check", {})
    wait_for_status(store, following, TaskStatus.COMPLETE)
    assert store.get(running).status == TaskStatus.CANCELLED
    worker.stop()


def test_a_cancelled_queued_task_is_never_run(store: TaskStore, in_process_worker) -> None:
    cancelled = store.enqueue("health_check", {})
    store.cancel(cancelled)
    run_until_idle(in_process_worker, store)
    task = store.get(cancelled)
    assert (task.status, task.attempts, task.worker_id) == ("Cancelled", 0, None)


# ---- time limit -----------------------------------------------------------------------------------------------

def test_a_task_over_its_time_limit_is_stopped_retried_then_failed_and_the_worker_carries_on(
        store: TaskStore, in_process_worker) -> None:
    worker = in_process_worker(store, task_timeout_seconds=0.5)
    slow = store.enqueue("health_check", {"sleep_seconds": 60}, max_attempts=2)
    wait_for_status(store, slow, TaskStatus.FAILED, timeout_seconds=30)
    following = store.enqueue("health_check", {})
    wait_for_status(store, following, TaskStatus.COMPLETE)
    task = store.get(slow)
    assert task.attempts == 2
    assert task.error_message == ("TaskTimeout: ran longer than 0.5 s (task_timeout_seconds); stopped "
                                  "(attempt 2 of 2; giving up)")
    assert worker.worker.exit_code == 0 and worker.worker.counts["retried"] == 1
    worker.stop()


def test_a_task_that_does_not_stop_after_its_time_limit_is_requeued_and_its_worker_exits_for_a_restart(
        store: TaskStore, in_process_worker) -> None:
    stuck = store.enqueue("ignores_stop", {"seconds": 20})
    worker = in_process_worker(store, task_timeout_seconds=0.3, grace_seconds=0.5)
    worker.thread.join(timeout=15)
    assert not worker.thread.is_alive() and worker.worker.exit_code == 70
    task = store.get(stuck)
    assert (task.status, task.attempts, task.worker_id) == (TaskStatus.QUEUED, 1, None)
    assert task.error_message.startswith("TaskTimeout: ran longer than 0.3 s (task_timeout_seconds) and did not "
                                         "stop within 0.5 s; its worker exits for a restart (attempt 1 of 3;")


# ---- what the poller writes for each outcome -----------------------------------------------------------------------

@pytest.mark.parametrize(
    ("task_type", "params", "message"),
    [
        ("no_such_type", {}, "ValidationError: task_type: unknown task_type 'no_such_type'; known: "),
        ("health_check", [1, 2], "ValidationError: params: must be a JSON object, got list [1, 2]"),
        ("health_check", {"sleep_seconds": "soon"},
         "ValidationError: sleep_seconds: must be a number of seconds, got str 'soon'"),
        ("needs_prompt", {"prompt": 7}, "ValidationError: prompt: must be a string, got int"),
        ("needs_prompt", {}, "ValidationError: prompt: is required"),
        ("missing_weights", {}, "WeightsMissing: wan2.1_text2video_14B_bf16.safetensors not in models/"),
    ],
    ids=["unknown-task-type", "params-not-an-object", "wrong-type", "wrong-type-required-field", "missing-field",
         "engine-permanent-error"],
)
def test_bad_input_fails_at_once_with_a_clear_message_and_the_worker_carries_on(
    store: TaskStore, in_process_worker, task_type: str, params: object, message: str
) -> None:
    bad = store.enqueue(task_type, params)
    good = store.enqueue("needs_prompt", {"prompt": "a cat"})
    run_until_idle(in_process_worker, store)
    task = store.get(bad)
    assert (task.status, task.attempts) == ("Failed", 1)
    assert task.error_message.startswith(message)
    assert store.get(good).status == TaskStatus.COMPLETE


def test_rows_that_other_workers_of_the_ecosystem_run_stay_queued_unless_task_types_names_them(
    store: TaskStore, in_process_worker
) -> None:
    """A worker sharing a Reigh table must not fail its Qwen or LTX rows; a type nobody knows still fails."""
    qwen = store.enqueue("qwen_image_edit", {"prompt": "a hat"}, priority=5)
    ltx = store.enqueue("ltx2", {"prompt": "a dog"})
    typo = store.enqueue("helth_check", {})
    ours = store.enqueue("health_check", {})
    run_until_idle(in_process_worker, store)
    assert store.get(ours).status == TaskStatus.COMPLETE
    assert store.get(typo).status == "Failed"
    for left in (qwen, ltx):
        task = store.get(left)
        assert (task.status, task.attempts, task.worker_id) == ("Queued", 0, None)

    # Named in --task-types (a worker of this fleet given a handler for it), such a row is claimed.
    in_process_worker(store, exit_when_idle=True, task_types=("qwen_image_edit",)).thread.join(timeout=60)
    task = store.get(qwen)
    assert (task.status, task.attempts) == ("Failed", 1)
    assert "unknown task_type 'qwen_image_edit'" in task.error_message
    assert store.get(ltx).status == "Queued"


def test_a_result_that_cannot_be_stored_fails_the_task_and_the_worker_carries_on(
    store: TaskStore, in_process_worker
) -> None:
    bad = store.enqueue("returns_nan", {})
    good = store.enqueue("needs_prompt", {"prompt": "a cat"})
    run_until_idle(in_process_worker, store)
    task = store.get(bad)
    assert (task.status, task.attempts) == ("Failed", 1)
    assert task.error_message.startswith("handler result cannot be stored: ValueError")
    assert store.get(good).status == TaskStatus.COMPLETE


def test_an_unexpected_error_is_retried_until_an_attempt_succeeds(store: TaskStore, in_process_worker) -> None:
    worker = in_process_worker(store)
    task_id = store.enqueue("flaky", {"succeeds_on_attempt": 2})
    task = wait_for_status(store, task_id, TaskStatus.COMPLETE)
    assert (task.attempts, task.result_data, task.error_message) == (2, {"attempt": 2}, None)
    worker.stop()


def test_an_unexpected_error_fails_the_task_with_the_last_error_when_attempts_run_out(
    store: TaskStore, in_process_worker
) -> None:
    worker = in_process_worker(store)
    task_id = store.enqueue("flaky", {"succeeds_on_attempt": 99}, max_attempts=3)
    task = wait_for_status(store, task_id, TaskStatus.FAILED)
    assert task.attempts == 3
    assert task.error_message == "RuntimeError: transient trouble on attempt 3 (attempt 3 of 3; giving up)"
    worker.stop()


def test_retry_delays_grow_exponentially_with_jitter_up_to_the_cap(sqlite_store: TaskStore) -> None:
    worker = Worker(WorkerConfig(database_url=store_url(sqlite_store), retry_base_seconds=10, retry_max_seconds=600),
                    sqlite_store, handlers={})
    for attempt in range(1, 10):
        ceiling = min(600, 10 * 2 ** (attempt - 1))
        delays = [worker._retry_delay_seconds(attempt) for _ in range(50)]
        assert all(ceiling / 2 <= delay <= ceiling for delay in delays)
        assert len(set(delays)) > 1  # jittered: a fleet does not retry in lock-step


def test_a_handler_that_returns_children_parks_its_task_until_they_end_it(store: TaskStore, in_process_worker) -> None:
    parent = store.enqueue("plans_children", {})
    run_until_idle(in_process_worker, store)
    children = store.children(parent)
    assert [c.status for c in children] == ["Complete", "Complete"]
    assert children[1].dependant_on == [children[0].id]
    task = store.get(parent)
    assert task.is_parked and task.progress == {"phase": "waiting", "children": 2}


def test_progress_reported_by_a_handler_is_written_to_the_row(store: TaskStore, in_process_worker, tmp_path: Path) -> None:
    task_id = store.enqueue("reports_progress", {})
    run_until_idle(in_process_worker, store)
    task = store.get(task_id)
    assert task.progress == {"phase": "complete", "step": 3, "steps": 10, "percent": 100}  # finished: 100 %
    assert task.output_location == str(tmp_path / "outputs" / task_id / "out.mp4")
    assert (tmp_path / "outputs" / task_id).is_dir()
