"""`travel_stitch`: cross-fades videos into one mp4 (worker/travel/stitch.py), written with a
thumbnail to its own folder and row. As the last child of a travel job of travel_orchestrator's, it
also completes the parked orchestrator with the same video and a summary of the whole job; when it
starts, the orchestrator's progress moves to the "stitch" phase.

Three row forms:
* ours, written by travel_orchestrator: the `plan`, `segment_task_ids` and `orchestrator_task_id`.
  The orchestrator is completed before this row (whose completion the poller writes after the handler
  returns), so a backend that watches only the orchestrator sees it end. If this worker dies in
  between, the stitch runs again, rewrites the same file and finds the orchestrator already Complete.
* written by the headless Wan2GP / Reigh orchestrator: its payload (`orchestrator_details`, see
  headless_payload), `orchestrator_run_id` and `orchestrator_task_id_ref`. Its segments name the run in
  their params, not in parent_task_id (store.run_segments; the newest finished row of each index);
  the overlaps are the row's `frame_overlap_settings_expanded` (what the segments were made with),
  else the plan's. The headless orchestrator completes itself from this row, so it is not touched.
* a crossfade join the Reigh app writes (reigh-app create-task/resolvers/crossfadeJoin.ts): the
  `clip_urls` to join (paths or URLs, at least two), `frame_overlap_settings_expanded` (one positive
  overlap per join), optionally `fps` (else the first clip's) and an `audio_url` laid under the result.

A headless job's stitch and a crossfade join blend their overlaps as the headless stitch does (a cosine
fade, sharpened by `crossfade_sharp_amt`, default 0.3: travel/stitch.py Crossfade); ours keep the
smoothstep fade unless their row gives `crossfade_sharp_amt`.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from worker.dialects import ignored_params
from worker.errors import ValidationError
from worker.generation import publish, queue_wait_seconds, report_ignored
from worker.handlers import HandlerResult, TaskContext, register
from worker.params import ParamReader, local_path, to_int
from worker.paths import output_file
from worker.store import Task, TaskStatus
from worker.travel.plan import HEADLESS_KEY, TravelPlan, read_crossfade_sharpen, read_travel
from worker.travel.stitch import HEADLESS_SHARPEN, Crossfade, Source, stitch
from worker.travel_children import (
    complete_job,
    result_of,
    HEADLESS_REF,
    PLAN_PARAM,
    headless_payload,
    is_headless_child,
    report_job_progress,
    segment_video,
    stored_plan,
)
from worker.video import FFmpegError, lay_audio, probe

OUTPUT_NAME = "travel.mp4"
RUN_ID = "orchestrator_run_id"
STITCH_OVERLAPS = "frame_overlap_settings_expanded"
CLIPS = "clip_urls"
AUDIO = "audio_url"


@dataclass(frozen=True)
class _StitchJob:
    """What one stitch row asks for, whichever form wrote it."""

    videos: list[Path]  # local files, in order (a continued video first)
    overlaps: list[int]  # one per join
    shared: list[int]  # frames kept once per join (image-to-video segments sharing their joining frame)
    fps: float
    field: str  # the key that named the videos, for errors
    summary: dict[str, Any]  # what the form puts in result_data besides the video's own facts
    segments: list[Task] = field(default_factory=list)  # the segment rows, when the videos are theirs
    plan: TravelPlan | None = None  # ours: the stored plan, whose length the result must have
    parked_orchestrator: str | None = None  # ours: the orchestrator this stitch completes
    audio: Path | None = None  # a sound track laid under the result
    crossfade: Crossfade = Crossfade()

    def sources(self) -> list[Source]:
        """The videos to stitch, each after the first skipping the frames it shares with the one before."""
        return [Source(video, skip=skip) for video, skip in zip(self.videos, [0, *self.shared])]


@register("travel_stitch")
def travel_stitch(ctx: TaskContext) -> HandlerResult:
    started = time.perf_counter()
    params = ctx.task.params
    if CLIPS in params:
        job = _clip_join(ctx)
    elif PLAN_PARAM in params or not is_headless_child(params):
        job = _our_stitch(ctx)
    else:
        job = _headless_stitch(ctx)

    ctx.raise_if_cancelled()
    expected = job.plan.expected_frames if job.plan else None
    ctx.report_progress({"phase": "stitch", "segments": len(job.videos), "expected_frames": expected})
    if job.plan is not None:
        report_job_progress(ctx, len(job.plan.segments), job.plan.expected_frames, phase="stitch",
                            done=len(job.segments))
    output = output_file(ctx.output_dir, OUTPUT_NAME)
    try:
        stitched = stitch(job.sources(), job.overlaps, output, job.fps, job.crossfade)
    except ValueError as error:  # a video too short for its overlaps, or an odd frame size
        raise ValidationError(job.field, str(error)) from None
    if expected is not None and stitched.frames != expected:
        raise RuntimeError(f"stitched {stitched.frames} frames; the plan expects {expected}")
    if job.audio is not None:
        lay_audio(output, job.audio, stitched.frames / job.fps, AUDIO)
    own_phases = {"queue_wait": queue_wait_seconds(ctx), "stitch": round(time.perf_counter() - started, 4)}
    published, upload = publish(ctx, {"output": stitched.path, "thumbnail": stitched.thumbnail})
    own_phases.update(upload)
    summary = {"frames": stitched.frames, "fps": job.fps, "width": stitched.width, "height": stitched.height,
               **published, "crossfade": job.crossfade.describe(), **job.summary}
    if stitched.scaled:  # positions in the stitched order (a continued video first), scaled to the first's size
        summary["scaled_videos"] = list(stitched.scaled)
    result_data = {**summary, "phase_seconds": own_phases}
    if job.parked_orchestrator is None:
        return HandlerResult(output_location=published["output"], result_data=result_data)

    complete_job(ctx, job.parked_orchestrator, published["output"], summary, job.segments, own_phases, started)
    return HandlerResult(output_location=published["output"], result_data=result_data)


def _our_stitch(ctx: TaskContext) -> _StitchJob:
    """A stitch row travel_orchestrator wrote: its stored plan and the segment rows it names."""
    params = ctx.task.params
    if PLAN_PARAM not in params:
        raise ValidationError(PLAN_PARAM, f"required: a stitch written by travel_orchestrator, the headless form "
                                          f"({HEADLESS_KEY}, {RUN_ID}, {HEADLESS_REF}) or a join of {CLIPS}")
    reader = ParamReader(params)
    plan = stored_plan(params)
    segments = [_finished_segment(ctx, task_id) for task_id in reader.texts("segment_task_ids")]
    if len(segments) != len(plan.segments):
        raise ValidationError("segment_task_ids", f"names {len(segments)} segments; the plan has {len(plan.segments)}")
    job = _plan_stitch(plan, segments, plan.overlaps, "segment_task_ids", {"ignored_params": plan.ignored_params},
                       Crossfade(plan.crossfade_sharpen))
    return replace(job, plan=plan, parked_orchestrator=reader.text("orchestrator_task_id"))


def _headless_stitch(ctx: TaskContext) -> _StitchJob:
    """A stitch row the headless orchestrator wrote: the plan of its payload, the run's finished
    segments, and the overlaps it made them with."""
    params = ctx.task.params
    reader = ParamReader(params)
    payload = headless_payload(ctx, reader)
    plan, _ = read_travel({HEADLESS_KEY: payload}, ctx.config.limits)
    run_id, ref = reader.text(RUN_ID), reader.text(HEADLESS_REF)
    count = reader.integer("num_total_segments_generated", len(plan.segments), minimum=1)
    if count != len(plan.segments):
        raise ValidationError("num_total_segments_generated",
                              f"says {count} segments; the payload in {HEADLESS_KEY} plans {len(plan.segments)}")
    overlaps, overlap_source = _headless_overlaps(reader, plan.overlaps)
    crossfade = Crossfade(read_crossfade_sharpen(reader, plan.crossfade_sharpen))  # the row's copy of the payload's
    newest: dict[Any, Task] = {}
    for task in ctx.store.run_segments(str(run_id), str(ref)):
        index = task.params.get("segment_index")
        newest.setdefault(int(index) if isinstance(index, str) and index.isdigit() else index, task)
    missing = [index for index in range(count) if index not in newest]
    if missing:
        raise ValidationError(RUN_ID, f"run {run_id!r} of orchestrator {ref} has no finished travel_segment row "
                                      f"for segment_index {missing} (of {count})")
    # Keys the headless orchestrator copies from its payload onto the stitch row: honoured through it.
    honoured = {"fps_final_video": plan.fps, "parsed_resolution_wh": payload.get("parsed_resolution_wh"),
                "initial_continued_video_path": payload.get("continue_from_video_resolved_path")}
    for key, value in honoured.items():
        if reader.has(key) and params[key] == value:
            reader.used.add(key)
    ignored = {**plan.ignored_params, **ignored_params(reader)}
    report_ignored(ctx.log, ignored)
    own = {"ignored_params": ignored, "orchestrator_task_id": ref, RUN_ID: run_id, "overlap_source": overlap_source}
    return _plan_stitch(plan, [newest[index] for index in range(count)], overlaps, RUN_ID, own, crossfade)


def _plan_stitch(plan: TravelPlan, segments: list[Task], overlaps: list[int], field_name: str,
                 own: dict[str, Any], crossfade: Crossfade) -> _StitchJob:
    """The stitch of a travel plan's segment rows (with the video the journey continues first), and the
    job's summary: the first segment's model and parameters, each segment's facts."""
    continued = [local_path(plan.continue_from, "continue_from_video")] if plan.continue_from else []
    videos = [segment_video(segment, f"{field_name}[{i}]") for i, segment in enumerate(segments)]
    first = result_of(segments[0])
    heads = overlaps if plan.continue_from else [0, *overlaps]
    summary = {
        "model": first.get("model"),
        "preset": first.get("preset"),
        "seed": plan.seed,
        "resolution": plan.resolution,
        "roundings": plan.to_params()["roundings"],
        "frame_rule": plan.frame_rule,
        "parameters": first.get("parameters", {}),
        "parameter_sources": _job_parameter_sources(first.get("parameter_sources", {}), plan),
        "segments": [_segment_summary(task, overlap) for task, overlap in zip(segments, heads)],
        **own,
    }
    return _StitchJob([*continued, *videos], overlaps, plan.shared_frames_of(overlaps), plan.fps, field_name,
                      summary, segments, crossfade=crossfade)


def _clip_join(ctx: TaskContext) -> _StitchJob:
    """A crossfade join of given clips (the Reigh app's join form)."""
    reader = ParamReader(ctx.task.params)
    clips = reader.texts(CLIPS)
    if len(clips) < 2:
        raise ValidationError(CLIPS, f"must name at least two clips to join, got {len(clips)}")
    overlaps = _listed_overlaps(reader, len(clips) - 1, minimum=1)
    videos = [local_path(clip, f"{CLIPS}[{i}]") for i, clip in enumerate(clips)]
    infos = []
    for i, video in enumerate(videos):
        try:
            infos.append(probe(video))
        except (OSError, FFmpegError) as error:
            raise ValidationError(f"{CLIPS}[{i}]", f"not a readable video: {error}") from None
    fps = reader.number("fps", infos[0].fps, minimum=1, maximum=240)
    audio = reader.text(AUDIO, None)
    crossfade = Crossfade(read_crossfade_sharpen(reader, HEADLESS_SHARPEN))  # the headless stitch's default
    reader.used.add("full_orchestrator_payload")  # the app's copy of these same keys, for its own readers
    ignored = ignored_params(reader)
    report_ignored(ctx.log, ignored)
    summary = {CLIPS: clips, "overlaps": overlaps, AUDIO: audio, "ignored_params": ignored}
    return _StitchJob(videos, overlaps, [0] * len(overlaps), fps, CLIPS, summary,
                      audio=local_path(audio, AUDIO) if audio else None, crossfade=crossfade)


def _headless_overlaps(reader: ParamReader, planned: list[int]) -> tuple[list[int], str]:
    """(overlap of each join, where it came from): the stitch row's list (what the headless orchestrator
    gave its segments, as many as there are joins: it may list one per segment), else the plan's."""
    if not reader.has(STITCH_OVERLAPS):
        return planned, "plan"
    return _listed_overlaps(reader, len(planned), minimum=0, extra_allowed=True), STITCH_OVERLAPS


def _listed_overlaps(reader: ParamReader, joins: int, *, minimum: int, extra_allowed: bool = False) -> list[int]:
    """The row's frame_overlap_settings_expanded: one overlap >= minimum per join (a longer list, where
    allowed, is cut to the joins)."""
    values = reader.params.get(STITCH_OVERLAPS)
    reader.used.add(STITCH_OVERLAPS)
    fits = isinstance(values, list) and (len(values) >= joins if extra_allowed else len(values) == joins)
    if not fits:
        wanted = f"at least {joins}" if extra_allowed else f"exactly {joins}"
        raise ValidationError(STITCH_OVERLAPS, f"must list {wanted} overlaps (one per join), got {values!r}")
    overlaps = [to_int(value, f"{STITCH_OVERLAPS}[{i}]") for i, value in enumerate(values[:joins])]
    if any(overlap < minimum for overlap in overlaps):
        raise ValidationError(STITCH_OVERLAPS, f"overlaps must be >= {minimum}, got {overlaps}")
    return overlaps


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
    result = result_of(task)
    return {
        "task_id": task.id,
        "output_location": task.output_location,
        "frames": result.get("frames"),
        "overlap": overlap,
        "seed": result.get("seed"),
        "phase_seconds": result.get("phase_seconds", {}),
    }
