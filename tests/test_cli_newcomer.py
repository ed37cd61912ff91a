"""What a newcomer hits first: `status | head`, commands run in a folder without a database, a typo in
a task type, the demo's closing hint, and paths that are not regular files."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO_ROOT, worker_command
from worker.demo import wan_worker_command
from worker.errors import ValidationError
from worker.params import existing_file
from worker.store import NewTask, TaskStore


def test_status_piped_into_head_prints_no_traceback(sqlite_url: str, sqlite_store: TaskStore) -> None:
    sqlite_store.enqueue_many([NewTask("health_check", {}) for _ in range(1500)])  # far more than a pipe buffer
    status = subprocess.Popen(worker_command("status", "--limit", "1500", "--database-url", sqlite_url), cwd=REPO_ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert status.stdout.readline().startswith("Queued: 1500")
    status.stdout.close()  # what `head -1` does
    assert status.wait(timeout=60) == 0
    assert status.stderr.read() == ""


@pytest.mark.parametrize("command", [["status"], ["status", "00000000-0000-4000-8000-000000000000"], ["stats"],
                                     ["cancel", "00000000-0000-4000-8000-000000000000"], ["submit", "health_check"]])
def test_reading_commands_in_a_folder_without_a_database_create_none(tmp_path: Path, command: list[str]) -> None:
    result = subprocess.run(worker_command(*command), cwd=tmp_path, capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert result.returncode == 1
    assert "no database at wan-worker.db" in result.stderr and "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_submit_refuses_an_unknown_task_type(sqlite_url: str, sqlite_store: TaskStore) -> None:
    result = subprocess.run(worker_command("submit", "helth_check", "--database-url", sqlite_url), cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "unknown task type 'helth_check'; known: " in result.stderr and "health_check" in result.stderr
    assert sqlite_store.recent() == []


def test_the_demo_hint_names_a_command_that_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/usr/bin:/bin")  # the venv is not activated
    hint = wan_worker_command()
    assert hint == str(Path(sys.executable).parent / "wan-worker")
    assert subprocess.run([hint, "--help"], capture_output=True, timeout=60).returncode == 0
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}:/usr/bin:/bin")
    assert wan_worker_command() == "wan-worker"


def test_a_directory_or_a_fifo_is_not_a_regular_file_and_home_is_not_expanded(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    os.mkfifo(tmp_path / "fifo")
    for path, kind in ((tmp_path, "a directory"), (tmp_path / "fifo", "a fifo")):
        with pytest.raises(ValidationError, match=f"not a regular file \\({kind}\\)"):
            existing_file(str(path), "video_guide")
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "guide.mp4").write_bytes(b"\0")
    with pytest.raises(ValidationError, match="file does not exist: ~/guide.mp4"):
        existing_file("~/guide.mp4", "video_guide")
