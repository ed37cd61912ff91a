"""Leases against real worker processes: one live process per worker id, and a database outage longer
than the lease does not cost healthy running tasks an attempt."""
from __future__ import annotations

import os
import signal
import subprocess
import time

from conftest import FAST_WORKER_FLAGS, REPO_ROOT, stop_worker, store_url, wait_for, wait_for_status, worker_command
from worker.db import connect
from worker.migrate import migrate
from worker.store import TaskStatus, TaskStore


def test_a_second_live_worker_with_the_same_id_refuses_to_start_but_a_restart_after_a_crash_runs(
        store: TaskStore, start_worker, tmp_path) -> None:
    task_id = store.enqueue("health_check", {"sleep_seconds": 30})
    first = start_worker(store_url(store), *FAST_WORKER_FLAGS, worker_id="twin")
    wait_for(lambda: store.get(task_id).worker_id == "twin", what="the first worker to claim the task")

    second = subprocess.run(
        worker_command("run", "--database-url", store_url(store), "--worker-id", "twin", "--output-dir",
                       str(tmp_path / "outputs"), "--log-format", "json", *FAST_WORKER_FLAGS),
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert second.returncode == 2, second.stdout + second.stderr
    assert "another live worker runs under this worker id" in second.stdout + second.stderr
    task = store.get(task_id)
    assert (task.status, task.worker_id, task.attempts) == (TaskStatus.IN_PROGRESS, "twin", 1)

    os.kill(first.pid, signal.SIGKILL)  # a crash; systemd restarts the worker under the same id
    first.wait()
    start_worker(store_url(store), *FAST_WORKER_FLAGS, worker_id="twin")
    wait_for(lambda: store.get(task_id).attempts == 2 and store.get(task_id).worker_id == "twin",
             what="the restarted worker to rescue and claim the task again")


def test_an_outage_longer_than_the_lease_requeues_no_healthy_running_task(private_postgres, start_worker) -> None:
    store = TaskStore(connect(private_postgres.url))
    migrate(store.db)
    # Maintenance runs far more often than heartbeats: without the grace it would win the race after
    # the outage and requeue the task whose heartbeat had no chance to resume.
    worker = start_worker(private_postgres.url, "--lease-seconds", "1.5", "--heartbeat-seconds", "0.7",
                          "--poll-seconds", "0.2", "--maintenance-seconds", "0.1")
    running = store.enqueue("health_check", {"sleep_seconds": 6})
    wait_for_status(store, running, TaskStatus.IN_PROGRESS)
    store.db.engine.dispose()
    private_postgres.pg_ctl("-m", "fast", "stop")
    time.sleep(3)  # twice the lease
    private_postgres.pg_ctl("start")

    task = wait_for_status(store, running, TaskStatus.COMPLETE)
    assert (task.attempts, task.error_message) == (1, None)
    assert worker.poll() is None
    assert stop_worker(worker) == 0
    store.db.dispose()
