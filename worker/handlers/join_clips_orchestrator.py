"""`join_clips_orchestrator`: the Reigh app's join of clips (reigh-app supabase/functions/create-task/
resolvers/joinClips.ts; the headless worker's join/orchestrator.py), expanded into a transition per
pair of clips and a final stitch that completes this row (worker/join_jobs.py).

The job is the row's `orchestrator_details` (or the row itself): `clip_list` ([{"url", "name"}], at
least two; or, where it is empty, the videos of the finished rows in `segment_task_ids`), the join
settings of worker/join.py with the generation's (model, prompt, phase_config, LoRAs, seed, ...),
`per_join_settings` (one object per join, over those), `loop_first_clip` (join the first clip to
itself played backwards, to loop it) and `audio_url` (laid under the result). Keys that change
nothing are reported on the parked row and in the job's result_data as `ignored_params`.

Unlike the headless orchestrator, the joins always run in parallel: `use_parallel_joins: false` (its
older chain, which re-encodes the growing video once per join) is reported, not followed; and clips
whose frames do not fit the joins fail here instead of being joined with a warning.
"""
from __future__ import annotations

from worker.errors import ValidationError
from worker.generation import publish
from worker.handlers import HandlerResult, TaskContext, register
from worker.join import AUDIO, ORCHESTRATOR_TASK, clip_locations
from worker.join_jobs import ORCHESTRATOR_KEYS, JoinJob, expand_join, orchestrator_ignored, orchestrator_payload, per_join_settings
from worker.params import ParamReader
from worker.paths import output_file
from worker.store import TaskStatus
from worker.travel_children import video_location
from worker.video import VideoWriter, probe, read_video

CLIP_LIST, PER_JOIN, LOOP_FIRST = "clip_list", "per_join_settings", "loop_first_clip"
SEGMENT_IDS = "segment_task_ids"
# The orchestrator's own keys: read here, never copied onto the joins.
JOB_KEYS = (CLIP_LIST, PER_JOIN, LOOP_FIRST, SEGMENT_IDS, *ORCHESTRATOR_KEYS)
REVERSED_NAME = "loop_reversed.mp4"


@register(ORCHESTRATOR_TASK)
def join_clips_orchestrator(ctx: TaskContext) -> HandlerResult:
    payload, prefix = orchestrator_payload(ctx.task.params)
    reader = ParamReader(payload, prefix=prefix)
    clips = _clips(ctx, reader)
    if reader.flag(LOOP_FIRST):
        clips = [clips[0], _reversed(ctx, clips[0], f"{prefix}{CLIP_LIST}[0]")]
    if len(clips) < 2:
        raise ValidationError(prefix + CLIP_LIST, f"must name at least two clips to join (or one with {LOOP_FIRST}), "
                                                  f"got {len(clips)}")
    overrides, override_fields = per_join_settings(reader, PER_JOIN, len(clips) - 1)
    clip_fields = [f"{CLIP_LIST}[{i}]" for i in range(len(clips))]
    if reader.flag(LOOP_FIRST):
        clip_fields[1] = f"{LOOP_FIRST} (the first clip reversed)"
    return expand_join(ctx, JoinJob(
        clips=clips, clip_fields=clip_fields, overrides=overrides, override_fields=override_fields, prefix=prefix,
        settings={key: value for key, value in payload.items() if key not in JOB_KEYS},
        audio=reader.text(AUDIO, None), ignored=orchestrator_ignored(reader)))


def _clips(ctx: TaskContext, reader: ParamReader) -> list[str]:
    """The clips' locations: `clip_list` entries ({"url"} objects or plain strings), else the videos of
    the finished rows `segment_task_ids` names, as the headless orchestrator builds its list."""
    field = reader.prefix + CLIP_LIST
    listed = reader.params.get(CLIP_LIST)
    if not listed and reader.has(SEGMENT_IDS):
        return [_segment_output(ctx, task_id, f"{reader.prefix}{SEGMENT_IDS}[{i}]")
                for i, task_id in enumerate(reader.texts(SEGMENT_IDS))]
    return clip_locations(listed, field)


def _segment_output(ctx: TaskContext, task_id: str, field: str) -> str:
    """Where a finished row's video is (travel_children.video_location)."""
    task = ctx.store.get(task_id)
    if task is None or task.status != TaskStatus.COMPLETE:
        raise ValidationError(field, f"row {task_id} has no finished video ({'missing' if task is None else task.status})")
    location = video_location(task)
    if not location:
        raise ValidationError(field, f"row {task_id} has no output")
    return location


def _reversed(ctx: TaskContext, clip: str, field: str) -> str:
    """The clip played backwards (loop_first_clip), written to this row's folder and published, so
    a join on any box can read it."""
    path = ParamReader({field: clip}).input_file(field)
    try:
        info, frames = probe(path), read_video(path)
    except (OSError, RuntimeError) as error:
        raise ValidationError(field, f"not a readable video: {error}") from None
    output = output_file(ctx.output_dir, REVERSED_NAME)
    with VideoWriter(output, info.fps, info.width, info.height) as writer:
        writer.write(frames[::-1])
    published, _ = publish(ctx, {"reversed_clip": output})
    return published["reversed_clip"]
