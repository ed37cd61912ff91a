"""A read-only, full or missing output folder is not the tasks' fault: the worker refuses to start on
one it cannot write, and a worker whose storage breaks under it requeues the task and stops claiming
after max_storage_errors in a row (exit 74), instead of draining the queue into Failed."""
from __future__ import annotations

import shutil
from pathlib import Path

from conftest import store_url
from worker.config import WorkerConfig
from worker.handlers import HandlerResult, TaskContext, load_handlers
from worker.paths import writing_new_file
from worker.poller import EXIT_STORAGE, Worker
from worker.store import TaskStatus, TaskStore


def writes_output(ctx: TaskContext) -> HandlerResult:
    """What every generation does last: write its file into the task's folder. With `break_storage`
    the output folder turns into a file first: the disk failed under the running worker."""
    if ctx.task.params.get("break_storage"):
        shutil.rmtree(ctx.config.output_dir)
        Path(ctx.config.output_dir).write_text("the disk went away")
    path = ctx.output_dir / "out.bin"
    with writing_new_file(path) as file:
        file.write(b"frames")
    return HandlerResult(output_location=str(path))


def make_worker(store: TaskStore, output_dir: Path) -> Worker:
    config = WorkerConfig(database_url=store_url(store), worker_id="w", output_dir=output_dir, poll_seconds=0.05,
                          notify_wakeups=False, retry_base_seconds=30)
    return Worker(config, store, handlers={**load_handlers(), "writes_output": writes_output})


def test_a_worker_that_cannot_write_its_output_folder_claims_nothing_and_says_why(
        store: TaskStore, tmp_path: Path, capsys) -> None:
    (tmp_path / "a-file").write_text("not a folder")
    task_id = store.enqueue("writes_output", {})

    assert make_worker(store, tmp_path / "a-file" / "outputs").run(exit_when_idle=True) == EXIT_STORAGE

    assert "output storage unusable" in capsys.readouterr().out
    task = store.get(task_id)
    assert (task.status, task.attempts) == (TaskStatus.QUEUED, 0)


def test_storage_that_breaks_under_a_worker_stops_it_without_failing_the_queue(store: TaskStore, tmp_path: Path) -> None:
    first = store.enqueue("writes_output", {}, priority=2)
    breaking = store.enqueue("writes_output", {"break_storage": True}, priority=1)
    queued = [store.enqueue("writes_output", {}) for _ in range(4)]
    worker = make_worker(store, tmp_path / "outputs")

    assert worker.run(exit_when_idle=True) == EXIT_STORAGE

    assert store.get(first).status == TaskStatus.COMPLETE
    tasks = [store.get(task_id) for task_id in (breaking, *queued)]
    assert all(task.status == TaskStatus.QUEUED for task in tasks)  # none Failed
    tried = [task for task in tasks if task.attempts == 1]
    assert len(tried) == worker.config.max_storage_errors == 2
    assert all(task.error_message.startswith("StorageError: cannot create the output folder") for task in tried)
