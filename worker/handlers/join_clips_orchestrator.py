"""`join_clips_orchestrator`: the Reigh app's join of clips (reigh-app supabase/functions/create-task/
resolvers/joinClips.ts; the headless worker's join/orchestrator.py), expanded into its children in one
transaction: a `join_clips_segment` per pair of consecutive clips, each generating the transition
between them (no dependencies: several workers can run them at once), and one `join_final_stitch`
depending on all of them, which lays the clips and transitions end to end and completes this row.

The job is the row's `orchestrator_details` (or the row itself): `clip_list` ([{"url", "name"}], at
least two; or, where it is empty, the videos of the finished rows in `segment_task_ids`), the join
settings of worker/join.py with the generation's (model, prompt, phase_config, LoRAs, seed, ...),
`per_join_settings` (one object per join, over those), `loop_first_clip` (join the first clip to
itself played backwards, to loop it) and `audio_url` (laid under the result).

Everything is checked before any row is written, so a bad job fails at once naming the field: each
clip is a readable video, each join's transition fits its clips (worker/join.py plan_transition), a
clip between two joins holds both transitions' context and replaced frames, and each join's generation
is valid for its model (read as the segment will read it, without loading anything). Keys that change
nothing are reported on the parked row and in the job's result_data as `ignored_params`.

Unlike the headless orchestrator, the joins always run in parallel: `use_parallel_joins: false` (its
older chain, which re-encodes the growing video once per join) is reported, not followed; and clips
whose frames do not fit the joins fail here instead of being joined with a warning.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from worker.errors import ValidationError
from worker.generation import HEADLESS_VACE_MODEL, install_lora_urls, publish, read_generation, report_ignored
from worker.handlers import HandlerResult, TaskContext, register
from worker.join import (
    AUDIO,
    DEFAULT_JOIN_PROMPT,
    END,
    INDEX,
    ORCHESTRATOR_TASK,
    SEGMENT_TASK,
    START,
    STITCH_TASK,
    TRANSITION_ONLY,
    Transition,
    generation_params,
    plan_transition,
    read_join,
    require_vace,
)
from worker.params import ParamReader, to_int
from worker.paths import output_file
from worker.store import NewTask, TaskStatus
from worker.travel.plan import HEADLESS_KEY
from worker.travel_children import video_location
from worker.video import VideoWriter, probe, read_video

STITCH_KEY = "stitch"
CLIP_LIST, PER_JOIN, LOOP_FIRST = "clip_list", "per_join_settings", "loop_first_clip"
SEGMENT_IDS = "segment_task_ids"
# The orchestrator's own keys: read here, never copied onto the joins. use_parallel_joins and
# skip_frame_validation are reported when they ask for the headless chain or for no checks.
ORCHESTRATOR_KEYS = (CLIP_LIST, PER_JOIN, LOOP_FIRST, SEGMENT_IDS, AUDIO, "orchestrator_task_id", "run_id",
                     "use_parallel_joins", "skip_frame_validation", "vlm_device", "output_base_dir")
REVERSED_NAME = "loop_reversed.mp4"


def join_key(index: int) -> str:
    return f"join-{index}"


@register(ORCHESTRATOR_TASK)
def join_clips_orchestrator(ctx: TaskContext) -> HandlerResult:
    params = ctx.task.params
    payload, prefix = (params[HEADLESS_KEY], f"{HEADLESS_KEY}.") if HEADLESS_KEY in params else (params, "")
    reader = ParamReader(payload, prefix=prefix)
    clips = _clips(ctx, reader)
    if reader.flag(LOOP_FIRST):
        clips = [clips[0], _reversed(ctx, clips[0], f"{prefix}{CLIP_LIST}[0]")]
    if len(clips) < 2:
        raise ValidationError(prefix + CLIP_LIST, f"must name at least two clips to join (or one with {LOOP_FIRST}), "
                                                  f"got {len(clips)}")
    joins = len(clips) - 1
    overrides = _per_join(reader, joins)
    settings = {key: value for key, value in payload.items() if key not in ORCHESTRATOR_KEYS}
    settings.setdefault("prompt", DEFAULT_JOIN_PROMPT)
    ignored = _orchestrator_ignored(reader)

    children: list[NewTask] = []
    transitions: list[Transition] = []
    for index in range(joins):
        join = {**settings, **overrides[index], START: clips[index], END: clips[index + 1], TRANSITION_ONLY: True,
                INDEX: index, "child_key": join_key(index), "orchestrator_task_id": ctx.task.id}
        priority = _priority(join, index, prefix, overrides[index])
        transition, join_ignored = _check_join(ctx, join, index, prefix, overrides[index])
        transitions.append(transition)
        ignored.update(join_ignored)
        children.append(NewTask(task_type=SEGMENT_TASK, params=join, priority=priority, max_attempts=ctx.task.max_attempts))
    _check_middle_clips(transitions, prefix)
    report_ignored(ctx.log, ignored)

    expected = expected_frames(transitions)
    stitch = NewTask(
        task_type=STITCH_TASK,
        params={"child_key": STITCH_KEY, "orchestrator_task_id": ctx.task.id, CLIP_LIST: [{"url": clip} for clip in clips],
                "transition_task_ids": [child.id for child in children], "expected_frames": expected,
                **({AUDIO: payload[AUDIO]} if reader.has(AUDIO) else {}), "ignored_params": ignored},
        dependant_on=[child.id for child in children],
        max_attempts=ctx.task.max_attempts,
    )
    ctx.log.info("join planned", joins=joins, expected_frames=expected)
    return HandlerResult(park_children=[*children, stitch], park_progress={
        "phase": "waiting_for_children", "joins": joins, "expected_frames": expected, "ignored_params": ignored})


def expected_frames(transitions: list[Transition]) -> int:
    """Frames of the joined video: every clip without its replaced ends, every transition, less the
    context frames each transition cross-fades with its clips."""
    clips = [transitions[0].clip1_total_frames] + [transition.clip2_total_frames for transition in transitions]
    total = sum(clips) + sum(transition.frames for transition in transitions)
    return total - sum(t.gap_from_clip1 + t.gap_from_clip2 + t.context_from_clip1 + t.context_from_clip2
                       for t in transitions)


def _clips(ctx: TaskContext, reader: ParamReader) -> list[str]:
    """The clips' locations: `clip_list` entries ({"url"} objects or plain strings), else the videos of
    the finished rows `segment_task_ids` names, as the headless orchestrator builds its list."""
    field = reader.prefix + CLIP_LIST
    listed = reader.params.get(CLIP_LIST)
    reader.used.update((CLIP_LIST, SEGMENT_IDS))
    if not listed and reader.has(SEGMENT_IDS):
        return [_segment_output(ctx, task_id, f"{reader.prefix}{SEGMENT_IDS}[{i}]")
                for i, task_id in enumerate(reader.texts(SEGMENT_IDS))]
    if not isinstance(listed, list):
        raise ValidationError(field, f"must be a list of clips ({{\"url\": ...}} objects), got {listed!r}")
    clips = []
    for i, clip in enumerate(listed):
        url = clip.get("url") if isinstance(clip, Mapping) else clip
        if not isinstance(url, str) or not url.strip():
            raise ValidationError(f"{field}[{i}]", f"needs the clip's url, got {clip!r}")
        clips.append(url)
    return clips


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
    reader = ParamReader({field: clip})
    path = reader.input_file(field)
    try:
        info, frames = probe(path), read_video(path)
    except (OSError, RuntimeError) as error:
        raise ValidationError(field, f"not a readable video: {error}") from None
    output = output_file(ctx.output_dir, REVERSED_NAME)
    with VideoWriter(output, info.fps, info.width, info.height) as writer:
        writer.write(frames[::-1])
    published, _ = publish(ctx, {"reversed_clip": output})
    return published["reversed_clip"]


def _per_join(reader: ParamReader, joins: int) -> list[dict[str, Any]]:
    """One settings object per join ({} where none is given); more than there are joins fails."""
    field = reader.prefix + PER_JOIN
    listed = reader.params.get(PER_JOIN) or []
    if not isinstance(listed, list) or len(listed) > joins:
        raise ValidationError(field, f"must be a list of at most {joins} objects (one per join), got {listed!r}")
    overrides = []
    for i, item in enumerate(listed):
        if not isinstance(item, Mapping):
            raise ValidationError(f"{field}[{i}]", f"must be an object of settings for join {i}, got {item!r}")
        overrides.append({key: value for key, value in item.items() if value is not None})
    return overrides + [{}] * (joins - len(overrides))


def _priority(join: dict[str, Any], index: int, prefix: str, overridden: Mapping[str, Any]) -> int | None:
    """The join's `priority` (the app's, per join or for all): its row's queue priority, taken out of its
    params; None (absent) inherits this row's."""
    value = join.pop("priority", None)
    field = f"{prefix}{PER_JOIN}[{index}].priority" if "priority" in overridden else f"{prefix}priority"
    return None if value is None else to_int(value, field)


def _check_join(ctx: TaskContext, join: dict[str, Any], index: int, prefix: str,
                overridden: Mapping[str, Any]) -> tuple[Transition, dict[str, str]]:
    """Read join `index` as its segment will (clips probed and counted at the join's rate, the
    transition planned, the generation checked against its model) and return the transition with the
    keys it ignores; errors name the field in this row (a per_join_settings key: that entry's)."""
    try:
        reader = ParamReader(join)
        spec = read_join(reader, reader.input_file(START), reader.input_file(END))
        transition, _ = plan_transition(*spec.frame_counts(), spec.context, spec.gap, spec.replace)
        row = read_generation(generation_params(join, spec, transition.frames), resources=ctx.resources,
                              limits=ctx.config.limits, output_dir=ctx.output_dir, log=ctx.log,
                              default_model=HEADLESS_VACE_MODEL,
                              install_loras=lambda names: install_lora_urls(ctx, names), prompt_required=False)
        require_vace(ctx.resources.model_registry(), row.request.model)
    except ValidationError as error:
        raise ValidationError(_row_field(error.field, index, prefix, overridden), error.rule) from None
    ignored = {**row.ignored, **spec.overridden}
    return transition, {_row_field(key, index, prefix, overridden): reason for key, reason in ignored.items()}


def _row_field(field: str, index: int, prefix: str, overridden: Mapping[str, Any]) -> str:
    """The field of this row that join `index`'s `field` came from: a clip_list entry for its clips,
    its per_join_settings entry for a key that entry set, else the job's own key."""
    if field == START:
        return f"{prefix}{CLIP_LIST}[{index}]"
    if field == END:
        return f"{prefix}{CLIP_LIST}[{index + 1}]"
    key = field.split(" ")[0].split("[")[0].split(".")[0]
    return f"{prefix}{PER_JOIN}[{index}].{field}" if key in overridden else f"{prefix}{field}"


def _check_middle_clips(transitions: list[Transition], prefix: str) -> None:
    """A clip between two joins must hold what both take of it: the replaced frames at each end and
    the context each transition cross-fades with."""
    for index in range(1, len(transitions)):
        before, after = transitions[index - 1], transitions[index]
        needed = before.gap_from_clip2 + before.context_from_clip2 + after.context_from_clip1 + after.gap_from_clip1
        if after.clip1_total_frames < needed:
            raise ValidationError(
                f"{prefix}{CLIP_LIST}[{index}]",
                f"has {after.clip1_total_frames} frames; joins {index - 1} and {index} need {needed} of it "
                f"({before.gap_from_clip2} + {before.context_from_clip2} at its start, {after.context_from_clip1} + "
                f"{after.gap_from_clip1} at its end): give a shorter gap_frame_count or context_frame_count")


def _orchestrator_ignored(reader: ParamReader) -> dict[str, str]:
    """The orchestrator's own keys that are not followed (its joins report theirs)."""
    ignored: dict[str, str] = {}
    if reader.has("use_parallel_joins") and not reader.flag("use_parallel_joins"):
        ignored[reader.prefix + "use_parallel_joins"] = "joins always run in parallel here (the same video, encoded once)"
    if reader.flag("skip_frame_validation"):
        ignored[reader.prefix + "skip_frame_validation"] = "the clips are always checked against the joins"
    if reader.has("output_base_dir"):
        ignored[reader.prefix + "output_base_dir"] = "outputs go to each task's folder"
    reader.used.update(("orchestrator_task_id", "run_id", "vlm_device", AUDIO))
    return ignored
