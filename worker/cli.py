"""`wan-worker`: the command line. Each subcommand is one function plus one entry in SUBCOMMANDS.

A subcommand whose module is heavy (torch) names its function as "module:function"; it is imported only
when that subcommand runs, so `wan-worker run` starts fast.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from sqlalchemy import exc as sa_exc

from worker.config import ALL_SETTINGS, CONNECTION_SETTINGS, WorkerConfig, add_setting_arguments, load_config
from worker.logging import configure_logging
from worker.models_cli import add_models_arguments

Command = Callable[[argparse.Namespace, WorkerConfig], int]
PRELOAD_TIMEOUT_USEC = 30 * 60 * 1_000_000  # systemd start-up time granted to --preload-model


@dataclass(frozen=True)
class Subcommand:
    name: str
    help: str
    run: Command | str  # a function, or "module:function" imported when the subcommand runs
    add_arguments: Callable[[argparse.ArgumentParser], None] = lambda _parser: None
    settings: Sequence[str] = CONNECTION_SETTINGS

    def resolve(self) -> Command:
        if callable(self.run):
            return self.run
        module, _, function = self.run.partition(":")
        return getattr(importlib.import_module(module), function)


# ---- migrate -------------------------------------------------------------------------------------------

def migrate_command(args: argparse.Namespace, config: WorkerConfig) -> int:
    from worker.db import connect
    from worker.migrate import migrate

    db = connect(config.database_url)
    applied = migrate(db)
    print(json.dumps({"applied": [f"{m.version}_{m.name}" for m in applied]}))
    db.dispose()
    return 0


# ---- run ---------------------------------------------------------------------------------------------

def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    stop = parser.add_mutually_exclusive_group()
    stop.add_argument("--once", action="store_true", help="run at most one task, then exit")
    stop.add_argument("--exit-when-idle", action="store_true", help="exit when no task is ready to claim")


def run_command(args: argparse.Namespace, config: WorkerConfig) -> int:
    """Run the worker. On SQLite (the embedded default) missing migrations are applied first; on Postgres
    the schema is the operator's step (`wan-worker migrate`) and a missing one stops the start."""
    import structlog

    from wan_engine.errors import DeviceFault, LoadError, UnknownModel, WeightsMissing
    from worker import sdnotify
    from worker.db import connect
    from worker.handlers import left_for_other_workers, load_handlers
    from worker.metrics import serve_worker_metrics
    from worker.migrate import migrate, pending_migrations
    from worker.poller import EXIT_DEVICE_FAULT, Worker
    from worker.resources import WorkerResources
    from worker.store import TaskStore

    log = structlog.get_logger("worker")
    db = connect(config.database_url)
    if db.is_postgres:
        pending = pending_migrations(db)
        if pending:
            log.error("schema is not up to date; run `wan-worker migrate`", pending=[m.version for m in pending])
            return 2
    else:
        applied = migrate(db)
        if applied:
            log.info("applied migrations", applied=[m.version for m in applied])
    resources = WorkerResources.from_config(config)
    if config.metrics_port is None:
        store = TaskStore(db)
    else:
        left_queued = left_for_other_workers(config.task_types, load_handlers())
        store = serve_worker_metrics(config.metrics_port, db, resources, config.task_types, left_queued)
    if config.preload_model:
        # Loading a 14B model can outlast the unit's TimeoutStartSec: ask systemd for more time first.
        sdnotify.notify(f"STATUS=loading {config.preload_model}", f"EXTEND_TIMEOUT_USEC={PRELOAD_TIMEOUT_USEC}")
        try:
            resources.load_model(config.preload_model)
        except (UnknownModel, WeightsMissing, LoadError) as error:
            log.error("cannot preload the model", model=config.preload_model, error=str(error))
            return 2
        except DeviceFault as error:
            log.error("device failed while preloading; exiting for a restart", error=str(error))
            return EXIT_DEVICE_FAULT
        log.info("model preloaded", model=resources.loaded_model)
    worker = Worker(config, store, resources=resources)
    unknown = sorted(set(config.task_types or ()) - set(worker.handlers))
    if unknown:
        # Such a worker would claim those rows only to fail them, rows a worker that knows them could run.
        log.error("--task-types names task types this worker has no handler for", unknown=unknown,
                  known=sorted(worker.handlers))
        return 2
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda _signum, _frame: worker.request_stop())
    try:
        return worker.run(once=args.once, exit_when_idle=args.exit_when_idle)
    finally:
        db.dispose()


# ---- submit / status / cancel ------------------------------------------------------------------------

def _positive_int(text: str) -> int:
    """An argparse type: an integer >= 1 (a bad value is a usage error, not a database error)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def add_submit_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("task_type")
    parser.add_argument("--params", default="{}", help="a JSON object, or @file holding one")
    parser.add_argument("--priority", type=int, default=0, help="higher is claimed first")
    parser.add_argument("--depends-on", nargs="+", action="extend", default=[], metavar="ID",
                        help="claimable only when all these tasks are Complete (each must exist)")
    parser.add_argument("--max-attempts", type=_positive_int, default=3)
    parser.add_argument("--project-id")


def submit_command(args: argparse.Namespace, config: WorkerConfig) -> int:
    from worker.handlers import load_handlers
    from worker.store import TaskStore

    known = load_handlers()
    if args.task_type not in known:
        # A row of a type no worker runs would wait forever (or fail later): refuse it here.
        print(f"unknown task type {args.task_type!r}; known: {', '.join(sorted(known))}", file=sys.stderr)
        return 2
    try:
        text = Path(args.params[1:]).read_text() if args.params.startswith("@") else args.params
    except OSError as error:
        print(f"--params: cannot read {args.params[1:]}: {error.strerror}", file=sys.stderr)
        return 2
    try:
        params = json.loads(text)
    except json.JSONDecodeError as error:
        print(f"--params is not valid JSON: {error}", file=sys.stderr)
        return 2
    if not isinstance(params, dict):
        print(f"--params must be a JSON object, got {type(params).__name__}", file=sys.stderr)
        return 2
    db = existing_database(config.database_url)
    if db is None:
        return 1
    store = TaskStore(db)
    try:
        # A dependency that names no row would keep the task waiting forever: refuse it here.
        dependencies = [store.get(dependency) for dependency in args.depends_on]
        for dependency, found in zip(args.depends_on, dependencies):
            if found is None:
                print(f"--depends-on {dependency}: no such task", file=sys.stderr)
                return 2
        task_id = store.enqueue(
            args.task_type, params, priority=args.priority, dependant_on=[task.id for task in dependencies],
            max_attempts=args.max_attempts, project_id=args.project_id,
        )
    finally:
        store.db.dispose()
    print(task_id)
    return 0


def add_status_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("task_id", nargs="?", help="one task as JSON; without it, a table of recent tasks")
    parser.add_argument("--limit", type=_positive_int, default=20, help="rows in the table")


def status_command(args: argparse.Namespace, config: WorkerConfig) -> int:
    from worker.handlers import OTHER_WORKERS_TASK_TYPES
    from worker.store import TaskStore

    db = existing_database(config.database_url)
    if db is None:
        return 1
    store = TaskStore(db)
    try:
        if args.task_id:
            task = store.get(args.task_id)
            if task is None:
                print(f"no task {args.task_id}", file=sys.stderr)
                return 1
            print(json.dumps(task.as_json(), indent=2))
            return 0
        counts = store.count_by_status()
        print("  ".join(f"{status}: {n}" for status, n in sorted(counts.items())) or "no tasks")
        rows = [(t.id, t.task_type, t.status, f"{t.attempts}/{t.max_attempts}", t.worker_id or "",
                 t.created_at.strftime("%Y-%m-%d %H:%M:%S") if t.created_at else "", (t.error_message or "")[:60])
                for t in store.recent(args.limit)]
        header = ("id", "task_type", "status", "attempts", "worker", "created (UTC)", "error")
        widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]
        for row in (header, *rows):
            print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip())
        others = {task_type: n for task_type, n in sorted(store.queued_by_type().items())
                  if task_type in OTHER_WORKERS_TASK_TYPES}
        if others:
            print("queued for other workers of the ecosystem (a worker without --task-types leaves them): "
                  + "  ".join(f"{task_type}: {n}" for task_type, n in others.items()))
        return 0
    finally:
        store.db.dispose()


def existing_database(url: str) -> Any:
    """The database at `url` (worker.db.Database), or None after saying so when it is a SQLite file
    that does not exist: reading commands must not leave an empty wan-worker.db behind."""
    from sqlalchemy.engine import make_url

    from worker.db import connect, normalise_url

    sa_url = make_url(normalise_url(url))
    if sa_url.get_backend_name() == "sqlite" and sa_url.database and not Path(sa_url.database).is_file():
        print(f"no database at {sa_url.database}: run `wan-worker migrate` (or `wan-worker run`) there first, "
              "or give --database-url", file=sys.stderr)
        return None
    return connect(url)


def add_cancel_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("task_id")


def cancel_command(args: argparse.Namespace, config: WorkerConfig) -> int:
    """Exit 1 when nothing was cancelled (no such task, or it had already ended)."""
    from worker.store import TaskStore

    db = existing_database(config.database_url)
    if db is None:
        return 1
    store = TaskStore(db)
    cancelled = store.cancel(args.task_id)
    store.db.dispose()
    print(json.dumps({"cancelled": cancelled}))
    return 0 if cancelled else 1


# ---- stats / compare / demo ----------------------------------------------------------------------------

def add_stats_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--since", help="only rows created since: a duration (90m, 24h, 7d) or an ISO date/time")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")


def add_compare_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("videos", nargs="+", type=Path, help="two or more mp4 files (e.g. Wan 2.1 vs 2.2 outputs)")
    parser.add_argument("--labels", nargs="+", help="one label per video (default: file names)")
    parser.add_argument("--out-dir", type=Path, default=Path("compare"), help="where the outputs go [compare]")


def compare_command(args: argparse.Namespace, config: WorkerConfig) -> int:
    """Side-by-side video, contact sheet and compare.json (printed) for the given videos."""
    from worker.compare import compare
    from worker.video import FFmpegError

    try:
        report = compare(args.videos, args.out_dir, labels=args.labels)
    except (ValueError, OSError, FFmpegError) as error:  # bad paths, unreadable videos, label count
        print(f"wan-worker compare: {error}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2))
    return 0


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dir", type=Path, default=Path("demo"),
                        help="folder for the tiny models, the SQLite file, keyframes and outputs [demo]")
    parser.add_argument("--model", default="tiny_vace_2_2", help="tiny VACE model to run [tiny_vace_2_2]")
    parser.add_argument("--steps", type=int, default=4, help="denoising steps per segment [4]")


SUBCOMMANDS: list[Subcommand] = [
    Subcommand("migrate", "create or upgrade the schema (twice is a no-op)", migrate_command),
    Subcommand("run", "claim and run tasks until SIGTERM", run_command, add_run_arguments, ALL_SETTINGS),
    Subcommand("submit", "insert a task; prints its id", submit_command, add_submit_arguments),
    Subcommand("status", "one task as JSON, or recent tasks", status_command, add_status_arguments),
    Subcommand("cancel", "cancel a task, its children and its dependants", cancel_command, add_cancel_arguments),
    Subcommand("stats", "counts and phase timings per model/preset and task type (fleet-wide, from SQL)",
               "worker.stats:stats_command", add_stats_arguments),
    Subcommand("compare", "side-by-side video, contact sheet, PSNR/SSIM/flicker JSON of two or more videos",
               compare_command, add_compare_arguments, ("log_format", "log_level")),
    Subcommand("models", "list, download (from the Hugging Face hub) and verify model weight files",
               "worker.models_cli:models_command", add_models_arguments, ()),
    Subcommand("demo", "a whole travel job on the tiny model: SQLite, CPU, under two minutes",
               "worker.demo:demo_command", add_demo_arguments, ("device", "log_format", "log_level")),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wan-worker", description="Headless Wan video-generation worker.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for sub in SUBCOMMANDS:
        sub_parser = commands.add_parser(sub.name, help=sub.help, description=sub.help)
        sub.add_arguments(sub_parser)
        add_setting_arguments(sub_parser, sub.settings)
        sub_parser.set_defaults(subcommand=sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = load_config(args)
    except ValueError as error:
        parser.error(str(error))
    configure_logging(config.log_format, config.log_level)
    try:
        return args.subcommand.resolve()(args, config)
    except sa_exc.DBAPIError as error:  # unreachable server, missing schema: one line, not a traceback
        print(f"wan-worker {args.command}: {database_error_line(error)}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # The reader went away (`wan-worker status | head`): not an error. Point stdout at /dev/null
        # so the interpreter's final flush does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def database_error_line(error: sa_exc.DBAPIError) -> str:
    """The driver's message in one line, with the fix when the schema is missing."""
    text = " ".join(str(error.orig).split())
    missing_schema = isinstance(error, sa_exc.ProgrammingError) or "no such table" in text
    return f"database error: {text}" + ("; run `wan-worker migrate` first" if missing_schema else "")


if __name__ == "__main__":
    sys.exit(main())
