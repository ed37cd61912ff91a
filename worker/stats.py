"""`wan-worker stats`: how the fleet's tasks went, per model/preset and task type: counts by outcome
and p50/p90 of each phase (queue wait, model load, text encoding, each expert's denoising, decoding,
video encoding, stitching) from result_data.phase_seconds.

Every number is computed by the database (worker/sql/stats_<dialect>.sql), so one command run
anywhere covers every worker writing to the table. This is the "Wan 2.1 vs Wan 2.2" view: put the
two models' rows side by side and read where the seconds go.
"""
from __future__ import annotations

import functools
import json
import re
import sys
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any, Sequence

import sqlalchemy as sa

from worker.db import SQL_DIR, Database, load_queries

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_SQLITE_TIME_FORMAT = "%Y-%m-%d %H:%M:%S.%f"


@dataclass(frozen=True)
class Since:
    """A lower bound on created_at: a look-back from the database clock, or an absolute time."""

    seconds: float | None = None
    time: datetime | None = None

    def bind(self, db: Database) -> dict[str, Any]:
        if self.time is None:
            return {"since_seconds": self.seconds, "since_time": None}
        if db.is_postgres:
            return {"since_seconds": None, "since_time": self.time}
        utc = self.time.astimezone(timezone.utc)
        return {"since_seconds": None, "since_time": utc.strftime(_SQLITE_TIME_FORMAT)[:-3]}


def parse_since(text: str) -> Since:
    """'90m', '24h', '7d', '2w' (look back from now) or an ISO 8601 date/time (naive means UTC)."""
    match = _DURATION.match(text)
    if match:
        return Since(seconds=float(match.group(1)) * _UNIT_SECONDS[match.group(2)])
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"--since: expected a duration like 24h / 7d or an ISO date like 2025-01-31, got {text!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return Since(time=moment)


@dataclass(frozen=True)
class TaskCounts:
    model: str
    preset: str
    task_type: str
    tasks: int
    complete: int
    failed: int
    cancelled: int
    pending: int


@dataclass(frozen=True)
class PhaseStats:
    model: str
    preset: str
    task_type: str
    phase: str
    samples: int
    p50_seconds: float
    p90_seconds: float


@dataclass(frozen=True)
class FleetStats:
    counts: list[TaskCounts]
    phases: list[PhaseStats]

    def as_json(self) -> dict[str, Any]:
        return {"counts": [asdict(row) for row in self.counts], "phases": [asdict(row) for row in self.phases]}


def _queries(db: Database) -> dict[str, sa.TextClause]:
    return _stats_queries("stats_postgres.sql" if db.is_postgres else "stats_sqlite.sql")


@functools.cache
def _stats_queries(file_name: str) -> dict[str, sa.TextClause]:
    """Parsed once per process: the metrics endpoint runs oldest_ready_task_age at every scrape."""
    return {key: sa.text(sql) for key, sql in load_queries(SQL_DIR / file_name).items()}


def collect_stats(db: Database, since: Since | None = None) -> FleetStats:
    """Counts and phase percentiles of every row created since `since` (all rows when None)."""
    queries = _queries(db)
    bound = (since or Since()).bind(db)
    with db.engine.begin() as conn:
        counts = [
            TaskCounts(**{**row, **{key: int(row[key]) for key in ("tasks", "complete", "failed", "cancelled", "pending")}})
            for row in conn.execute(queries["task_counts"], bound).mappings()
        ]
        phases = [
            PhaseStats(
                model=row["model"], preset=row["preset"], task_type=row["task_type"], phase=row["phase"],
                samples=int(row["samples"]), p50_seconds=float(row["p50_seconds"]), p90_seconds=float(row["p90_seconds"]),
            )
            for row in conn.execute(queries["phase_percentiles"], bound).mappings()
        ]
    return FleetStats(counts=counts, phases=phases)


def oldest_ready_task_age_seconds(db: Database, task_types: Sequence[str] | None = None,
                                  left_queued: Sequence[str] = ()) -> float | None:
    """How long the longest-waiting claimable row has been claimable (None when none is), among the
    rows a worker with this claim filter (TaskStore.claim's) would take."""
    params = {"task_types": db.encode_text_array(task_types), "left_queued": db.encode_text_array(left_queued)}
    with db.engine.begin() as conn:
        age = conn.execute(_queries(db)["oldest_ready_task_age"], params).scalar()
    return None if age is None else max(0.0, float(age))


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(cell) for cell in column) for column in zip(headers, *rows)]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in [headers, *rows]]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def format_stats(stats: FleetStats) -> str:
    """Two plain-text tables: outcomes per model/preset/task type, then phase timings."""
    if not stats.counts:
        return "no tasks in this period"
    counts = _table(
        ["model", "preset", "task_type", "tasks", "complete", "failed", "cancelled", "pending"],
        [[r.model, r.preset, r.task_type, str(r.tasks), str(r.complete), str(r.failed), str(r.cancelled), str(r.pending)]
         for r in stats.counts],
    )
    if not stats.phases:
        return counts + "\n\nno completed task recorded phase timings"
    phases = _table(
        ["model", "preset", "task_type", "phase", "n", "p50_s", "p90_s"],
        [[r.model, r.preset, r.task_type, r.phase, str(r.samples), f"{r.p50_seconds:.3f}", f"{r.p90_seconds:.3f}"]
         for r in stats.phases],
    )
    return f"{counts}\n\n{phases}"


def stats_json(stats: FleetStats) -> str:
    return json.dumps(stats.as_json(), indent=2)


def stats_command(args: Any, config: Any) -> int:
    """`wan-worker stats [--since 24h] [--json]` (args.since, args.json; config.database_url)."""
    from worker.cli import existing_database

    try:
        since = parse_since(args.since) if args.since else None
    except ValueError as error:
        print(error, file=sys.stderr)
        return 2
    db = existing_database(config.database_url)
    if db is None:
        return 1
    try:
        stats = collect_stats(db, since)
    finally:
        db.dispose()
    print(stats_json(stats) if args.json else format_stats(stats))
    return 0
