"""`inpaint_frames` (the headless worker's task, banodoco/reigh-worker source/task_handlers/inpaint_frames.py):
regenerate frames [inpaint_start_frame, inpaint_end_frame) of a video with VACE.

The guide is `context_frame_count` frames of the video on each side of the range, kept, with gray
frames to generate between them (worker.travel.guide.gap_guide); the generation has 2 x context + gap
frames (rounded down to 4n+1 like every video_length) and is the task's output, as the headless
handler returns it: the range with its context, not the whole video with the range replaced. The
rest of the row is a generation row (model, prompt, steps, phase_config, LoRAs, seed, ...), read as
`vace` rows are; the model defaults to the headless one, wan_2_2_vace_lightning_baseline_2_2_2. The
frames are read at `resolution` (snapped down to multiples of 16 as headless Wan2GP takes it; default:
the video's size, rounded down likewise).
"""
from __future__ import annotations

import itertools
from typing import Any

import numpy as np

from worker.errors import ValidationError
from worker.generation import HEADLESS_VACE_MODEL, install_lora_urls, read_generation, render_video
from worker.handlers import HandlerResult, TaskContext, register
from worker.params import ParamReader, headless_size
from worker.travel.guide import gap_guide
from worker.video import FFmpegError, iter_frames, probe

INPAINT_TASK = "inpaint_frames"
VIDEO, START, END, CONTEXT = "video_path", "inpaint_start_frame", "inpaint_end_frame", "context_frame_count"
DEFAULT_CONTEXT_FRAMES = 8


@register(INPAINT_TASK)
def inpaint_frames(ctx: TaskContext) -> HandlerResult:
    params = ctx.task.params
    reader = ParamReader(params)
    video = reader.input_file(VIDEO)
    try:
        info = probe(video)
    except FFmpegError as error:
        raise ValidationError(VIDEO, f"not a readable video: {error}") from None
    context = reader.integer(CONTEXT, DEFAULT_CONTEXT_FRAMES, minimum=0)
    start = reader.integer(START, minimum=0)
    end = reader.integer(END, minimum=start + 1)
    if end > info.frames:
        raise ValidationError(END, f"{end} is past the end of the video ({info.frames} frames)")
    if start < context:
        raise ValidationError(START, f"needs {CONTEXT} = {context} frames before it; the video has {start}")
    if info.frames - end < context:
        raise ValidationError(END, f"needs {CONTEXT} = {context} frames after it; the video has {info.frames - end}")
    (width, height), size_source = headless_size(params.get("resolution"), (info.width, info.height), VIDEO)

    frames = np.stack(list(itertools.islice(iter_frames(video, (width, height)), start - context, end + context)))
    if len(frames) != end - start + 2 * context:  # the header's count and the decodable frames disagree
        raise ValidationError(VIDEO, f"decoded {len(frames)} of frames {start - context}..{end + context - 1}")
    guide = gap_guide(frames[:context], end - start, frames[context + end - start:])
    generation_params: dict[str, Any] = {
        **{key: value for key, value in params.items() if key not in (VIDEO, START, END, CONTEXT, "resolution")},
        "resolution": f"{width}x{height}",
        "video_length": len(guide.guide),
    }
    row = read_generation(generation_params, resources=ctx.resources, limits=ctx.config.limits,
                          output_dir=ctx.output_dir, log=ctx.log, default_model=HEADLESS_VACE_MODEL,
                          install_loras=lambda names: install_lora_urls(ctx, names), controls=(guide.guide, guide.mask),
                          prompt_required=False)  # the headless handler sends a blank prompt for none
    given_length = len(guide.guide)
    length, _ = row.worker_parameters["video_length"]
    rounding = "" if length == given_length else f", {given_length} rounded down to 4n+1"
    row.worker_parameters.update({
        "video_length": (length, f"{CONTEXT} {context} + the range's {end - start} + {CONTEXT} {context}{rounding}"),
        "width": (width, size_source), "height": (height, size_source),
    })
    if "fps" not in row.given_as:  # the video's rate, as a whole number
        row.fps = min(120, max(1, round(info.fps)))
        row.worker_parameters["fps"] = (row.fps, f"{VIDEO} (its frame rate)")
    inpaint = {VIDEO: params[VIDEO], START: start, END: end, CONTEXT: context, "video_frames": info.frames,
               "kept_frames": [index for index in guide.kept_frames if index < length]}
    return render_video(ctx, row, {"inpaint": inpaint})
