"""Queue benchmark: how fast real `wan-worker run` processes drain health_check tasks, and how long a
task waits between its INSERT and its claim, with NOTIFY wake-ups and with polling alone.

Prints one JSON object. Every duration comes from the database clock (created_at,
generation_started_at, generation_processed_at), so process start-up is not counted:
  throughput = tasks / (last generation_processed_at - first generation_started_at)
  latency    = generation_started_at - created_at, per task, inserted one at a time into an idle fleet

    .venv/bin/python bench/task_queue.py                       # throwaway database on 127.0.0.1:5432
    .venv/bin/python bench/task_queue.py --workers 1,2,4,8 --tasks 2000

(Not bench/queue.py: a file of that name in bench/ would shadow the standard library's `queue` for
every `python bench/<script>.py`, and `import torch` fails.)
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import psycopg
import sqlalchemy as sa

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from worker.db import connect  # noqa: E402
from worker.migrate import migrate  # noqa: E402
from worker.store import NewTask, TaskStore  # noqa: E402

ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
WORKER_FLAGS = ("--heartbeat-seconds", "5", "--lease-seconds", "30", "--log-level", "warning")


@contextmanager
def throwaway_postgres(admin_url: str) -> Iterator[str]:
    name = f"wan_worker_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield admin_url.rsplit("/", 1)[0] + "/" + name
    finally:
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def workers(url: str, count: int, *flags: str) -> Iterator[list[subprocess.Popen]]:
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "worker.cli", "run", "--database-url", url, "--worker-id", f"bench-{i}",
             *WORKER_FLAGS, *flags],
            cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        for i in range(count)
    ]
    try:
        yield processes
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            process.wait(timeout=60)


def scalar(store: TaskStore, sql: str) -> object:
    with store.db.engine.begin() as conn:
        return conn.execute(sa.text(sql)).scalar()


def wait_until(predicate, timeout_seconds: float = 300.0) -> None:
    deadline = time.monotonic() + timeout_seconds
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("benchmark stalled")
        time.sleep(0.05)


def wait_for_listeners(store: TaskStore, count: int) -> None:
    """Postgres: every worker has its LISTEN connection (so it finished starting)."""
    wait_until(lambda: scalar(store, "SELECT count(*) FROM pg_stat_activity "
                                     "WHERE datname = current_database() AND query LIKE 'LISTEN %'") >= count)


def empty(store: TaskStore) -> None:
    with store.db.engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM tasks"))


def seconds_between(store: TaskStore, first: str, last: str) -> float:
    if store.db.is_postgres:
        return float(scalar(store, f"SELECT extract(epoch FROM max({last}) - min({first})) FROM tasks"))
    return float(scalar(store, f"SELECT (julianday(max({last})) - julianday(min({first}))) * 86400 FROM tasks"))


def throughput(store: TaskStore, url: str, worker_count: int, task_count: int) -> float:
    """Tasks per second for `worker_count` workers draining `task_count` queued health checks."""
    empty(store)
    with workers(url, worker_count, "--poll-seconds", "0.5"):
        if store.db.is_postgres:
            wait_for_listeners(store, worker_count)
        else:
            time.sleep(2.0)  # start-up; not counted anyway (database timestamps)
        store.enqueue_many([NewTask("health_check", {}) for _ in range(task_count)])
        if store.db.is_postgres:
            # Steady state: autovacuum keeps the queue's statistics fresh (migration 0001). Right after a
            # bulk insert into a never-analysed table the planner may sort all queued rows per claim.
            with store.db.transaction() as conn:
                conn.execute(sa.text("ANALYZE tasks"))
        wait_until(lambda: scalar(store, "SELECT count(*) FROM tasks WHERE status = 'Complete'") == task_count)
    return task_count / seconds_between(store, "generation_started_at", "generation_processed_at")


def insert_to_claim_ms(store: TaskStore, url: str, *, notify: bool, tasks: int, gap_seconds: float) -> dict:
    """p50/p99 of created_at -> generation_started_at for tasks inserted one by one into one idle worker."""
    empty(store)
    flags = ("--notify-wakeups", "true") if notify else ("--notify-wakeups", "false", "--poll-seconds", "2")
    with workers(url, 1, *flags):
        if notify:
            wait_for_listeners(store, 1)
        else:
            time.sleep(2.0)
        for _ in range(tasks):
            store.enqueue("health_check", {})
            time.sleep(gap_seconds)
        wait_until(lambda: scalar(store, "SELECT count(*) FROM tasks WHERE status = 'Complete'") == tasks)
    with store.db.engine.begin() as conn:
        rows = conn.execute(sa.text(
            "SELECT extract(epoch FROM generation_started_at - created_at) * 1000 FROM tasks")).scalars().all()
    latencies = sorted(float(ms) for ms in rows)
    quantiles = statistics.quantiles(latencies, n=100, method="inclusive")
    return {"p50": round(quantiles[49], 1), "p99": round(quantiles[98], 1), "max": round(latencies[-1], 1),
            "tasks": tasks}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--admin-url", default=ADMIN_URL, help="a Postgres database to create the bench database from")
    parser.add_argument("--workers", default="1,2,4,8", help="worker counts for the throughput runs")
    parser.add_argument("--tasks", type=int, default=2000, help="tasks per throughput run")
    parser.add_argument("--latency-tasks", type=int, default=100)
    parser.add_argument("--sqlite-workers", default="1,2", help="worker counts on SQLite ('' to skip)")
    args = parser.parse_args()
    counts = [int(n) for n in args.workers.split(",")]
    load_before = os.getloadavg()
    started = time.monotonic()
    report: dict = {"machine": {"cpus": os.cpu_count(), "load_average_1m_before": round(load_before[0], 2)}}

    with throwaway_postgres(args.admin_url) as url:
        store = TaskStore(connect(url))
        migrate(store.db)
        report["postgres_tasks_per_second"] = {
            str(n): round(throughput(store, url, n, args.tasks), 1) for n in counts}
        report["insert_to_claim_ms"] = {
            "notify": insert_to_claim_ms(store, url, notify=True, tasks=args.latency_tasks, gap_seconds=0.05),
            "polling_only_2s": insert_to_claim_ms(store, url, notify=False, tasks=args.latency_tasks // 2,
                                                  gap_seconds=0.1),
        }
        store.db.dispose()

    if args.sqlite_workers:
        with tempfile.TemporaryDirectory() as folder:
            url = f"sqlite:///{folder}/bench.db"
            store = TaskStore(connect(url))
            migrate(store.db)
            report["sqlite_tasks_per_second"] = {
                n: round(throughput(store, url, int(n), args.tasks // 2), 1) for n in args.sqlite_workers.split(",")}
            store.db.dispose()

    report["machine"]["load_average_1m_after"] = round(os.getloadavg()[0], 2)
    report["wall_seconds"] = round(time.monotonic() - started, 1)
    four = report["postgres_tasks_per_second"].get("4")
    report["bars"] = {
        "tasks_per_second_4_workers_at_least_300": None if four is None else four >= 300,
        "notify_p50_insert_to_claim_under_50_ms": report["insert_to_claim_ms"]["notify"]["p50"] < 50,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
