"""A row whose params the database stores but Python cannot decode (an integer over Python's digit
limit, nesting deeper than its recursion limit) ends Failed with a message; the worker and
`wan-worker status` carry on, and the rows behind it run."""
from __future__ import annotations

import subprocess
from pathlib import Path

import sqlalchemy as sa

from conftest import REPO_ROOT, store_url, worker_command
from worker.config import WorkerConfig
from worker.handlers import HandlerResult, TaskContext, load_handlers
from worker.poller import Worker
from worker.store import TaskStatus, TaskStore

POISON_PARAMS = {
    "00000000-0000-4000-8000-000000000001": '{"sleep_seconds": 1' + "0" * 5000 + "}",  # over 4,300 digits
    "00000000-0000-4000-8000-000000000002": '{"x": ' + "[" * 1000 + "]" * 1000 + "}",  # RecursionError
}
POSTGRES_ONLY = {"00000000-0000-4000-8000-000000000003": '{"sleep_seconds": 1e5000}'}  # jsonb: 5,001 digits


def insert_raw(store: TaskStore, params_json: str, task_id: str) -> None:
    """What a backend's INSERT does: the database accepts the JSON, Python never saw it."""
    cast = "CAST(:params AS jsonb)" if store.db.is_postgres else ":params"
    with store.db.engine.begin() as conn:
        conn.execute(sa.text(f"INSERT INTO tasks (id, task_type, params) VALUES (:id, 'health_check', {cast})"),
                     {"id": task_id, "params": params_json})


def status(store: TaskStore, *task_id: str) -> subprocess.CompletedProcess:
    return subprocess.run(worker_command("status", *task_id, "--database-url", store_url(store)), cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=60)


def test_rows_python_cannot_decode_fail_and_the_rows_behind_them_run(store: TaskStore, tmp_path: Path) -> None:
    poisoned = {**POISON_PARAMS, **(POSTGRES_ONLY if store.db.is_postgres else {})}
    for task_id, params_json in poisoned.items():
        insert_raw(store, params_json, task_id)
    healthy = store.enqueue("health_check", {})

    assert len(store.recent()) == len(poisoned) + 1  # reading the table does not raise
    assert status(store).returncode == 0
    for task_id in poisoned:
        shown = status(store, task_id)
        assert shown.returncode == 0 and "undecodable JSON" in shown.stdout, shown.stderr

    config = WorkerConfig(database_url=store_url(store), worker_id="w", output_dir=tmp_path, poll_seconds=0.05,
                          notify_wakeups=False)
    assert Worker(config, store).run(exit_when_idle=True) == 0

    for task_id in poisoned:
        failed = store.get(task_id)
        assert failed.status == TaskStatus.FAILED and failed.attempts == 1, failed.error_message
        assert failed.error_message.startswith("ValidationError: params: cannot be decoded: ")
        assert len(failed.error_message) < 400
    assert store.get(healthy).status == TaskStatus.COMPLETE


def walks_params(ctx: TaskContext) -> HandlerResult:
    """A handler that recurses into params, as a validator of nested fields does."""
    def depth(value: object) -> int:
        return 1 + max((depth(item) for item in value), default=0) if isinstance(value, list) else 0
    return HandlerResult(result_data={"depth": depth(ctx.task.params["x"])})


def test_params_nested_too_deeply_for_a_handler_fail_at_once(store: TaskStore, tmp_path: Path) -> None:
    nested: list = []
    for _ in range(900):  # Python decodes it, the handler's recursion does not reach the bottom
        nested = [nested]
    task_id = store.enqueue("walks_params", {"x": nested})
    config = WorkerConfig(database_url=store_url(store), worker_id="w", output_dir=tmp_path, poll_seconds=0.05,
                          notify_wakeups=False, retry_base_seconds=0.05, retry_max_seconds=0.1)
    Worker(config, store, handlers={**load_handlers(), "walks_params": walks_params}).run(exit_when_idle=True)

    task = store.get(task_id)
    assert (task.status, task.attempts) == (TaskStatus.FAILED, 1), task.error_message
    assert task.error_message == "ValidationError: params: nested too deeply to process (RecursionError)"
