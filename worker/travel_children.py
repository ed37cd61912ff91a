"""The child rows of a travel job as the other children and the parked orchestrator read them: the
plan a stitch row carries, the segment job a segment row carries, a finished segment's video (on this
box or fetched from its object URL), and the job's progress written onto the orchestrator.

travel_orchestrator writes these rows; travel_segment and travel_stitch read them. Kept out of the
handler modules so that no handler imports another's helpers.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import sqlalchemy as sa

from worker.errors import ValidationError
from worker.handlers import TaskContext
from worker.inputs import fetch_input, is_url
from worker.store import CHILD_KEY_PARAM, Task
from worker.travel.plan import SegmentJob, TravelPlan

SEGMENT_JOB_PARAM = "job"


def stored_plan(params: dict[str, Any]) -> TravelPlan:
    """The plan a stitch row carries in params['plan'], as its orchestrator wrote it; anything else (a
    row written by hand) fails the child for good instead of being retried."""
    try:
        return TravelPlan.from_params(params["plan"])
    except (KeyError, TypeError, ValueError) as error:
        raise ValidationError(
            "plan", f"not a plan written by travel_orchestrator ({type(error).__name__}: {error})") from None


def stored_segment_job(params: dict[str, Any]) -> SegmentJob:
    """The segment job a segment row carries in params['job'], as its orchestrator wrote it."""
    try:
        return SegmentJob.from_params(params[SEGMENT_JOB_PARAM])
    except (KeyError, TypeError, ValueError) as error:
        raise ValidationError(SEGMENT_JOB_PARAM,
                              f"not a segment written by travel_orchestrator ({type(error).__name__}: {error})") from None


def report_job_progress(ctx: TaskContext, segment_count: int, expected_frames: int, *, phase: str,
                        segments_done: int) -> None:
    """Show the job's progress on the parked orchestrator, the row a backend watches: `segments_done`
    of the job's segments, `current` the child writing it, `percent` the share of the job's children
    (the segments and the stitch) finished. A database error is logged, never raised."""
    progress = {
        "phase": phase,
        "segments_done": segments_done,
        "segments": segment_count,
        "percent": round(100.0 * segments_done / (segment_count + 1), 1),
        "current": ctx.task.params.get(CHILD_KEY_PARAM),
        "expected_frames": expected_frames,
    }
    try:
        ctx.store.parent_progress(ctx.claim, progress)
    except sa.exc.SQLAlchemyError as error:
        ctx.log.warning("orchestrator progress not written", error=str(error))


def segment_video(task: Task, field: str) -> Path:
    """The local file of a finished segment's video: its own path, or the copy fetched (once per box)
    from its object URL, so consecutive segments and the stitch may run on different boxes. An object
    not (yet) there is transient, so the task is retried before it fails naming the URL."""
    location = (task.result_data or {}).get("output_object_url") or task.output_location
    if not location:
        raise ValidationError(field, f"segment {task.id} has no output")
    if is_url(location):
        return fetch_input(location, field, missing_is_transient=True)
    path = Path(location)
    if not path.is_file():
        raise ValidationError(field, f"the output of segment {task.id} is gone: {location}")
    return path
