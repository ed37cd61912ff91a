"""`travel_orchestrator`: validate a travel job and expand it into its children, in one transaction.

For N keyframes: N-1 `travel_segment` rows (chained segments each depend on the previous one, whose
last frames open them; independent ones depend on nothing, so several workers can claim them at
once) and one `travel_stitch` depending on every segment. The model is a VACE model (the segments
follow guide videos) or an image-to-video model (each segment is conditioned on its start and end
frames). The orchestrator then stays 'In Progress', parked, until the stitch completes it (or
a child's failure or cancellation ends it). Children carry `child_key` ("segment-<i>", "stitch"),
so a re-run orchestrator (a crash, a lost lease) finds its children and inserts nothing. The plan
is stored once, on the stitch row; each segment row carries only its own segment and the job's
shared settings, so a job's params grow linearly with its keyframes.

Everything that can be checked without a GPU (or torch) is checked here, so a bad job fails at once
with the field and the rule instead of failing a segment later: the plan (images exist and are
images, counts, frames, overlaps, resolution, limits), the model or preset against the definitions
(no load), and the sampling fields with the LoRA names and multiplier strings, as the engine will
check them (wan_engine.schema.validate). Keys of the row that change nothing are reported on the
parked row's progress and in the job's result_data as `ignored_params`, and logged.

`wan_2_2_i2v` is the task type the Reigh app inserts instead of `travel_orchestrator` in turbo mode,
with the same `orchestrator_details` payload (reigh-app supabase/functions/create-task/resolvers/
travelBetweenImages.ts: `isTurboMode ? "wan_2_2_i2v" : "travel_orchestrator"`); the app treats it as
an orchestrator that spawns segments and whose output is the journey's video (src/features/tasks/
components/TasksPane/components/TaskItemActions.tsx, supabase/functions/complete_task/params.ts).
The April 2026 headless worker registers no handler for it (source/task_handlers/tasks/task_types.py),
so such a row is run here as the travel job it describes, on the model its payload names.
"""
from __future__ import annotations

import json
from dataclasses import replace

from worker.errors import ValidationError
from worker.generation import check_request, install_lora_urls, report_ignored, resolve_model
from worker.handlers import HandlerResult, TaskContext, register
from worker.store import NewTask
from worker.travel.guidance import check_runnable
from worker.travel.plan import DEFAULT_MODEL, HEADLESS_KEY, SegmentJob, read_travel
from worker.travel_children import SEGMENT_JOB_PARAM

TURBO_TRAVEL_TASK = "wan_2_2_i2v"  # the app's task type for a travel job in turbo mode
SEGMENT_TASK = "travel_segment"
STITCH_TASK = "travel_stitch"
STITCH_KEY = "stitch"
TRAVEL_FIELDS = {"video_length": "segment_frames", "prompt": "prompts", "negative_prompt": "negative_prompts"}


def segment_key(index: int) -> str:
    return f"segment-{index}"


@register("travel_orchestrator", TURBO_TRAVEL_TASK)
def travel_orchestrator(ctx: TaskContext) -> HandlerResult:
    if ctx.task.task_type == TURBO_TRAVEL_TASK and HEADLESS_KEY not in ctx.task.params:
        raise ValidationError(HEADLESS_KEY, f"required: a {TURBO_TRAVEL_TASK} row is the Reigh app's travel job in "
                                            "turbo mode; for one image-to-video generation use task type i2v_22")
    plan, reader = read_travel(ctx.task.params, ctx.config.limits)
    spec = resolve_model(ctx.resources, reader, DEFAULT_MODEL)
    if not (spec.is_vace or spec.is_image_to_video):
        raise ValidationError(reader.label("preset" if plan.preset else "model"),
                              f"{spec.key!r} is neither a VACE nor an image-to-video model; travel needs one "
                              f"(e.g. {DEFAULT_MODEL} or i2v_2_2)")
    plan = replace(plan, image_to_video=spec.is_image_to_video)
    if plan.guidance is not None:
        check_runnable(plan.guidance, spec.is_image_to_video, spec.key, (plan.width, plan.height), ctx.resources)
    prompts = {name: max((getattr(segment, name) for segment in plan.segments), key=len)
               for name in ("prompt", "negative_prompt")}  # the longest of each, for the length limit
    checked: set[str] = set()
    for segment in plan.segments:  # each distinct (frames, sampling) once
        sampling = plan.sampling_of(segment.index)
        request = {**sampling, **prompts, "model": spec.preset or spec.key, "width": plan.width,
                   "height": plan.height, "video_length": segment.frames}
        key = json.dumps([segment.frames, sampling], sort_keys=True)
        if key not in checked:
            checked.add(key)
            install_lora_urls(ctx, sampling.get("lora_names"))
            check_request(ctx.resources, ctx.config.limits, request, reader.schema, reader.prefix,
                          row_fields=TRAVEL_FIELDS)
    report_ignored(ctx.log, plan.ignored_params)

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
                SEGMENT_JOB_PARAM: SegmentJob.of(plan, segment.index).to_params(),
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
            "plan": plan.to_params(),
        },
        dependant_on=[segment.id for segment in segments],
        max_attempts=ctx.task.max_attempts,
    )
    ctx.log.info("travel planned", segments=len(segments), expected_frames=plan.expected_frames, model=spec.key,
                 frame_rule=plan.frame_rule,
                 roundings=[f"{r.field}: {r.requested} -> {r.used}" for r in plan.roundings])
    return HandlerResult(
        park_children=[*segments, stitch],
        park_progress={
            "phase": "waiting_for_children",
            "segments": len(segments),
            "expected_frames": plan.expected_frames,
            "model": spec.key,
            "frame_rule": plan.frame_rule,
            "ignored_params": plan.ignored_params,
        },
    )
