"""`join_clips_segment` (the headless worker's join task, banodoco/reigh-worker source/task_handlers/join/
generation.py): generate the transition between two clips with VACE (worker/join.py).

The clips are `starting_video_path` and `ending_video_path` (paths or URLs); a row of a headless chain
without a starting video continues the video of the row it depends on. The guide keeps the clips'
frames on each side of the cut and generates the gap between them (`context_frame_count`,
`gap_frame_count`, `replace_mode`, `keep_bridging_images`); the rest of the row is a generation row
(model, prompt, phase_config, LoRAs, seed, ...) read as `vace` rows are, the model defaulting to the
headless one. With `transition_only` (what join_clips_orchestrator writes) the output is the
transition, and result_data.transition says which frames of the clips it keeps and replaces, for
join_final_stitch (a headless orchestrator's child, which names it in `orchestrator_task_id_ref`,
answers in that worker's form: output_location is the JSON of the facts with the `transition_url`); without it, the output is the two clips joined through the transition (a standalone
join), with `audio_url` laid under it.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from worker.errors import ValidationError
from worker.generation import HEADLESS_VACE_MODEL, GenerationRow, encode_video, install_lora_urls, publish, read_generation, render_video
from worker.handlers import HandlerResult, TaskContext, register
from worker.join import (
    AUDIO,
    END,
    HEADLESS_INDEX,
    INDEX,
    SEGMENT_TASK,
    START,
    STITCH_TASK,
    TRANSITION,
    TRANSITION_ONLY,
    JoinSpec,
    StitchedTransition,
    bridging_anchors,
    generation_params,
    join_layout,
    read_join,
    require_vace,
)
from worker.params import ParamReader
from worker.paths import output_file
from worker.store import TaskStatus
from worker.travel.guide import gap_guide
from worker.travel.stitch import HEADLESS_SHARPEN, Crossfade, stitch
from worker.travel_children import HEADLESS_REF, report_job_progress, segment_video
from worker.video import lay_audio

JOINED_NAME = "joined.mp4"


@register(SEGMENT_TASK)
def join_clips_segment(ctx: TaskContext) -> HandlerResult:
    params = ctx.task.params
    reader = ParamReader(params)
    spec = read_join(reader, _starting_video(ctx, reader), reader.input_file(END))
    transition, adjustments, before, after = spec.read_context()
    anchors = bridging_anchors(transition.gap_frames, before, after) if spec.bridging else {}
    guide = gap_guide(before, transition.gap_frames, after, anchors)
    row = read_generation(generation_params(params, spec, transition.frames), resources=ctx.resources,
                          limits=ctx.config.limits, output_dir=ctx.output_dir, log=ctx.log,
                          default_model=HEADLESS_VACE_MODEL, install_loras=lambda names: install_lora_urls(ctx, names),
                          controls=(guide.guide, guide.mask), prompt_required=False)
    require_vace(ctx.resources.model_registry(), row.request.model)
    length = (f"context {transition.context_from_clip1} + gap {transition.gap_frames} + "
              f"context {transition.context_from_clip2} (worker/join.py)")
    row.worker_parameters.update({
        "video_length": (transition.frames, length),
        "width": (spec.width, spec.sources["width"]), "height": (spec.height, spec.sources["height"]),
        "fps": (spec.fps, spec.sources["fps"]),
    })
    row.ignored.update(spec.overridden)
    index = reader.integer(INDEX, reader.integer(HEADLESS_INDEX, 0, minimum=0), minimum=0)
    facts = spec.facts(transition, index, adjustments, anchors)
    if reader.flag(TRANSITION_ONLY):
        result = render_video(ctx, row, {TRANSITION: facts})
        if reader.has(HEADLESS_REF):  # a headless orchestrator's child: its stitch reads this JSON form
            result.output_location = json.dumps({"transition_url": result.output_location, **facts})
        _report_joins_done(ctx)
        return result
    return _joined(ctx, reader, spec, row, facts)


def _joined(ctx: TaskContext, reader: ParamReader, spec: JoinSpec, row: GenerationRow, facts: dict[str, Any]) -> HandlerResult:
    """A standalone join: the transition generated, then the two clips stitched through it (with the
    row's audio) as the output; the transition is published beside it."""
    result_data, _ = encode_video(ctx, row)
    ctx.raise_if_cancelled()
    videos, overlaps = join_layout(spec.stitch_sources(), [(row.output, StitchedTransition.read(facts, 0, TRANSITION))])
    try:
        joined = stitch(videos, overlaps, output_file(ctx.output_dir, JOINED_NAME), spec.fps, Crossfade(HEADLESS_SHARPEN))
    except ValueError as error:  # a clip too short for the transition's context at both its ends
        raise ValidationError(START, str(error)) from None
    audio = reader.input_file(AUDIO, None)
    if audio is not None:
        lay_audio(joined.path, audio, joined.frames / spec.fps, AUDIO)
    published, upload = publish(ctx, {"output": joined.path, "thumbnail": joined.thumbnail, "transition_video": row.output})
    result_data.update(published, joined_frames=joined.frames, **{TRANSITION: facts})
    result_data["phase_seconds"].update(upload)
    return HandlerResult(output_location=published["output"], result_data=result_data)


def _report_joins_done(ctx: TaskContext) -> None:
    """On the join_clips_orchestrator of ours that parked for this row, how many of its joins are done
    (this one and the finished others; they run in parallel, in any order)."""
    orchestrator = ctx.task.params.get("orchestrator_task_id")
    if not isinstance(orchestrator, str):
        return
    siblings = ctx.store.children(orchestrator)
    joins = [task for task in siblings if task.task_type == SEGMENT_TASK]
    done = 1 + sum(task.status == TaskStatus.COMPLETE for task in joins if task.id != ctx.task.id)
    stitch_row = next((task for task in siblings if task.task_type == STITCH_TASK), None)
    expected = (stitch_row.params or {}).get("expected_frames") if stitch_row is not None else None
    report_job_progress(ctx, len(joins), expected, phase="joins", done=done, unit="joins")


def _starting_video(ctx: TaskContext, reader: ParamReader) -> Path:
    """`starting_video_path`, or in a headless chain (a row without one that depends on the join
    before it) that join's video."""
    if reader.has(START) or not ctx.task.dependant_on:
        return reader.input_file(START)
    previous = ctx.store.get(ctx.task.dependant_on[0])
    if previous is None or previous.status != TaskStatus.COMPLETE:
        state = "missing" if previous is None else previous.status
        raise ValidationError(START, f"required: the row it depends on ({ctx.task.dependant_on[0]}) has no video ({state})")
    return segment_video(previous, START)
