"""A join job expanded into its child rows, in one transaction: a `join_clips_segment` per pair of
consecutive clips, each generating the transition between them (no dependencies: several workers can
run them at once), and one `join_final_stitch` depending on all of them, which lays the clips and
transitions end to end and completes the parked orchestrator (worker/join.py says how).

Shared by join_clips_orchestrator (the app's clips) and edit_video_orchestrator (the parts of a video
it keeps). Everything is checked before any row is written, so a bad job fails at once naming the
field of the orchestrator's row: each join is read as its segment will read it (clips probed and
counted at the join's rate, the transition planned, the generation checked against its model, which
must be a VACE model), and a clip between two joins must hold what both take of it.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from worker.errors import ValidationError
from worker.generation import HEADLESS_VACE_MODEL, install_lora_urls, read_generation, report_ignored
from worker.handlers import HandlerResult, TaskContext
from worker.join import (
    AUDIO,
    DEFAULT_JOIN_PROMPT,
    END,
    INDEX,
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
from worker.store import NewTask
from worker.travel.plan import HEADLESS_KEY

STITCH_KEY = "stitch"
# Keys of a headless join orchestrator's payload that are its own, never a join's setting: read here
# (use_parallel_joins and skip_frame_validation are reported when they ask for the headless chain or
# for no checks).
ORCHESTRATOR_KEYS = (AUDIO, "orchestrator_task_id", "run_id", "use_parallel_joins", "skip_frame_validation",
                     "vlm_device", "output_base_dir")


def join_key(index: int) -> str:
    return f"join-{index}"


@dataclass
class JoinJob:
    """What an orchestrator asks to join, with the row's name of each part for errors."""

    clips: list[str]  # locations (paths or URLs), in order
    clip_fields: list[str]  # the row's field that gave each clip
    settings: dict[str, Any]  # every join's settings and generation fields
    overrides: list[dict[str, Any]]  # per join, over `settings`
    override_fields: list[dict[str, str]]  # per join: the row's field that gave each overriding key
    prefix: str  # where the job's keys sit in the row ("orchestrator_details." or "")
    audio: str | None = None  # laid under the joined video
    ignored: dict[str, str] = field(default_factory=dict)  # the orchestrator's own keys not followed


def expand_join(ctx: TaskContext, job: JoinJob) -> HandlerResult:
    """Check every join of `job` and park the orchestrator with its children (see the module)."""
    settings = {"prompt": DEFAULT_JOIN_PROMPT, **job.settings}
    ignored = dict(job.ignored)
    children: list[NewTask] = []
    transitions: list[Transition] = []
    counted: dict[tuple[Path, float], int] = {}  # resampled clips' frame counts, shared by the joins
    for index in range(len(job.clips) - 1):
        join = {**settings, **job.overrides[index], START: job.clips[index], END: job.clips[index + 1],
                TRANSITION_ONLY: True, INDEX: index, "child_key": join_key(index), "orchestrator_task_id": ctx.task.id}
        labels = {START: job.clip_fields[index], END: job.clip_fields[index + 1], **job.override_fields[index]}
        priority = join.pop("priority", None)
        if priority is not None:  # the app's, per join or for all: the join row's queue priority
            priority = to_int(priority, _row_field("priority", labels, job.prefix))
        transition, join_ignored = _check_join(ctx, join, labels, job.prefix, counted)
        transitions.append(transition)
        ignored.update(join_ignored)
        children.append(NewTask(task_type=SEGMENT_TASK, params=join, priority=priority, max_attempts=ctx.task.max_attempts))
    _check_middle_clips(transitions, job.clip_fields, job.prefix)
    report_ignored(ctx.log, ignored)

    expected = expected_frames(transitions)
    stitch = NewTask(
        task_type=STITCH_TASK,
        params={"child_key": STITCH_KEY, "orchestrator_task_id": ctx.task.id,
                "clip_list": [{"url": clip} for clip in job.clips], "transition_task_ids": [child.id for child in children],
                "expected_frames": expected, **({AUDIO: job.audio} if job.audio else {}), "ignored_params": ignored},
        dependant_on=[child.id for child in children],
        max_attempts=ctx.task.max_attempts,
    )
    ctx.log.info("join planned", joins=len(children), expected_frames=expected)
    return HandlerResult(park_children=[*children, stitch], park_progress={
        "phase": "waiting_for_children", "joins": len(children), "expected_frames": expected, "ignored_params": ignored})


def expected_frames(transitions: list[Transition]) -> int:
    """Frames of the joined video: every clip without its replaced ends, every transition, less the
    context frames each transition cross-fades with its clips."""
    clips = [transitions[0].clip1_total_frames] + [transition.clip2_total_frames for transition in transitions]
    total = sum(clips) + sum(transition.frames for transition in transitions)
    return total - sum(t.gap_from_clip1 + t.gap_from_clip2 + t.context_from_clip1 + t.context_from_clip2
                       for t in transitions)


def per_join_settings(reader: ParamReader, key: str, joins: int) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """The row's list `key` of settings objects, one per join (at most; {} for the rest), and the
    field that gave each of their keys."""
    name = reader.prefix + key
    listed = reader.params.get(key) or []
    if not isinstance(listed, list) or len(listed) > joins:
        raise ValidationError(name, f"must be a list of at most {joins} objects (one per join), got {listed!r}")
    overrides: list[dict[str, Any]] = []
    for i, item in enumerate(listed):
        if not isinstance(item, Mapping):
            raise ValidationError(f"{name}[{i}]", f"must be an object of settings for join {i}, got {item!r}")
        overrides.append({setting: value for setting, value in item.items() if value is not None})
    overrides += [{} for _ in range(joins - len(overrides))]
    return overrides, [{setting: f"{key}[{i}].{setting}" for setting in item} for i, item in enumerate(overrides)]


def _check_join(ctx: TaskContext, join: dict[str, Any], labels: Mapping[str, str], prefix: str,
                counted: dict[tuple[Path, float], int]) -> tuple[Transition, dict[str, str]]:
    """Read a join as its segment will and return its transition with the keys it ignores; errors and
    ignored keys name the field of the orchestrator's row."""
    try:
        reader = ParamReader(join)
        spec = read_join(reader, reader.input_file(START), reader.input_file(END))
        transition, _ = plan_transition(*spec.frame_counts(counted), spec.context, spec.gap, spec.replace)
        row = read_generation(generation_params(join, spec, transition.frames), resources=ctx.resources,
                              limits=ctx.config.limits, output_dir=ctx.output_dir, log=ctx.log,
                              default_model=HEADLESS_VACE_MODEL,
                              install_loras=lambda names: install_lora_urls(ctx, names), prompt_required=False)
        require_vace(ctx.resources.model_registry(), row.request.model)
    except ValidationError as error:
        raise ValidationError(_row_field(error.field, labels, prefix), error.rule) from None
    ignored = {**row.ignored, **spec.overridden}
    return transition, {_row_field(key, labels, prefix): reason for key, reason in ignored.items()}


def _row_field(field_name: str, labels: Mapping[str, str], prefix: str) -> str:
    """The field of the orchestrator's row that a join's `field_name` came from: its label where the
    job gave one (a clip, an overriding key), else the job's own key."""
    key = field_name.split(" ")[0].split("[")[0].split(".")[0]
    if key in labels:
        return prefix + labels[key] + field_name[len(key):]
    return prefix + field_name


def _check_middle_clips(transitions: list[Transition], clip_fields: list[str], prefix: str) -> None:
    """A clip between two joins must hold what both take of it: the replaced frames at each end and
    the context each transition cross-fades with."""
    for index in range(1, len(transitions)):
        before, after = transitions[index - 1], transitions[index]
        needed = before.gap_from_clip2 + before.context_from_clip2 + after.context_from_clip1 + after.gap_from_clip1
        if after.clip1_total_frames < needed:
            raise ValidationError(
                prefix + clip_fields[index],
                f"has {after.clip1_total_frames} frames; joins {index - 1} and {index} need {needed} of it "
                f"({before.gap_from_clip2} + {before.context_from_clip2} at its start, {after.context_from_clip1} + "
                f"{after.gap_from_clip1} at its end): give a shorter gap_frame_count or context_frame_count")


def orchestrator_payload(params: Mapping[str, Any]) -> tuple[Mapping[str, Any], str]:
    """(the job, where it sits): the row's orchestrator_details (the app's form), else the row itself."""
    if HEADLESS_KEY not in params:
        return params, ""
    payload = params[HEADLESS_KEY]
    if not isinstance(payload, Mapping):
        raise ValidationError(HEADLESS_KEY, "must be an object (the job's settings)")
    return payload, f"{HEADLESS_KEY}."


def orchestrator_ignored(reader: ParamReader) -> dict[str, str]:
    """The headless orchestrators' own keys that are not followed here (the joins report theirs)."""
    ignored: dict[str, str] = {}
    if reader.has("use_parallel_joins") and not reader.flag("use_parallel_joins"):
        ignored[reader.prefix + "use_parallel_joins"] = "joins always run in parallel here (the same video, encoded once)"
    if reader.flag("skip_frame_validation"):
        ignored[reader.prefix + "skip_frame_validation"] = "the clips are always checked against the joins"
    if reader.has("output_base_dir"):
        ignored[reader.prefix + "output_base_dir"] = "outputs go to each task's folder"
    return ignored
