"""`travel_orchestrator`: validate a travel job and expand it into its children, in one transaction.

For N keyframes: N-1 `travel_segment` rows (segment i depends on segment i-1, whose last frames
open it; with `independent_segments` no segment depends on another, so several workers can claim
them at once) and one `travel_stitch` depending on every segment. The model is a VACE model (the
segments follow guide videos) or an image-to-video model (each segment is conditioned on its start
and end frames). The orchestrator then stays
'In Progress', parked, until the stitch completes it (or a child's failure or cancellation ends
it). Children carry `child_key` ("segment-<i>", "stitch"), so a re-run orchestrator (a crash, a
lost lease) finds its children and inserts nothing.

Everything that can be checked without a GPU is checked here, so a bad job fails at once with the
field and the rule instead of failing a segment later: the plan (images exist and are images,
counts, frames, overlaps, resolution), the model or preset against the definitions (no load), and
the sampling fields with the LoRA names and multiplier strings (as the engine will check them).
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from worker.errors import ValidationError
from worker.handlers import HandlerResult, TaskContext, register
from worker.handlers.generate import check_parameters, resolve_model, sampling_fields
from worker.store import NewTask
from worker.travel.plan import DEFAULT_MODEL, HEADLESS_KEY, TravelPlan, is_headless_form, plan_travel

SEGMENT_TASK = "travel_segment"
STITCH_TASK = "travel_stitch"
STITCH_KEY = "stitch"


def segment_key(index: int) -> str:
    return f"segment-{index}"


def stored_plan(params: dict[str, Any]) -> TravelPlan:
    """The plan a child carries in params['plan'], as its orchestrator wrote it; anything else (a row
    written by hand) fails the child for good instead of being retried."""
    try:
        return TravelPlan.from_params(params["plan"])
    except (KeyError, TypeError, ValueError) as error:
        raise ValidationError("plan", f"not a plan written by travel_orchestrator ({type(error).__name__}: {error})") from None


def _headless_name(field: str) -> str:
    """How a headless row spells a field this handler checks (the model is `model_name` there; the
    sampling fields keep their names), so its errors point at what the backend wrote."""
    return f"{HEADLESS_KEY}.{'model_name' if field == 'model' else field}"


@register("travel_orchestrator")
def travel_orchestrator(ctx: TaskContext) -> HandlerResult:
    params = ctx.task.params
    name = _headless_name if is_headless_form(params) else (lambda field: field)
    plan = plan_travel(params)
    spec = resolve_model(ctx, plan.model, plan.preset, default=DEFAULT_MODEL, name=name)
    if not (spec.is_vace or spec.is_image_to_video):
        raise ValidationError(name("preset" if plan.preset else "model"),
                              f"{spec.key!r} is neither a VACE nor an image-to-video model; travel needs one "
                              f"(e.g. {DEFAULT_MODEL} or i2v_2_2)")
    plan = replace(plan, image_to_video=spec.is_image_to_video)
    sampling = sampling_fields(plan.sampling, name)
    # the keyframes were checked by the planner; a blank frame stands in for them here
    frame = {"image_start": np.zeros((plan.height, plan.width, 3), np.uint8)} if spec.is_image_to_video else {}
    for segment in plan.segments:
        check_parameters(ctx, spec, {**sampling, **frame, "width": plan.width, "height": plan.height,
                                     "video_length": segment.frames}, name)
    stored_plan = plan.to_params()

    segments: list[NewTask] = []
    for segment in plan.segments:
        previous = segments[-1].id if segments and not plan.independent else None
        segments.append(NewTask(
            task_type=SEGMENT_TASK,
            params={
                "child_key": segment_key(segment.index),
                "orchestrator_task_id": ctx.task.id,
                "model": spec.key,
                "preset": spec.preset,
                "segment_index": segment.index,
                "previous_segment_task_id": previous,
                "plan": stored_plan,
            },
            dependant_on=[previous] if previous else [],
            max_attempts=ctx.task.max_attempts,
        ))
    stitch = NewTask(
        task_type=STITCH_TASK,
        params={
            "child_key": STITCH_KEY,
            "orchestrator_task_id": ctx.task.id,
            "segment_task_ids": [segment.id for segment in segments],
            "plan": stored_plan,
        },
        dependant_on=[segment.id for segment in segments],
        max_attempts=ctx.task.max_attempts,
    )
    ctx.log.info("travel planned", segments=len(segments), expected_frames=plan.expected_frames, model=spec.key,
                 independent=plan.independent,
                 roundings=[f"{r.field}: {r.requested} -> {r.used}" for r in plan.roundings])
    return HandlerResult(
        park_children=[*segments, stitch],
        park_progress={
            "phase": "waiting_for_children",
            "segments": len(segments),
            "expected_frames": plan.expected_frames,
            "model": spec.key,
        },
    )

