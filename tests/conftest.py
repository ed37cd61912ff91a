"""Shared fixtures: real databases (Postgres on 127.0.0.1:5432, a SQLite file), worker processes, and a
private throwaway Postgres cluster for tests that restart the server.

Postgres is required: without it these fixtures fail (never skip), so CI cannot pass by skipping."""
from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import psycopg
import pytest

from worker.db import connect
from worker.migrate import migrate
from worker.store import Task, TaskStore

REPO_ROOT = Path(__file__).resolve().parent.parent
POSTGRES_ADMIN_URL = os.environ.get("WAN_WORKER_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")

# Short lease settings for tests: a lost worker is noticed within about a second.
FAST_WORKER_FLAGS = (
    "--lease-seconds", "1.5", "--heartbeat-seconds", "0.3", "--poll-seconds", "0.2",
    "--maintenance-seconds", "0.3", "--retry-base-seconds", "0.05", "--retry-max-seconds", "0.2",
)


# ---- databases ----------------------------------------------------------------------------------------

def _with_database(admin_url: str, name: str) -> str:
    return admin_url.rsplit("/", 1)[0] + "/" + name


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh, migrated database on the shared cluster for this test session, dropped afterwards."""
    name = f"wan_worker_test_{uuid.uuid4().hex[:12]}"
    try:
        admin = psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True)
    except psycopg.OperationalError as error:
        pytest.fail(f"Postgres is required at {POSTGRES_ADMIN_URL} (bash scripts/test.sh starts it): {error}")
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = _with_database(POSTGRES_ADMIN_URL, name)
    db = connect(url)
    migrate(db)
    db.dispose()
    yield url
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def pg_store(postgres_url: str) -> Iterator[TaskStore]:
    """The session database, emptied for this test."""
    store = TaskStore(connect(postgres_url))
    with store.db.engine.begin() as conn:
        conn.exec_driver_sql("TRUNCATE tasks")
    yield store
    store.db.dispose()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'tasks.db'}"
    db = connect(url)
    migrate(db)
    db.dispose()
    return url


@pytest.fixture
def sqlite_store(sqlite_url: str) -> Iterator[TaskStore]:
    store = TaskStore(connect(sqlite_url))
    yield store
    store.db.dispose()


@pytest.fixture(params=["postgres", "sqlite"])
def store(request: pytest.FixtureRequest) -> TaskStore:
    """The same behaviour on both dialects."""
    return request.getfixturevalue("pg_store" if request.param == "postgres" else "sqlite_store")


def store_url(store: TaskStore) -> str:
    return store.db.engine.url.render_as_string(hide_password=False)


# ---- worker processes ---------------------------------------------------------------------------------

def worker_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "worker.cli", *args]


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen]]:
    """Start `wan-worker run` processes (JSON logs to a file each); any still running at the end of the
    test is killed."""
    started: list[subprocess.Popen] = []

    def start(database_url: str, *args: str, worker_id: str | None = None,
              env: dict[str, str] | None = None) -> subprocess.Popen:
        worker_id = worker_id or f"test-worker-{len(started)}"
        log = open(tmp_path / f"{worker_id}.log", "w")
        command = worker_command(
            "run", "--database-url", database_url, "--worker-id", worker_id,
            "--output-dir", str(tmp_path / "outputs"), "--log-format", "json", *args,
        )
        process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT,
                                   env={**os.environ, **(env or {})})
        log.close()
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait()


def wait_for(predicate: Callable[[], object], *, timeout_seconds: float = 60.0, what: str = "condition") -> object:
    """Poll until predicate() is truthy; fail the test (not hang) after timeout_seconds."""
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_seconds}s waiting for {what}")


def wait_for_status(store: TaskStore, task_id: str, status: str, **kwargs: float) -> Task:
    def reached() -> Task | None:
        task = store.get(task_id)
        return task if task is not None and task.status == status else None

    return wait_for(reached, what=f"task {task_id} to be {status}", **kwargs)  # type: ignore[return-value]


def backdate(store: TaskStore, task_id: str, days: int) -> None:
    """Make a row look inserted `days` ago (created_at and its default run_after)."""
    if store.db.is_postgres:
        shift = f"interval '{days} days'"
        sql = f"UPDATE tasks SET created_at = created_at - {shift}, run_after = run_after - {shift} WHERE id = '{task_id}'"
    else:
        shift = "strftime('%Y-%m-%d %H:%M:%f', {}, '-" + str(days) + " days')"
        sql = (f"UPDATE tasks SET created_at = {shift.format('created_at')}, run_after = {shift.format('run_after')} "
               f"WHERE id = '{task_id}'")
    with store.db.engine.begin() as conn:
        conn.exec_driver_sql(sql)


def stop_worker(process: subprocess.Popen, timeout_seconds: float = 30.0) -> int:
    process.send_signal(signal.SIGTERM)
    return process.wait(timeout=timeout_seconds)


# ---- a private Postgres cluster -----------------------------------------------------------------------

def _postgres_binary(name: str) -> str:
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None)
    if found is None:
        pytest.fail(f"{name} not found: the Postgres server binaries are required")
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class PrivateCluster:
    """A throwaway Postgres server (its own data directory and port) that a test may restart."""

    folder: Path
    port: int

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def pg_ctl(self, *args: str) -> None:
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off"
        command = [_postgres_binary("pg_ctl"), "-D", str(self.folder / "data"), "-l", str(self.folder / "log"),
                   "-o", options, "-w", *args]
        subprocess.run(_as_postgres_user(command), check=True, capture_output=True)

    def restart(self) -> None:
        self.pg_ctl("-m", "fast", "restart")


def _as_postgres_user(command: list[str]) -> list[str]:
    """The server refuses to run as root; under root, run it as the postgres user."""
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


@pytest.fixture
def private_postgres() -> Iterator[PrivateCluster]:
    folder = Path(tempfile.mkdtemp(prefix="wan-worker-pg-"))
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres")
    cluster = PrivateCluster(folder=folder, port=free_port())
    subprocess.run(
        _as_postgres_user([_postgres_binary("initdb"), "-D", str(folder / "data"), "-A", "trust", "-U", "postgres",
                           "--no-sync", "-E", "UTF8"]),
        check=True, capture_output=True,
    )
    cluster.pg_ctl("start")
    yield cluster
    cluster.pg_ctl("-m", "immediate", "stop")
    shutil.rmtree(folder, ignore_errors=True)


# ---- tiny Wan models ----------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def tiny_models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models folder with every tiny checkpoint, the tiny tokenizer and the tiny LoRAs
    (`python -m wan_engine.testing DIR`), written once per session."""
    from wan_engine.testing import write_tiny_models

    return write_tiny_models(tmp_path_factory.mktemp("tiny_models"))
