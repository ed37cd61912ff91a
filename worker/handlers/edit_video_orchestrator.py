"""`edit_video_orchestrator`: regenerate portions of a video (the Reigh app's edit-video tool, reigh-app
src/tools/edit-video/hooks/useReplaceMode.ts; the headless worker's edit_video_orchestrator.py).

The parts of `source_video_url` outside `portions_to_regenerate` are kept: each "keeper" is written
to this row's folder as a clip and published, and the keepers are joined as a join job
(worker/join_jobs.py) whose transitions generate each portion anew between the keepers around it. A
portion is {"start_frame", "end_frame"} (both in the portion, at `source_video_fps`) with an optional
"prompt" and "gap_frame_count" (frames generated in its place) over the job's; with `replace_mode`
the portion's first and last frames are kept as anchors and only the frames between are
regenerated. The joins themselves insert (replace_mode off), as the headless orchestrator forces:
the keepers no longer hold the portions' frames.

The video is read at `source_video_fps` (default 16; resampled for any difference over 0.01 fps, as
the headless orchestrator does so that frame numbers land where the app computed them). A portion
must have kept frames on both sides (one at the very start or end of the video has nothing to join
to) and may not overlap another. `source_video_total_frames` is the app's count; the video's own
count is used (the headless orchestrator trusts the app's within 3 frames); a count that differs is
reported in ignored_params.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from worker.errors import ValidationError
from worker.generation import publish
from worker.handlers import HandlerResult, TaskContext, register
from worker.join import REPLACE
from worker.join_jobs import ORCHESTRATOR_KEYS, JoinJob, expand_join, orchestrator_ignored, orchestrator_payload, per_join_settings
from worker.params import ParamReader, to_int, to_text
from worker.paths import output_file
from worker.video import FFmpegError, VideoInfo, VideoWriter, frame_count, iter_frames, probe

EDIT_TASK = "edit_video_orchestrator"
SOURCE, SOURCE_FPS, SOURCE_FRAMES = "source_video_url", "source_video_fps", "source_video_total_frames"
PORTIONS, PER_JOIN = "portions_to_regenerate", "per_join_settings"
DEFAULT_SOURCE_FPS = 16
SOURCE_FPS_TOLERANCE = 0.01
# A portion's own settings, over the job's for its join (the app writes both for every portion).
PORTION_SETTINGS = ("prompt", "gap_frame_count")
JOB_KEYS = (SOURCE, SOURCE_FPS, SOURCE_FRAMES, PORTIONS, PER_JOIN, REPLACE, *ORCHESTRATOR_KEYS)


@dataclass(frozen=True)
class Portion:
    """Frames [start, end] (inclusive) of the video to regenerate, with its own settings."""

    start: int
    end: int
    settings: dict[str, Any]
    field: str  # where the row gives it


@register(EDIT_TASK)
def edit_video_orchestrator(ctx: TaskContext) -> HandlerResult:
    payload, prefix = orchestrator_payload(ctx.task.params)
    reader = ParamReader(payload, prefix=prefix)
    source = reader.input_file(SOURCE)
    fps = reader.number(SOURCE_FPS, DEFAULT_SOURCE_FPS, minimum=1, maximum=120)
    portions = _portions(reader)
    anchored = reader.flag(REPLACE)
    info, rate, frames = _source_video(source, fps, prefix)
    ignored = orchestrator_ignored(reader)
    declared = reader.integer(SOURCE_FRAMES, None, minimum=0)
    if declared is not None and declared != frames:  # the headless orchestrator trusts it within 3 frames
        ignored[prefix + SOURCE_FRAMES] = f"the video's own count at {fps:g} fps, {frames}, is used"
    keepers = keeper_ranges(portions, frames, anchored, prefix)
    clips = _write_keepers(ctx, source, info, rate, fps, keepers, prefix)

    overrides, override_fields = per_join_settings(reader, PER_JOIN, len(portions))
    for index, portion in enumerate(portions):
        overrides[index].update(portion.settings)
        override_fields[index].update({key: f"{portion.field}.{key}" for key in portion.settings})
    return expand_join(ctx, JoinJob(
        clips=clips, clip_fields=[f"{SOURCE} (frames {start}..{end})" for start, end in keepers],
        overrides=overrides, override_fields=override_fields, prefix=prefix,
        settings={**{key: value for key, value in payload.items() if key not in JOB_KEYS}, REPLACE: False},
        audio=reader.text("audio_url", None), ignored=ignored))


def keeper_ranges(portions: list[Portion], frames: int, anchored: bool, prefix: str) -> list[tuple[int, int]]:
    """[start, end] (inclusive) of each part of a `frames`-frame video kept around the portions (in
    order, not overlapping): everything outside them, or with `anchored` also each portion's first and
    last frame. Every portion needs kept frames on both sides."""
    keepers: list[tuple[int, int]] = []
    start = 0
    for portion in portions:
        end = portion.start if anchored else portion.start - 1
        if end < start:
            where = "the video's first frame" if not keepers else "the portion before it"
            raise ValidationError(prefix + portion.field, f"starts at frame {portion.start}, with no kept frame between "
                                                          f"it and {where}: a portion is regenerated between kept frames")
        keepers.append((start, end))
        start = portion.end if anchored else portion.end + 1
    if start > frames - 1:
        raise ValidationError(prefix + portions[-1].field, f"ends at frame {portions[-1].end} of a {frames}-frame video "
                                                           "(at 0-based frames), with no kept frame after it")
    keepers.append((start, frames - 1))
    return keepers


def _portions(reader: ParamReader) -> list[Portion]:
    """portions_to_regenerate, in frame order; overlapping or reversed ones fail naming the entry."""
    name = reader.prefix + PORTIONS
    listed = reader.params.get(PORTIONS)
    if not isinstance(listed, list) or not listed:
        raise ValidationError(name, f"must list at least one {{\"start_frame\", \"end_frame\"}} portion, got {listed!r}")
    portions = []
    for i, item in enumerate(listed):
        field = f"{PORTIONS}[{i}]"
        if not isinstance(item, Mapping):
            raise ValidationError(reader.prefix + field, f"must be an object with start_frame and end_frame, got {item!r}")
        start = to_int(item.get("start_frame"), f"{reader.prefix}{field}.start_frame")
        end = to_int(item.get("end_frame"), f"{reader.prefix}{field}.end_frame")
        if not 0 <= start <= end:
            raise ValidationError(reader.prefix + field, f"frames {start}..{end}: need 0 <= start_frame <= end_frame")
        settings = {key: item[key] for key in PORTION_SETTINGS if item.get(key) not in (None, "")}
        if "prompt" in settings:
            to_text(settings["prompt"], f"{reader.prefix}{field}.prompt")
        portions.append(Portion(start, end, settings, field))
    portions.sort(key=lambda portion: portion.start)
    for before, after in zip(portions, portions[1:]):
        if after.start <= before.end:
            raise ValidationError(reader.prefix + after.field, f"frames {after.start}..{after.end} overlap "
                                                              f"{before.field} (frames {before.start}..{before.end})")
    return portions


def _source_video(source: Path, fps: float, prefix: str) -> tuple[VideoInfo, float | None, int]:
    """(the video's header, the rate it is resampled to or None, its frames at `fps`)."""
    try:
        info = probe(source)
        rate = fps if abs(info.fps - fps) > SOURCE_FPS_TOLERANCE else None
        return info, rate, info.frames if rate is None else frame_count(source, rate)
    except (OSError, FFmpegError) as error:
        raise ValidationError(prefix + SOURCE, f"not a readable video: {error}") from None


def _write_keepers(ctx: TaskContext, source: Path, info: VideoInfo, rate: float | None, fps: float,
                   keepers: list[tuple[int, int]], prefix: str) -> list[str]:
    """Write each kept part of the video (read at `fps`, resampled to `rate` where given) as a clip in
    this row's folder, in one pass, and publish them, so a join on any box can read them; returns
    their locations."""
    paths = [output_file(ctx.output_dir, f"keeper_{index}.mp4") for index in range(len(keepers))]
    frames = enumerate(iter_frames(source, fps=rate))
    try:
        for path, (start, end) in zip(paths, keepers):
            with VideoWriter(path, fps, info.width, info.height) as writer:
                for position, frame in frames:
                    if position >= start:
                        writer.write(frame)
                    if position >= end:
                        break
    except FFmpegError as error:
        raise ValidationError(prefix + SOURCE, f"not a readable video: {error}") from None
    published, _ = publish(ctx, {path.stem: path for path in paths})
    return [published[path.stem] for path in paths]
