"""`extract_frame` (the headless worker's extract_frame.py): one frame of a finished task's video, written
as a PNG. `input_video_task_id` names the row whose video it is (its output, on this box or fetched
from its URL); `frame_index` counts from 0, or from the end when negative (-1 is the last frame).
"""
from __future__ import annotations

import itertools

from worker.dialects import ignored_params
from worker.errors import ValidationError
from worker.generation import publish, queue_wait_seconds, report_ignored
from worker.handlers import HandlerResult, TaskContext, register
from worker.params import ParamReader
from worker.paths import output_file
from worker.store import TaskStatus
from worker.travel_children import segment_video
from worker.video import FFmpegError, iter_frames, probe, save_png

EXTRACT_TASK = "extract_frame"
VIDEO_TASK, INDEX = "input_video_task_id", "frame_index"


@register(EXTRACT_TASK)
def extract_frame(ctx: TaskContext) -> HandlerResult:
    reader = ParamReader(ctx.task.params)
    source_id = reader.text(VIDEO_TASK)
    source = ctx.store.get(source_id)
    if source is None or source.status != TaskStatus.COMPLETE:
        state = "no such row" if source is None else f"it is {source.status}"
        raise ValidationError(VIDEO_TASK, f"{source_id} has no finished video ({state})")
    video = segment_video(source, VIDEO_TASK)
    index = reader.integer(INDEX, 0)
    try:
        frames = probe(video).frames
        position = index + frames if index < 0 else index
        if not 0 <= position < frames:
            raise ValidationError(INDEX, f"{index} is outside the video's {frames} frames")
        frame = next(itertools.islice(iter_frames(video), position, None), None)
    except FFmpegError as error:
        raise ValidationError(VIDEO_TASK, f"the video of {source_id} is not readable: {error}") from None
    if frame is None:  # the header's count and the decodable frames disagree
        raise ValidationError(INDEX, f"frame {position} could not be decoded from the video of {source_id}")
    elsewhere = {"output_dir": "outputs go to the task's folder"} if reader.has("output_dir") else {}
    reader.used.add("output_dir")
    ignored = report_ignored(ctx.log, {**elsewhere, **ignored_params(reader)})
    output = save_png(frame, output_file(ctx.output_dir, f"frame_{position}.png"))
    published, upload = publish(ctx, {"output": output})
    result_data = {**published, "thumbnail": published["output"], VIDEO_TASK: source_id, INDEX: position,
                   "video_frames": frames, "width": int(frame.shape[1]), "height": int(frame.shape[0]),
                   "ignored_params": ignored, "phase_seconds": {"queue_wait": queue_wait_seconds(ctx), **upload}}
    return HandlerResult(output_location=published["output"], result_data=result_data)
