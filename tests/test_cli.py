"""`wan-worker` as an operator uses it: real processes, real databases."""
from __future__ import annotations

import argparse
import json
import socket
import subprocess
import uuid
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa

from conftest import POSTGRES_ADMIN_URL, REPO_ROOT, worker_command
from worker.config import ALL_SETTINGS, WorkerConfig, add_setting_arguments, env_name, flag_name, load_config
from worker.inputs import fetcher_for
from worker.migrate import available_migrations
from worker.store import TaskStore


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(worker_command(*args), cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)


def test_migrate_applies_the_schema_once(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    first = cli("migrate", "--database-url", url)
    second = cli("migrate", "--database-url", url)
    assert (first.returncode, second.returncode) == (0, 0)
    assert json.loads(first.stdout) == {"applied": [f"{m.version}_{m.name}" for m in available_migrations("sqlite")]}
    assert json.loads(second.stdout) == {"applied": []}


def test_submit_prints_an_id_that_status_shows_as_json(sqlite_url: str) -> None:
    submitted = cli("submit", "health_check", "--params", '{"sleep_seconds": 0}', "--priority", "4",
                    "--database-url", sqlite_url)
    task_id = submitted.stdout.strip()
    shown = json.loads(cli("status", task_id, "--database-url", sqlite_url).stdout)
    assert (shown["id"], shown["status"], shown["priority"], shown["params"]) == (
        task_id, "Queued", 4, {"sleep_seconds": 0})


def test_submit_reads_params_from_a_file_and_records_dependencies(sqlite_url: str, sqlite_store: TaskStore,
                                                                   tmp_path: Path) -> None:
    first = sqlite_store.enqueue("health_check", {})
    params = tmp_path / "params.json"
    params.write_text('{"sleep_seconds": 1}')
    task_id = cli("submit", "health_check", "--params", f"@{params}", "--depends-on", first,
                  "--database-url", sqlite_url).stdout.strip()
    task = sqlite_store.get(task_id)
    assert (task.params, task.dependant_on) == ({"sleep_seconds": 1}, [first])


def test_submit_refuses_params_that_are_not_an_object(sqlite_url: str, sqlite_store: TaskStore) -> None:
    result = cli("submit", "health_check", "--params", "[1, 2]", "--database-url", sqlite_url)
    assert result.returncode == 2
    assert "--params must be a JSON object, got list" in result.stderr
    assert sqlite_store.recent() == []


@pytest.mark.parametrize("args, message", [
    (("--depends-on", "not-a-uuid"), "--depends-on not-a-uuid: no such task"),
    (("--depends-on", str(uuid.UUID(int=0))), f"--depends-on {uuid.UUID(int=0)}: no such task"),
    (("--max-attempts", "0"), "--max-attempts: must be >= 1, got 0"),
    (("--params", "@/nonexistent/params.json"), "--params: cannot read /nonexistent/params.json"),
])
def test_submit_refuses_bad_arguments_with_one_line_and_inserts_nothing(
        sqlite_url: str, sqlite_store: TaskStore, args: tuple[str, ...], message: str) -> None:
    result = cli("submit", "health_check", *args, "--database-url", sqlite_url)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert sqlite_store.recent() == []


def test_status_without_an_id_lists_recent_tasks_and_counts(sqlite_url: str, sqlite_store: TaskStore) -> None:
    ids = [sqlite_store.enqueue("health_check", {}) for _ in range(3)]
    sqlite_store.cancel(ids[0])
    lines = cli("status", "--database-url", sqlite_url).stdout.splitlines()
    assert lines[0] == "Cancelled: 1  Queued: 2"
    assert lines[1].split()[:3] == ["id", "task_type", "status"]
    assert {line.split()[0] for line in lines[2:]} == set(ids)


def test_status_names_the_queued_rows_left_for_other_workers(sqlite_url: str, sqlite_store: TaskStore) -> None:
    for task_type in ("qwen_image_edit", "qwen_image_edit", "ltx2", "health_check", "no_such_type"):
        sqlite_store.enqueue(task_type, {})
    lines = cli("status", "--database-url", sqlite_url).stdout.splitlines()
    assert lines[-1] == ("queued for other workers of the ecosystem (a worker without --task-types leaves "
                         "them): ltx2: 1  qwen_image_edit: 2")


def test_status_of_an_unknown_task_exits_1(sqlite_url: str) -> None:
    result = cli("status", str(uuid.uuid4()), "--database-url", sqlite_url)
    assert result.returncode == 1 and "no task" in result.stderr


@pytest.mark.parametrize("command", ["status", "cancel", "submit", "stats"])
def test_a_database_without_the_schema_is_one_line_that_says_to_migrate(tmp_path: Path, command: str) -> None:
    args = {"status": (), "cancel": (str(uuid.uuid4()),), "submit": ("health_check",), "stats": ()}[command]
    (tmp_path / "unmigrated.db").touch()  # an empty SQLite database (a missing file is test_cli_newcomer's)
    result = cli(command, *args, "--database-url", f"sqlite:///{tmp_path / 'unmigrated.db'}")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"wan-worker {command}: database error: no such table: tasks; run `wan-worker migrate` first"]


def test_an_unreachable_database_is_one_line_not_a_traceback() -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = cli("status", "--database-url", f"postgresql://postgres@127.0.0.1:{port}/none")
    assert result.returncode == 1
    assert result.stderr.startswith("wan-worker status: database error: connection failed")
    assert "Traceback" not in result.stderr


def test_cancel_reports_what_it_cancelled_and_exits_1_when_nothing_was(sqlite_url: str, sqlite_store: TaskStore) -> None:
    task_id = sqlite_store.enqueue("health_check", {})
    first = cli("cancel", task_id, "--database-url", sqlite_url)
    second = cli("cancel", task_id, "--database-url", sqlite_url)
    assert (first.returncode, json.loads(first.stdout)) == (0, {"cancelled": 1})
    assert (second.returncode, json.loads(second.stdout)) == (1, {"cancelled": 0})
    assert sqlite_store.get(task_id).status == "Cancelled"


def test_run_once_runs_one_task_and_exits(sqlite_url: str, sqlite_store: TaskStore, tmp_path: Path) -> None:
    first = sqlite_store.enqueue("health_check", {})
    second = sqlite_store.enqueue("health_check", {})
    result = cli("run", "--once", "--database-url", sqlite_url, "--output-dir", str(tmp_path))
    assert result.returncode == 0
    assert (sqlite_store.get(first).status, sqlite_store.get(second).status) == ("Complete", "Queued")


def test_run_logs_json_lines_that_carry_task_id_and_task_type(sqlite_url: str, sqlite_store: TaskStore,
                                                              tmp_path: Path) -> None:
    task_id = sqlite_store.enqueue("health_check", {})
    result = cli("run", "--once", "--database-url", sqlite_url, "--output-dir", str(tmp_path))
    entries = [json.loads(line) for line in result.stderr.splitlines()]  # stderr is not a terminal: JSON
    of_task = [e for e in entries if e.get("task_id") == task_id]
    assert {e["event"] for e in of_task} == {"task claimed", "task complete"}
    assert all(e["task_type"] == "health_check" and e["worker_id"] for e in of_task)


def test_run_refuses_task_types_it_has_no_handler_for_and_claims_nothing(
        sqlite_url: str, sqlite_store: TaskStore, tmp_path: Path) -> None:
    typo = sqlite_store.enqueue("helth_check", {})
    result = cli("run", "--exit-when-idle", "--task-types", "health_check,helth_check",
                 "--database-url", sqlite_url, "--output-dir", str(tmp_path))
    assert result.returncode == 2
    assert "helth_check" in result.stderr and "no handler" in result.stderr
    assert sqlite_store.get(typo).status == "Queued"


def test_run_creates_the_sqlite_schema_itself(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'new.db'}"
    result = cli("run", "--exit-when-idle", "--database-url", url, "--output-dir", str(tmp_path))
    assert result.returncode == 0
    assert "applied migrations" in result.stderr
    assert json.loads(cli("migrate", "--database-url", url).stdout) == {"applied": []}


def test_run_refuses_a_postgres_database_without_the_schema() -> None:
    name = f"wan_worker_unmigrated_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        result = cli("run", "--once", "--database-url", POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + "/" + name)
    finally:
        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    assert result.returncode == 2
    assert "run `wan-worker migrate`" in result.stderr


def test_run_on_a_migrated_postgres_needs_no_right_to_create_tables(postgres_url: str, pg_store: TaskStore,
                                                                     tmp_path: Path) -> None:
    role = f"wan_worker_dml_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        admin.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
        admin.execute(f'CREATE ROLE "{role}" LOGIN')
        admin.execute(f'GRANT SELECT, INSERT, UPDATE, DELETE ON tasks TO "{role}"')
        admin.execute(f'GRANT SELECT ON schema_migrations TO "{role}"')
    task_id = pg_store.enqueue("health_check", {})
    try:
        as_worker = sa.make_url(postgres_url).set(username=role).render_as_string(hide_password=False)
        result = cli("run", "--once", "--database-url", as_worker, "--output-dir", str(tmp_path))
    finally:
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            admin.execute(f'DROP OWNED BY "{role}"')
            admin.execute(f'DROP ROLE "{role}"')
    assert result.returncode == 0, result.stderr[-2000:]
    assert pg_store.get(task_id).status == "Complete"


def test_an_inconsistent_setting_is_a_usage_error(sqlite_url: str) -> None:
    result = cli("run", "--once", "--database-url", sqlite_url, "--lease-seconds", "5", "--heartbeat-seconds", "5")
    assert result.returncode == 2
    assert "heartbeat_seconds (5.0) must be shorter than lease_seconds (5.0)" in result.stderr


def test_worker_start_up_imports_no_torch() -> None:
    probe = ("import sys, worker.cli, worker.poller, worker.handlers as h; h.load_handlers(); "
             "print('torch' in sys.modules)")
    result = subprocess.run([*worker_command()[:1], "-c", probe], cwd=REPO_ROOT, capture_output=True, text=True)
    assert result.stdout.strip() == "False", result.stderr


# ---- settings ------------------------------------------------------------------------------------------

def parse_settings(*flags: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_setting_arguments(parser, ALL_SETTINGS)
    return parser.parse_args(flags)


def test_a_flag_overrides_its_environment_variable_which_overrides_the_default() -> None:
    env = {"WAN_WORKER_LEASE_SECONDS": "30", "WAN_WORKER_ID": "from-env", "WAN_WORKER_TASK_TYPES": "a, b"}
    from_env = load_config(parse_settings(), env)
    from_flag = load_config(parse_settings("--lease-seconds", "40"), env)
    assert (from_env.lease_seconds, from_env.worker_id, from_env.task_types) == (30.0, "from-env", ("a", "b"))
    assert from_flag.lease_seconds == 40.0
    assert load_config(parse_settings(), {}).lease_seconds == WorkerConfig().lease_seconds == 60.0


def test_a_malformed_environment_variable_names_itself() -> None:
    with pytest.raises(ValueError, match="WAN_WORKER_POLL_SECONDS"):
        load_config(parse_settings(), {"WAN_WORKER_POLL_SECONDS": "soon"})


@pytest.mark.parametrize("variable, value", [("WAN_WORKER_LEASE_SECONDS", "inf"), ("WAN_WORKER_POLL_SECONDS", "nan"),
                                             ("WAN_WORKER_GRACE_SECONDS", "inf")])
def test_a_time_setting_must_be_a_finite_number(variable: str, value: str) -> None:
    name = variable.removeprefix("WAN_WORKER_").lower()
    with pytest.raises(ValueError, match=f"{name} must be a finite number"):
        load_config(parse_settings(), {variable: value})


def test_input_dirs_are_a_path_list_of_existing_folders_and_the_output_folder_joins_them(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    config = load_config(parse_settings("--output-dir", str(tmp_path / "out")),
                         {"WAN_WORKER_INPUT_DIRS": f"{tmp_path / 'a'}:{tmp_path / 'b'}"})
    assert config.input_dirs == (tmp_path / "a", tmp_path / "b")
    assert config.local_input_roots == (tmp_path / "a", tmp_path / "b", tmp_path / "out")
    assert load_config(parse_settings(), {}).local_input_roots is None  # default: any local path
    assert fetcher_for(config).local_roots[:2] == (tmp_path / "a", tmp_path / "b")
    with pytest.raises(ValueError, match=f"input_dirs: {tmp_path / 'missing'} is not a folder"):
        load_config(parse_settings("--input-dirs", str(tmp_path / "missing")), {})


def test_url_hosts_are_a_comma_list_and_the_storage_public_host_joins_them() -> None:
    config = load_config(parse_settings("--input-url-hosts", "media.example.com, *.supabase.co",
                                        "--storage-public-url", "https://videos.example.net/outputs"), {})
    assert fetcher_for(config).url_hosts == ("media.example.com", "*.supabase.co", "videos.example.net")
    assert fetcher_for(load_config(parse_settings(), {})).url_hosts is None  # default: any host


def test_the_cache_size_setting_reaches_the_fetcher_in_bytes() -> None:
    assert fetcher_for(load_config(parse_settings("--cache-max-gb", "1.5"), {})).max_cached_bytes == 1.5 * 1024**3
    assert fetcher_for(load_config(parse_settings(), {})).max_cached_bytes is None
    with pytest.raises(ValueError, match="cache_max_gb must be a finite number > 0"):
        load_config(parse_settings("--cache-max-gb", "0"), {})


# ---- the systemd unit --------------------------------------------------------------------------------------

def read_assignments(path: Path) -> dict[str, list[str]]:
    """KEY=value lines of a unit or env file (repeated keys keep every value)."""
    found: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith(("#", "[")):
            key, _, value = line.partition("=")
            found.setdefault(key.strip(), []).append(value.strip())
    return found


def test_the_systemd_unit_outlasts_the_grace_period_and_hears_from_the_worker_within_its_watchdog() -> None:
    unit = read_assignments(REPO_ROOT / "systemd" / "wan-worker@.service")
    env = {key: values[-1] for key, values in read_assignments(REPO_ROOT / "systemd" / "wan-worker.env.example").items()}
    config = load_config(None, env)
    assert unit["Type"] == ["notify"]
    assert "CUDA_VISIBLE_DEVICES=%i" in unit["Environment"]
    assert int(unit["TimeoutStopSec"][0]) > config.grace_seconds + 10
    assert max(config.heartbeat_seconds, config.poll_seconds) < int(unit["WatchdogSec"][0]) / 2


def test_the_readme_documents_every_setting() -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    missing = [name for name in ALL_SETTINGS if f"`{env_name(name)}`" not in readme or f"`{flag_name(name)}`" not in readme]
    assert missing == []
