"""The child rows of a travel job as the other children and the parked orchestrator read them: the
plan a stitch row carries, the segment job a segment row carries, a finished segment's video (on this
box or fetched from its object URL), and the job's progress written onto the orchestrator; and, for
every orchestrator's last child (travel_stitch, join_final_stitch), completing the parked job.

travel_orchestrator writes these rows; travel_segment and travel_stitch read them. Kept out of the
handler modules so that no handler imports another's helpers.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from worker.errors import ValidationError
from worker.handlers import TaskContext
from worker.inputs import fetch_input, is_url
from worker.store import CHILD_KEY_PARAM, Task
from worker.params import ParamReader
from worker.travel.plan import HEADLESS_KEY, SegmentJob, TravelPlan

SEGMENT_JOB_PARAM = "job"
PLAN_PARAM = "plan"
# The headless orchestrator's older name of orchestrator_details on its child rows.
LEGACY_HEADLESS_KEY = "full_orchestrator_payload"
HEADLESS_REF = "orchestrator_task_id_ref"


def is_headless_child(params: dict[str, Any]) -> bool:
    """A child row the headless orchestrator wrote: it carries the orchestrator's payload, or names
    the orchestrator row that does."""
    return any(key in params for key in (HEADLESS_KEY, LEGACY_HEADLESS_KEY, HEADLESS_REF))


def headless_payload(ctx: TaskContext, reader: ParamReader) -> dict[str, Any]:
    """The travel payload a headless child row works from: its own copy (`orchestrator_details`, or
    the older `full_orchestrator_payload`) or, where it carries none, the `orchestrator_details` of
    the orchestrator row it names (as the headless segment handler falls back to)."""
    for key in (HEADLESS_KEY, LEGACY_HEADLESS_KEY):
        if reader.has(key):
            reader.used.add(key)
            payload = reader.params[key]
            if not isinstance(payload, dict):
                raise ValidationError(key, "must be an object (the headless orchestrator's payload)")
            return payload
    ref = reader.text(HEADLESS_REF)
    orchestrator = ctx.store.get(ref)
    payload = (orchestrator.params or {}).get(HEADLESS_KEY) if orchestrator is not None else None
    if not isinstance(payload, dict):
        state = "names no row" if orchestrator is None else f"names a row without {HEADLESS_KEY}"
        raise ValidationError(HEADLESS_REF, f"{state} ({ref}); a child row without {HEADLESS_KEY} reads its "
                                            "orchestrator's")
    return payload


def stored_plan(params: dict[str, Any]) -> TravelPlan:
    """The plan a stitch row carries in params['plan'], as its orchestrator wrote it; anything else (a
    row written by hand) fails the child for good instead of being retried."""
    try:
        return TravelPlan.from_params(params[PLAN_PARAM])
    except (KeyError, TypeError, ValueError) as error:
        raise ValidationError(
            PLAN_PARAM, f"not a plan written by travel_orchestrator ({type(error).__name__}: {error})") from None


def stored_segment_job(params: dict[str, Any]) -> SegmentJob:
    """The segment job a segment row carries in params['job'], as its orchestrator wrote it."""
    try:
        return SegmentJob.from_params(params[SEGMENT_JOB_PARAM])
    except (KeyError, TypeError, ValueError) as error:
        raise ValidationError(SEGMENT_JOB_PARAM,
                              f"not a segment written by travel_orchestrator ({type(error).__name__}: {error})") from None


def report_job_progress(ctx: TaskContext, count: int, expected_frames: int | None, *, phase: str, done: int,
                        unit: str = "segments") -> None:
    """Show the job's progress on the parked orchestrator, the row a backend watches: `done` of the
    job's `count` generating children (`<unit>_done` of `<unit>`: a travel job's segments, a join's
    joins), `current` the child writing it, `percent` the share of the job's children (those and the
    stitch) finished. A database error is logged, never raised."""
    progress = {
        "phase": phase,
        f"{unit}_done": done,
        unit: count,
        "percent": round(100.0 * done / (count + 1), 1),
        "current": ctx.task.params.get(CHILD_KEY_PARAM),
        "expected_frames": expected_frames,
    }
    try:
        ctx.store.parent_progress(ctx.claim, progress)
    except sa.exc.SQLAlchemyError as error:
        ctx.log.warning("orchestrator progress not written", error=str(error))


def video_location(task: Task) -> str | None:
    """Where a finished row's video is: in the headless worker's JSON form of output_location, the
    location it holds ({"transition_url": ...} for a join's transition, else "output_location" or
    "url"); else the object URL (result_data.output_object_url), else output_location."""
    document = headless_output(task)
    if document is not None:
        return next((document[key] for key in ("transition_url", "output_location", "url")
                     if isinstance(document.get(key), str) and document[key]), None)
    return result_of(task).get("output_object_url") or task.output_location or None


def headless_output(task: Task) -> dict[str, Any] | None:
    """The headless worker's JSON output_location of a row, as an object; None for any other form."""
    location = task.output_location or ""
    try:
        document = json.loads(location) if location.lstrip().startswith("{") else None
    except json.JSONDecodeError:
        return None
    return document if isinstance(document, dict) else None


def segment_video(task: Task, field: str) -> Path:
    """The local file of a finished segment's video (video_location): the path, or the copy fetched
    (once per box) from its URL, so consecutive segments and the stitch may run on different boxes.
    An object not (yet) there is transient, so the task is retried before it fails naming the URL."""
    location = video_location(task)
    if not location:
        raise ValidationError(field, f"segment {task.id} has no output")
    if is_url(location):
        return fetch_input(location, field, missing_is_transient=True)
    path = Path(location)
    if not path.is_file():
        raise ValidationError(field, f"the output of segment {task.id} is gone: {location}")
    return path


def result_of(task: Task) -> dict[str, Any]:
    """A child's result_data; {} where it holds none (or a row of another worker holds something else)."""
    return task.result_data if isinstance(task.result_data, dict) else {}


def complete_job(ctx: TaskContext, orchestrator_id: str, output: str, summary: dict[str, Any], children: list[Task],
                 own_phases: dict[str, float], started: float) -> None:
    """Complete the parked orchestrator a job's last child finishes (before that child's own row, so
    a backend watching only the orchestrator sees it end) with the job's output and result: `summary`,
    the seconds per phase over `children` and this one, and the time since the orchestrator was
    inserted (`started`: this handler's perf_counter at its start). An orchestrator no longer waiting
    (cancelled, or completed by an earlier run of this child) is left as it is."""
    ctx.raise_if_cancelled()
    orchestrator = ctx.store.get(orchestrator_id)
    job_result = {
        **summary,
        "phase_seconds": job_phase_seconds(children, own_phases, orchestrator),
        "total_seconds": job_total_seconds(ctx.task, orchestrator, time.perf_counter() - started),
    }
    if not ctx.store.complete_parked(ctx.claim, output, job_result):
        status = orchestrator.status if orchestrator is not None else "missing"
        ctx.log.warning("orchestrator not completed: it is no longer waiting",
                        orchestrator_id=orchestrator_id, orchestrator_status=status)


def job_phase_seconds(segments: list[Task], stitch_phases: dict[str, float], orchestrator: Task | None) -> dict[str, float]:
    """The job's seconds per phase: each phase summed over the segments and the stitch, and the
    orchestrator's own queue wait (the children's waits are mostly each other's run time)."""
    totals: dict[str, float] = {}
    for phases in [result_of(task).get("phase_seconds", {}) for task in segments] + [stitch_phases]:
        if not isinstance(phases, dict):
            continue
        for phase, seconds in phases.items():
            if phase != "queue_wait" and isinstance(seconds, (int, float)):
                totals[phase] = totals.get(phase, 0.0) + seconds
    if orchestrator is not None and orchestrator.created_at and orchestrator.generation_started_at:
        totals["queue_wait"] = max(0.0, (orchestrator.generation_started_at - orchestrator.created_at).total_seconds())
    return {phase: round(seconds, 4) for phase, seconds in totals.items()}


def job_total_seconds(stitch_task: Task, orchestrator: Task | None, stitch_elapsed: float) -> float | None:
    """From the orchestrator's insertion to now: the database's times up to this claim, then this
    handler's own elapsed time (no mixing of the two clocks' absolute values)."""
    if orchestrator is None or orchestrator.created_at is None or stitch_task.generation_started_at is None:
        return None
    return round((stitch_task.generation_started_at - orchestrator.created_at).total_seconds() + stitch_elapsed, 4)
