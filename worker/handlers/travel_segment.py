"""`travel_segment`: one VACE or image-to-video generation from a keyframe (or the previous
segment's last frames) to the next keyframe.

Image-to-video: the segment is conditioned on its start frame (image_start) and the next keyframe
(image_end). Chained, the start frame is the previous segment's frame where their overlap begins
(its last frame without overlap), so the overlapping frames run side by side for the cross-fade;
with `independent_segments` it is the start keyframe and no predecessor is read.

The guide opens with the previous segment's last `overlap` frames (read from its output_location;
dependant_on guarantees it is Complete) or, for the first segment, the start image; it ends on the
end image; the frames between are generated (worker/travel/guide.py). The output is
<output_dir>/<task id>/segment-<i>.mp4, or with --storage-url its object, which the next segment and
the stitch read from whatever box they run on (segment_video). Once it is written, the parked
orchestrator's progress says how many segments are done (report_job_progress).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import sqlalchemy as sa

from worker.errors import ValidationError
from worker.handlers import HandlerResult, TaskContext, register
from worker.handlers.generate import (
    generation_result_data,
    publish_outputs,
    run_generation,
    sampling_fields,
    write_video,
)
from worker.handlers.travel_orchestrator import stored_plan
from worker.inputs import fetch_input, is_url
from worker.params import ParamReader, local_path
from worker.paths import output_file
from worker.store import CHILD_KEY_PARAM, Task
from worker.travel.guide import segment_guide
from worker.travel.plan import TravelPlan
from worker.video import load_image, read_last_frames


@register("travel_segment")
def travel_segment(ctx: TaskContext) -> HandlerResult:
    from wan_engine.request import GenerationRequest

    params = ctx.task.params
    reader = ParamReader(params)
    plan = stored_plan(params)
    index = reader.integer("segment_index", minimum=0, maximum=len(plan.segments) - 1)
    segment = plan.segments[index]
    model = reader.text("preset", None) or reader.text("model")

    end = _keyframe(segment.end_image, plan, f"images[{index + 1}]")
    continues = index > 0 and not plan.independent  # opens on the previous segment's output
    if plan.image_to_video:
        if continues:
            start = _previous_tail(ctx, reader.text("previous_segment_task_id"), max(segment.overlap, 1))[0]
        else:
            start = _keyframe(segment.start_image, plan, f"images[{index}]")
        conditioning = {"image_start": start, "image_end": end}
        kept_frames = [0, segment.frames - 1]
    else:
        # With an overlap the previous segment's last frames open the guide, so the start image is not decoded.
        head = segment.overlap if continues else 0
        start = tail = None
        if head:
            tail = _previous_tail(ctx, reader.text("previous_segment_task_id"), head)
        else:
            start = _keyframe(segment.start_image, plan, f"images[{index}]")
        guide = segment_guide(segment.frames, head, start, end, tail)
        conditioning = {"video_guide": guide.guide, "video_mask": guide.mask}
        kept_frames = guide.kept_frames

    request = GenerationRequest(
        model=model,
        prompt=segment.prompt,
        negative_prompt=segment.negative_prompt,
        width=plan.width,
        height=plan.height,
        video_length=segment.frames,
        seed=segment.seed,
        **conditioning,
        **sampling_fields(plan.sampling),
    )
    ctx.raise_if_cancelled()
    generation = run_generation(ctx, request, {"segment": index, "segments": len(plan.segments)})
    if len(generation.frames) != segment.frames:
        raise RuntimeError(f"the engine returned {len(generation.frames)} frames for a {segment.frames}-frame segment")
    output = output_file(ctx.output_dir, f"segment-{index}.mp4")
    ctx.report_progress({"phase": "video_encode", "segment": index, "segments": len(plan.segments)})
    thumbnail, encode_seconds = write_video(generation.frames, output, plan.fps)
    generation.phase_seconds["video_encode"] = encode_seconds
    report_job_progress(ctx, plan, phase="segments", segments_done=index + 1)

    result_data = generation_result_data(
        generation,
        preset=reader.text("preset", None),
        worker_parameters={
            "width": (plan.width, "plan"),
            "height": (plan.height, "plan"),
            "video_length": (segment.frames, "plan"),
            "seed": (segment.seed, "plan (seed + segment index)"),
            "fps": (plan.fps, "plan"),
            "overlap": (segment.overlap, "plan"),
        },
        fps=plan.fps,
        output=output,
        thumbnail=thumbnail,
    )
    result_data.update(segment_index=index, orchestrator_task_id=params.get("orchestrator_task_id"),
                       kept_frames=kept_frames)
    return HandlerResult(output_location=publish_outputs(ctx, result_data, output, thumbnail), result_data=result_data)


def report_job_progress(ctx: TaskContext, plan: TravelPlan, *, phase: str, segments_done: int) -> None:
    """Show the job's progress on the parked orchestrator, the row a backend watches: `segments_done`
    of the plan's segments, `current` the child writing it, `percent` the share of the job's children
    (the segments and the stitch) finished. A database error is logged, never raised."""
    segments = len(plan.segments)
    progress = {
        "phase": phase,
        "segments_done": segments_done,
        "segments": segments,
        "percent": round(100.0 * segments_done / (segments + 1), 1),
        "current": ctx.task.params.get(CHILD_KEY_PARAM),
        "expected_frames": plan.expected_frames,
    }
    try:
        ctx.store.parent_progress(ctx.claim, progress)
    except sa.exc.SQLAlchemyError as error:
        ctx.log.warning("orchestrator progress not written", error=str(error))


def _keyframe(value: str, plan: TravelPlan, field: str) -> np.ndarray:
    """A keyframe (a path or a URL fetched on this box) fitted to the plan's resolution."""
    return load_image(local_path(value, field), plan.width, plan.height, field=field)


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


def _previous_tail(ctx: TaskContext, previous_id: str, overlap: int) -> np.ndarray:
    """The last `overlap` frames of the previous segment's video, uint8 [overlap, H, W, 3] (streamed:
    only those frames are kept)."""
    previous = ctx.store.get(previous_id)
    if previous is None or not previous.output_location:
        raise ValidationError("previous_segment_task_id", f"segment {previous_id} has no output to continue from")
    location = segment_video(previous, "previous_segment_task_id")
    try:
        frames = read_last_frames(location, overlap)
    except FileNotFoundError:
        raise ValidationError("previous_segment_task_id", f"the output of segment {previous_id} is gone: {location}") from None
    if len(frames) < overlap:
        raise ValidationError("previous_segment_task_id",
                              f"segment {previous_id} has {len(frames)} frames, fewer than the overlap {overlap}")
    return frames
