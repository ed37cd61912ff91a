"""`travel_stitch`: the last child of a travel job. Cross-fades the segment videos into one mp4
(worker/travel/stitch.py), writes it with a thumbnail to its own folder and row, and completes the
parked orchestrator with the same video and a summary of the whole job. When it starts, the
orchestrator's progress moves to the "stitch" phase.

The orchestrator is completed before this row (whose completion the poller writes after the handler
returns), so a backend that watches only the orchestrator sees it end. If this worker dies in
between, the stitch runs again, rewrites the same file and finds the orchestrator already Complete.
"""
from __future__ import annotations

import time
from typing import Any

from worker.errors import ValidationError
from worker.generation import queue_wait_seconds
from worker.handlers import HandlerResult, TaskContext, register
from worker.params import ParamReader, local_path
from worker.paths import output_file
from worker.store import Task, TaskStatus
from worker.travel.plan import TravelPlan
from worker.travel.stitch import stitch
from worker.travel_children import report_job_progress, segment_video, stored_plan

OUTPUT_NAME = "travel.mp4"


@register("travel_stitch")
def travel_stitch(ctx: TaskContext) -> HandlerResult:
    started = time.perf_counter()
    params = ctx.task.params
    reader = ParamReader(params)
    plan = stored_plan(params)
    orchestrator_id = reader.text("orchestrator_task_id")
    segments = [_finished_segment(ctx, task_id) for task_id in reader.texts("segment_task_ids")]
    if len(segments) != len(plan.segments):
        raise ValidationError("segment_task_ids", f"names {len(segments)} segments; the plan has {len(plan.segments)}")

    ctx.raise_if_cancelled()
    ctx.report_progress({"phase": "stitch", "segments": len(segments), "expected_frames": plan.expected_frames})
    report_job_progress(ctx, len(plan.segments), plan.expected_frames, phase="stitch", segments_done=len(segments))
    continued = [local_path(plan.continue_from, "continue_from_video")] if plan.continue_from else []
    videos = [segment_video(segment, f"segment_task_ids[{i}]") for i, segment in enumerate(segments)]
    stitched = stitch([*continued, *videos], plan.overlaps,
                      output_file(ctx.output_dir, OUTPUT_NAME), plan.fps, plan.shared_frames)
    if stitched.frames != plan.expected_frames:
        raise RuntimeError(f"stitched {stitched.frames} frames; the plan expects {plan.expected_frames}")
    stitched_at = time.perf_counter()
    if ctx.storage.uploads:
        ctx.report_progress({"phase": "upload"})
    published = ctx.storage.publish(ctx.task.id, {"output": stitched.path, "thumbnail": stitched.thumbnail})
    own_phases = {"queue_wait": queue_wait_seconds(ctx), "stitch": round(stitched_at - started, 4)}
    if ctx.storage.uploads:
        own_phases["upload"] = round(time.perf_counter() - stitched_at, 4)

    first = segments[0].result_data or {}
    summary = {
        "model": first.get("model"),
        "preset": first.get("preset"),
        "seed": plan.seed,
        "frames": stitched.frames,
        "fps": plan.fps,
        "width": stitched.width,
        "height": stitched.height,
        "resolution": plan.resolution,
        **published,
        "roundings": plan.to_params()["roundings"],
        "frame_rule": plan.frame_rule,
        "ignored_params": plan.ignored_params,
        "parameters": first.get("parameters", {}),
        "parameter_sources": _job_parameter_sources(first.get("parameter_sources", {}), plan),
        "segments": [_segment_summary(task, segment.overlap) for task, segment in zip(segments, plan.segments)],
    }

    ctx.raise_if_cancelled()
    orchestrator = ctx.store.get(orchestrator_id)
    job_result = {
        **summary,
        "phase_seconds": _job_phase_seconds(segments, own_phases, orchestrator),
        "total_seconds": _job_total_seconds(ctx.task, orchestrator, time.perf_counter() - started),
    }
    if not ctx.store.complete_parked(ctx.claim, published["output"], job_result):
        status = orchestrator.status if orchestrator is not None else "missing"
        ctx.log.warning("orchestrator not completed: it is no longer waiting", orchestrator_id=orchestrator_id,
                        orchestrator_status=status)

    stitch_result = {**summary, "phase_seconds": own_phases}
    return HandlerResult(output_location=published["output"], result_data=stitch_result)


def _job_parameter_sources(segment_sources: dict[str, str], plan: TravelPlan) -> dict[str, str]:
    """The first segment's parameter sources, with what the job's row gave named by the key it used:
    `task (<key>)` under the field, and under the key too when that is a parameter of the segment
    (the seed's `video_length` gives each segment's video_length)."""
    sources = dict(segment_sources)
    for name, key in plan.given_as.items():
        sources[name] = f"task ({key})"
        own_name = key.rsplit(".", 1)[-1]
        if own_name in segment_sources and own_name not in plan.given_as:
            sources[own_name] = f"task ({key})"
    return sources


def _finished_segment(ctx: TaskContext, task_id: str) -> Task:
    task = ctx.store.get(task_id)
    if task is None or task.status != TaskStatus.COMPLETE or not task.output_location:
        state = "missing" if task is None else f"{task.status}, output {task.output_location!r}"
        raise ValidationError("segment_task_ids", f"segment {task_id} has no finished video ({state})")
    return task


def _segment_summary(task: Task, overlap: int) -> dict[str, Any]:
    result = task.result_data or {}
    return {
        "task_id": task.id,
        "output_location": task.output_location,
        "frames": result.get("frames"),
        "overlap": overlap,
        "seed": result.get("seed"),
        "phase_seconds": result.get("phase_seconds", {}),
    }


def _job_phase_seconds(segments: list[Task], stitch_phases: dict[str, float], orchestrator: Task | None) -> dict[str, float]:
    """The job's seconds per phase: each phase summed over the segments and the stitch, and the
    orchestrator's own queue wait (the children's waits are mostly each other's run time)."""
    totals: dict[str, float] = {}
    for phases in [(task.result_data or {}).get("phase_seconds", {}) for task in segments] + [stitch_phases]:
        for phase, seconds in phases.items():
            if phase != "queue_wait" and isinstance(seconds, (int, float)):
                totals[phase] = totals.get(phase, 0.0) + seconds
    if orchestrator is not None and orchestrator.created_at and orchestrator.generation_started_at:
        totals["queue_wait"] = max(0.0, (orchestrator.generation_started_at - orchestrator.created_at).total_seconds())
    return {phase: round(seconds, 4) for phase, seconds in totals.items()}


def _job_total_seconds(stitch_task: Task, orchestrator: Task | None, stitch_elapsed: float) -> float | None:
    """From the orchestrator's insertion to now: the database's times up to this claim, then this
    handler's own elapsed time (no mixing of the two clocks' absolute values)."""
    if orchestrator is None or orchestrator.created_at is None or stitch_task.generation_started_at is None:
        return None
    return round((stitch_task.generation_started_at - orchestrator.created_at).total_seconds() + stitch_elapsed, 4)
