"""`join_final_stitch` (the headless worker's join/final_stitch.py): lay a join's clips and generated
transitions end to end in one encode (worker/join.py join_layout) and, as the last child of a
join_clips_orchestrator of ours, complete that row with the joined video and the job's summary.

The row names `clip_list` ([{"url"}], in order) and `transition_task_ids` (one finished
join_clips_segment per pair of clips, ours or the headless worker's: the transition's facts are our
result_data.transition or the JSON of its output_location); optionally `audio_url`, laid under the
result. Each clip loses the frames its transitions replaced, and each transition's context is
cross-faded with the clip frames it copies (the headless fade: a cosine curve sharpened by 0.3). The
result is at the transitions' rate, the clips resampled to it where theirs differs, cropped to the
shape the transitions read them at and scaled to the first clip's size. `chain_mode` (the headless chain, whose last
join already holds the whole video) passes that join's video on.
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from worker.errors import ValidationError
from worker.generation import publish, queue_wait_seconds
from worker.handlers import HandlerResult, TaskContext, register
from worker.join import AUDIO, DEFAULT_FPS, STITCH_TASK, TRANSITION, StitchedTransition, clip_locations, join_layout
from worker.params import ParamReader, local_path
from worker.paths import output_file
from worker.store import Task, TaskStatus
from worker.travel.stitch import HEADLESS_SHARPEN, Crossfade, Source, stitch
from worker.travel_children import complete_job, headless_output, report_job_progress, result_of, segment_video
from worker.video import lay_audio

OUTPUT_NAME = "joined.mp4"
CLIP_LIST, TRANSITION_IDS = "clip_list", "transition_task_ids"


@register(STITCH_TASK)
def join_final_stitch(ctx: TaskContext) -> HandlerResult:
    started = time.perf_counter()
    reader = ParamReader(ctx.task.params)
    if reader.flag("chain_mode"):
        return _chain_output(ctx, reader)
    listed = reader.params.get(CLIP_LIST)
    clips = clip_locations(listed, CLIP_LIST)
    if len(clips) < 2:
        raise ValidationError(CLIP_LIST, f"must list at least two clips, got {len(clips)}")
    ids = reader.texts(TRANSITION_IDS)
    if len(ids) != len(clips) - 1:
        raise ValidationError(TRANSITION_IDS, f"names {len(ids)} transitions; {len(clips)} clips need {len(clips) - 1}")
    rows = [_finished(ctx, task_id, f"{TRANSITION_IDS}[{i}]") for i, task_id in enumerate(ids)]
    transitions = sorted((_transition(row, i, f"{TRANSITION_IDS}[{i}]") for i, row in enumerate(rows)),
                         key=lambda pair: pair[1].index)
    first = transitions[0][1]
    fps = first.fps or reader.number("fps", DEFAULT_FPS, minimum=1, maximum=120)
    sources = [Source(local_path(clip, f"{CLIP_LIST}[{i}]"), resample=True, aspect=first.aspect)
               for i, clip in enumerate(clips)]
    videos, overlaps = join_layout(sources, transitions)

    ctx.raise_if_cancelled()
    ctx.report_progress({"phase": "stitch", "joins": len(transitions)})
    expected = reader.integer("expected_frames", None)
    orchestrator = reader.text("orchestrator_task_id", None)  # ours; a headless orchestrator completes itself
    if orchestrator is not None:  # its row shows the stitch under way
        report_job_progress(ctx, len(rows), expected, phase="stitch", done=len(rows), unit="joins")
    try:
        stitched = stitch(videos, overlaps, output_file(ctx.output_dir, OUTPUT_NAME), fps, Crossfade(HEADLESS_SHARPEN))
    except ValueError as error:  # a clip too short for what its transitions take of it
        raise ValidationError(CLIP_LIST, str(error)) from None
    if expected is not None and stitched.frames != expected:
        raise RuntimeError(f"stitched {stitched.frames} frames; the join was planned for {expected}")
    audio = reader.input_file(AUDIO, None)
    if audio is not None:
        lay_audio(stitched.path, audio, stitched.frames / fps, AUDIO)
    own_phases = {"queue_wait": queue_wait_seconds(ctx), "stitch": round(time.perf_counter() - started, 4)}
    published, upload = publish(ctx, {"output": stitched.path, "thumbnail": stitched.thumbnail})
    own_phases.update(upload)
    first_join = result_of(rows[0])
    summary = {
        "frames": stitched.frames, "fps": fps, "width": stitched.width, "height": stitched.height, **published,
        "crossfade": Crossfade(HEADLESS_SHARPEN).describe(), CLIP_LIST: clips, AUDIO: reader.text(AUDIO, None),
        "model": first_join.get("model"), "seed": first_join.get("seed"), "parameters": first_join.get("parameters", {}),
        "parameter_sources": first_join.get("parameter_sources", {}),
        "joins": [_join_summary(row) for row in rows],
        "ignored_params": reader.params.get("ignored_params") or {},
    }
    if stitched.scaled:  # positions in the stitched order (clip, transition, clip, ...), scaled to the first's size
        summary["scaled_videos"] = list(stitched.scaled)
    if orchestrator is not None:
        complete_job(ctx, orchestrator, published["output"], summary, rows, own_phases, started)
    return HandlerResult(output_location=published["output"], result_data={**summary, "phase_seconds": own_phases})


def _finished(ctx: TaskContext, task_id: str, field: str) -> Task:
    task = ctx.store.get(task_id)
    if task is None or task.status != TaskStatus.COMPLETE or not task.output_location:
        state = "missing" if task is None else f"{task.status}, output {task.output_location!r}"
        raise ValidationError(field, f"transition {task_id} has no finished video ({state})")
    return task


def _transition(task: Task, position: int, field: str) -> tuple[Path, StitchedTransition]:
    """A finished transition's video and facts: ours in result_data.transition, the headless worker's
    in the JSON of its output_location (whose transition_url is the video)."""
    facts = result_of(task).get(TRANSITION) or headless_output(task)
    if not isinstance(facts, dict):
        raise ValidationError(field, f"row {task.id} is not a transition: it has neither result_data.{TRANSITION} "
                                     "nor the headless JSON output with a transition_url")
    return segment_video(task, field), StitchedTransition.read(facts, position, field)


def _join_summary(task: Task) -> dict[str, Any]:
    result = result_of(task)
    facts = result.get(TRANSITION) or {}
    return {"task_id": task.id, "output_location": task.output_location, "frames": result.get("frames"),
            "gap_frames": facts.get("gap_frames"), "seed": result.get("seed"),
            "phase_seconds": result.get("phase_seconds", {})}


def _chain_output(ctx: TaskContext, reader: ParamReader) -> HandlerResult:
    """A headless chain's stitch: the last join (transition_task_ids[0]) already joined every clip."""
    ids = reader.texts(TRANSITION_IDS)
    if not ids:
        raise ValidationError(TRANSITION_IDS, "chain_mode needs the last join's id")
    video = segment_video(_finished(ctx, ids[0], f"{TRANSITION_IDS}[0]"), f"{TRANSITION_IDS}[0]")
    output = output_file(ctx.output_dir, OUTPUT_NAME)
    shutil.copyfile(video, output)
    published, _ = publish(ctx, {"output": output})
    return HandlerResult(output_location=published["output"], result_data={**published, "chain_mode": True})
