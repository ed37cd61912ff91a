"""Structure guidance for VACE travel: videos laid over ranges of the journey's frames that steer the
frames each segment generates (Reigh's "structure video"; reigh-worker core/params/travel_guidance.py,
structure_guidance.py and media/structure/).

The row may ask for it three ways, read into one `Guidance`:
* `travel_guidance` {"kind": "vace", "mode": "raw" | "canny" | "depth" | "flow", "videos": [...],
  "strength", "canny_intensity", "depth_contrast"} (the April 2026 app); kind "none" asks for nothing;
* `structure_guidance` {"target": "vace", "preprocessing": "none" | "canny" | "depth" | "flow",
  "videos", "strength", ...};
* the older flat keys: `structure_type` (or `structure_video_type`), `structure_videos` (each entry may
  carry its own `structure_type`), or one `structure_video_path` with `structure_video_treatment`,
  `structure_video_motion_strength`, `structure_canny_intensity`, `structure_depth_contrast`.
A segment row of the headless orchestrator may also name the finished guidance video it made
(`_guidance_video_url` / `structure_guidance_video_url`) and where the segment starts in it
(`_frame_offset`).

Each video {"path", "start_frame", "end_frame", "treatment", "source_start_frame", "source_end_frame"}
covers frames [start_frame, end_frame) of the journey's timeline (the stitched video's frames, where
the app places its keyframes; `end_frame` null: to the end). Its source range is fitted to that range:
"adjust" stretches or compresses it (the headless index formula), "clip" plays it at its own rate
(Wan2GP's frame resampling) and loops it when short. Frames are center-cropped to the job's aspect
ratio and resized (Lanczos), then annotated (`mode`): raw frames as they are, canny as the contour
network's lines (times `canny_intensity`), depth as Depth Anything maps (contrast `depth_contrast`
around mid-gray), flow (the default) as RAFT's flow from the frame before (times `strength`) on the
colour wheel; see wan_engine/annotators.py.

In a segment, every frame VACE generates (mask white) whose timeline frame a video covers shows that
video's control frame instead of gray; kept frames (keyframes, the overlap with the previous
segment) stay as they are. Segment i's frame k is timeline frame offset_i + k, offset_i being where
the segment starts in the stitched video. Deviations from the headless worker, which fills a
segment's generated frames one after another from its offset: frames stay aligned with the timeline
(the headless fill runs a frame late after the start image and `overlap` frames late after an
overlap), and frames no video covers stay gray (the headless composite puts black there for raw and
canny). Uni3C (a ControlNet) is refused naming the field, as are the LTX kinds.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
from PIL import Image

from wan_engine.errors import echo
from wan_engine.annotator_files import FLOW_MIN_SIDE
from worker.errors import ValidationError
from worker.params import ParamReader, local_path
from worker.travel.guide import MASK_GENERATE, SegmentGuide
from worker.video import FFmpegError, iter_frames, probe

TRAVEL_GUIDANCE, STRUCTURE_GUIDANCE = "travel_guidance", "structure_guidance"
RAW, CANNY, DEPTH, FLOW = "raw", "canny", "depth", "flow"
MODES = (RAW, CANNY, DEPTH, FLOW)
ANNOTATED = (CANNY, DEPTH, FLOW)  # the modes an annotator network draws
ADJUST, CLIP = "adjust", "clip"
UNI3C = "Uni3C guidance (a ControlNet beside the image-to-video model) is not supported; use kind \"vace\""
UNSUPPORTED_KINDS = {"uni3c": UNI3C, "ltx_control": "LTX-2 control is not supported (this worker runs Wan models)",
                     "ltx_hybrid": "LTX-2 hybrid guidance is not supported (this worker runs Wan models)"}
ASPECT_TOLERANCE = 0.01  # the headless loader crops when the aspect ratios differ by more (absolute)

# The flat keys of the older forms (reigh-worker StructureGuidanceConfig._from_legacy_format).
LEGACY_TYPE_KEYS = ("structure_type", "structure_video_type")
LEGACY_VIDEOS, LEGACY_PATH, LEGACY_TREATMENT = "structure_videos", "structure_video_path", "structure_video_treatment"
LEGACY_STRENGTH, LEGACY_CANNY, LEGACY_DEPTH = ("structure_video_motion_strength", "structure_canny_intensity",
                                               "structure_depth_contrast")
LEGACY_GUIDANCE_VIDEO = ("structure_guidance_video_url", "structure_motion_video_url")
LEGACY_OFFSET = ("structure_guidance_frame_offset", "structure_motion_frame_offset")
UNI3C_KEYS = ("use_uni3c", "uni3c_guide_video")
# Keys that describe what the headless orchestrator made and change nothing here: its uploaded copies
# of the structure video, and the Uni3C settings, which matter only with Uni3C (refused).
LEGACY_BOOKKEEPING = ("structure_original_video_url", "structure_trimmed_video_url", "uni3c_strength",
                      "uni3c_start_percent", "uni3c_end_percent", "uni3c_frame_policy", "uni3c_zero_empty_frames",
                      "uni3c_keep_on_gpu", "uni3c_guidance_frame_offset")
READ_KEYS = (TRAVEL_GUIDANCE, STRUCTURE_GUIDANCE, *LEGACY_TYPE_KEYS, LEGACY_VIDEOS, LEGACY_PATH, LEGACY_TREATMENT,
             LEGACY_STRENGTH, LEGACY_CANNY, LEGACY_DEPTH, *LEGACY_GUIDANCE_VIDEO, *LEGACY_OFFSET, *UNI3C_KEYS,
             *LEGACY_BOOKKEEPING)
# The keys whose value gives a row guidance of its own (or, travel_guidance kind "none", takes it away).
GIVING_KEYS = (STRUCTURE_GUIDANCE, LEGACY_VIDEOS, LEGACY_PATH, *LEGACY_GUIDANCE_VIDEO, *UNI3C_KEYS)
# Entry keys read elsewhere (types, strength) or the app's own bookkeeping.
VIDEO_BOOKKEEPING = ("metadata", "resource_id", "structure_type", "type", "motion_strength")


@dataclass(frozen=True)
class GuidanceVideo:
    """One structure video over timeline frames [start_frame, end_frame)."""

    path: str
    start_frame: int = 0
    end_frame: int | None = None  # None: to the end of the journey (resolved by `place`)
    treatment: str = ADJUST
    source_start_frame: int = 0
    source_end_frame: int | None = None
    field: str = ""  # where the row gave it, for errors
    source_frames: int | None = None  # the source's frames and rate, probed once by `place`
    source_fps: float | None = None


@dataclass(frozen=True)
class Guidance:
    """What steers a VACE travel job's generated frames (the module docstring)."""

    mode: str
    videos: tuple[GuidanceVideo, ...] = ()
    strength: float = 1.0
    canny_intensity: float = 1.0
    depth_contrast: float = 1.0
    guidance_video: str | None = None  # the headless orchestrator's finished guidance video
    frame_offset: int | None = None  # where a segment starts in it (a headless segment row)
    field: str = TRAVEL_GUIDANCE

    def to_params(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> Guidance:
        return cls(**{**params, "videos": tuple(GuidanceVideo(**video) for video in params["videos"])})


@dataclass
class GuidanceReading:
    """read_guidance's result: the guidance (None when the row asks for none) and the keys it did not
    honour (for ignored_params)."""

    guidance: Guidance | None
    ignored: dict[str, str] = field(default_factory=dict)


def read_guidance(reader: ParamReader) -> GuidanceReading:
    """The guidance a row (or orchestrator_details) asks for, in any of its forms; what cannot run here
    fails naming the field."""
    reader.used.update(READ_KEYS)
    if reader.has(TRAVEL_GUIDANCE):
        mixed = [key for key in (STRUCTURE_GUIDANCE, *LEGACY_TYPE_KEYS[:1], LEGACY_VIDEOS, LEGACY_PATH, "use_uni3c")
                 if _asks(reader.params.get(key))]
        if mixed:
            raise ValidationError(reader.prefix + mixed[0], f"cannot be combined with {TRAVEL_GUIDANCE} (give one "
                                                            "form of structure guidance)")
        return _travel_guidance(reader)
    if isinstance(reader.params.get(STRUCTURE_GUIDANCE), Mapping) and reader.params[STRUCTURE_GUIDANCE]:
        return _structure_guidance(reader)
    if reader.has(STRUCTURE_GUIDANCE):
        raise ValidationError(reader.prefix + STRUCTURE_GUIDANCE,
                              "must be an object {\"videos\", \"preprocessing\", ...}")
    return _legacy_guidance(reader)


def gives_guidance(reader: ParamReader) -> bool:
    """Whether the row says what its guidance is (a segment row's own guidance wins over its payload's)."""
    return isinstance(reader.params.get(TRAVEL_GUIDANCE), Mapping) or any(
        _asks(reader.params.get(key)) for key in GIVING_KEYS)


def _asks(value: Any) -> bool:
    """Whether a payload value counts as given (the headless _has_payload_value)."""
    if value is None or value is False:
        return False
    return bool(value) if isinstance(value, (list, dict, str)) else True


def _travel_guidance(reader: ParamReader) -> GuidanceReading:
    name = reader.prefix + TRAVEL_GUIDANCE
    if not isinstance(reader.params[TRAVEL_GUIDANCE], Mapping):
        raise ValidationError(name, "must be an object {\"kind\", ...}")
    inner = ParamReader(reader.params[TRAVEL_GUIDANCE], prefix=f"{name}.")
    kind = inner.text("kind", "none")
    if kind == "none":
        inner.used.update(inner.params)  # kind none: the rest asks for nothing
        return GuidanceReading(None)
    if kind in UNSUPPORTED_KINDS:
        raise ValidationError(f"{name}.kind", f"{echo(kind)}: {UNSUPPORTED_KINDS[kind]}")
    if kind != "vace":
        raise ValidationError(f"{name}.kind", f"must be \"none\" or \"vace\", got {echo(kind)}")
    mode = inner.text("mode", FLOW)
    return _finish(inner, mode, f"{name}.mode", inner.params.get("videos"), f"{name}.videos",
                   guidance_video=inner.text("_guidance_video_url", None),
                   frame_offset=inner.integer("_frame_offset", None, minimum=0), field=name)


def _structure_guidance(reader: ParamReader) -> GuidanceReading:
    name = reader.prefix + STRUCTURE_GUIDANCE
    inner = ParamReader(reader.params[STRUCTURE_GUIDANCE], prefix=f"{name}.")
    target = inner.text("target", "vace")
    if target == "uni3c":
        raise ValidationError(f"{name}.target", f"\"uni3c\": {UNI3C}")
    if target != "vace":
        raise ValidationError(f"{name}.target", f"must be \"vace\", got {echo(target)}")
    preprocessing = inner.text("preprocessing", FLOW)
    mode = RAW if preprocessing == "none" else preprocessing
    inner.used.update(("step_window", "frame_policy", "zero_empty_frames", "keep_on_gpu", "_original_video_url",
                       "_trimmed_video_url"))  # Uni3C's settings and the headless orchestrator's copies
    videos = inner.params.get("videos")
    video_url = inner.text("_guidance_video_url", None) or inner.text("guidance_video_url", None)
    if not videos and not video_url:
        return GuidanceReading(None, _unread(inner))
    return _finish(inner, mode, f"{name}.preprocessing", videos, f"{name}.videos", guidance_video=video_url,
                   frame_offset=inner.integer("_frame_offset", None, minimum=0), field=name)


def _legacy_guidance(reader: ParamReader) -> GuidanceReading:
    params, prefix = reader.params, reader.prefix
    extra_ignored: dict[str, str] = {}
    for key in UNI3C_KEYS:
        if _asks(params.get(key)) and str(params[key]).lower() != "false":
            raise ValidationError(prefix + key, UNI3C)
    type_key = next((key for key in LEGACY_TYPE_KEYS if reader.has(key)), LEGACY_TYPE_KEYS[0])
    structure_type = reader.text(type_key, None)
    videos = params.get(LEGACY_VIDEOS) or None
    if videos is None and reader.has(LEGACY_PATH):
        videos = [{"path": params[LEGACY_PATH], "treatment": reader.text(LEGACY_TREATMENT, ADJUST)}]
        videos_field = prefix + LEGACY_PATH
    else:
        videos_field = prefix + LEGACY_VIDEOS
        types = {i: next((key for key in ("structure_type", "type") if entry.get(key)), None)
                 for i, entry in enumerate(videos if isinstance(videos, list) else []) if isinstance(entry, Mapping)}
        entry_types = {i: (key, videos[i][key]) for i, key in types.items() if key is not None}
        given = structure_type is not None
        if not given and 0 in entry_types:  # the headless reader takes the first entry's
            structure_type, type_key = entry_types[0][1], f"{LEGACY_VIDEOS}[0].{entry_types[0][0]}"
        for i, (key, value) in entry_types.items():
            if value == (structure_type or FLOW):
                continue
            field = f"{videos_field}[{i}].{key}"
            if not given:  # the headless composite refuses videos of different types
                raise ValidationError(field, f"is {echo(value)}, but the guidance is {echo(structure_type or FLOW)}: "
                                             "every video takes one type")
            extra_ignored[field] = f"{type_key} ({structure_type}) applies to every video"
    video_url = next((reader.text(key) for key in LEGACY_GUIDANCE_VIDEO if reader.has(key)), None)
    if not videos and not video_url:
        return GuidanceReading(None)
    if structure_type == "uni3c":
        raise ValidationError(prefix + type_key, UNI3C)
    mode = FLOW if structure_type is None else structure_type
    offset = next((reader.integer(key, minimum=0) for key in LEGACY_OFFSET if reader.has(key)), None)
    strengths = ParamReader({"strength": params.get(LEGACY_STRENGTH), "canny_intensity": params.get(LEGACY_CANNY),
                             "depth_contrast": params.get(LEGACY_DEPTH)}, prefix=prefix)
    reading = _finish(strengths, mode, prefix + type_key, videos, videos_field, guidance_video=video_url,
                      frame_offset=offset, field=videos_field)
    renamed = {"strength": LEGACY_STRENGTH, "canny_intensity": LEGACY_CANNY, "depth_contrast": LEGACY_DEPTH}
    reading.ignored = {**{prefix + renamed.get(key[len(prefix):], key[len(prefix):]): reason
                          for key, reason in reading.ignored.items()}, **extra_ignored}
    return reading


def _finish(inner: ParamReader, mode: str, mode_field: str, videos: Any, videos_field: str, *,
            guidance_video: str | None, frame_offset: int | None, field: str) -> GuidanceReading:
    """The Guidance of a parsed form: mode checked, videos read, strengths read (and those the mode does
    not use reported when they are not neutral)."""
    if mode not in MODES:
        raise ValidationError(mode_field, f"must be one of {', '.join(MODES)}, got {echo(mode)}")
    strength = inner.number("strength", 1.0, minimum=0.0)
    canny_intensity = inner.number("canny_intensity", 1.0, minimum=0.0)
    depth_contrast = inner.number("depth_contrast", 1.0, minimum=0.0)
    ignored = {}
    if strength != 1.0 and mode != FLOW:  # the headless worker scales optical flow by it, and nothing else
        ignored[inner.prefix + "strength"] = f"scales flow guidance only; mode {mode} does not use it"
    for key, value, used_by in (("canny_intensity", canny_intensity, CANNY), ("depth_contrast", depth_contrast, DEPTH)):
        if value != 1.0 and mode != used_by:
            ignored[inner.prefix + key] = f"used by mode {used_by} only; the mode is {mode}"
    entries = _video_list(videos, videos_field)
    parsed = tuple(_video(entry, f"{videos_field}[{i}]", ignored) for i, entry in enumerate(entries))
    for video, entry in zip(parsed, entries):  # the headless composite scales every video by one strength
        own = entry.get("motion_strength")
        if own is not None and own != strength:
            ignored[f"{video.field}.motion_strength"] = (f"one strength ({strength:g}) applies to every video, as "
                                                         "in the headless worker")
    if not parsed and guidance_video is None:
        raise ValidationError(videos_field, "structure guidance needs at least one video")
    inner.used.update(("kind", "mode", "videos", "_guidance_video_url", "guidance_video_url", "_frame_offset",
                       "target", "preprocessing"))
    ignored.update(_unread(inner))
    return GuidanceReading(Guidance(mode=mode, videos=parsed, strength=strength, canny_intensity=canny_intensity,
                                    depth_contrast=depth_contrast, guidance_video=guidance_video,
                                    frame_offset=frame_offset, field=field), ignored)


def _unread(reader: ParamReader) -> dict[str, str]:
    return {reader.prefix + key: "not a structure guidance setting this worker uses" for key in reader.unread()
            if reader.has(key)}


def _video_list(value: Any, name: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ValidationError(name, "must be a list of {\"path\", \"start_frame\", \"end_frame\", ...}")
    return value


def _video(entry: Any, name: str, ignored: dict[str, str]) -> GuidanceVideo:
    if not isinstance(entry, Mapping):
        raise ValidationError(name, "must be an object {\"path\", \"start_frame\", \"end_frame\", ...}")
    video = ParamReader(entry, prefix=f"{name}.")
    video.used.update(VIDEO_BOOKKEEPING)
    treatment = (video.text("treatment", ADJUST) or ADJUST).strip().lower()
    if treatment not in (ADJUST, CLIP):
        raise ValidationError(f"{name}.treatment", f"must be \"adjust\" or \"clip\", got {echo(entry['treatment'])}")
    parsed = GuidanceVideo(
        path=video.text("path"), start_frame=video.integer("start_frame", 0, minimum=0),
        end_frame=video.integer("end_frame", None, minimum=1), treatment=treatment,
        source_start_frame=video.integer("source_start_frame", 0, minimum=0),
        source_end_frame=video.integer("source_end_frame", None, minimum=1), field=name)
    ignored.update({f"{name}.{key}": "not a structure video setting this worker uses" for key in video.unread()})
    return parsed


def check_runnable(guidance: Guidance, image_to_video: bool, model: str, size: tuple[int, int],
                   resources: Any) -> None:
    """Fail before any generation when the guidance cannot run: on an image-to-video model (structure
    guidance fills VACE guide videos), flow at a size too small for RAFT's correlation pyramid, or
    with an annotator whose weights are missing and may not be fetched (resources:
    worker.resources.WorkerResources)."""
    if image_to_video:
        raise ValidationError(guidance.field, f"structure guidance steers VACE guide videos; {model!r} is an "
                                              "image-to-video model (its guidance, Uni3C, is not supported)")
    if guidance.guidance_video is not None:
        return  # the headless orchestrator's video is annotated already
    if guidance.mode == FLOW and min(-(-side // 8) * 8 for side in size) < FLOW_MIN_SIDE:
        raise ValidationError(guidance.field, f"flow guidance needs frames of at least {FLOW_MIN_SIDE} pixels a side "
                                              f"(RAFT's correlation pyramid); the job is {size[0]}x{size[1]}")
    if guidance.mode in ANNOTATED:
        resources.check_annotator(guidance.mode)


# ---- the timeline --------------------------------------------------------------------------------------

def place(guidance: Guidance, total_frames: int) -> tuple[Guidance, dict[str, str]]:
    """The guidance with its videos sorted and their ranges fitted to a journey of `total_frames`
    (an open or overlong end cut at the journey's end), and the videos that start after the end
    (reported: they guide nothing). Ranges may not be empty or overlap; every source must be a readable
    video. A finished guidance video (a headless segment row's) is used instead of the videos, which
    are then not read."""
    if guidance.guidance_video is not None:  # the headless orchestrator's finished video stands in for them
        return guidance, {}
    placed, ignored, previous = [], {}, None
    for video in sorted(guidance.videos, key=lambda video: video.start_frame):
        if video.start_frame >= total_frames:
            ignored[video.field] = (f"starts at frame {video.start_frame}, after the journey's {total_frames} "
                                    "frames: it guides nothing")
            continue
        end = min(total_frames if video.end_frame is None else video.end_frame, total_frames)
        if end <= video.start_frame:
            raise ValidationError(f"{video.field}.end_frame", f"must be after start_frame {video.start_frame}, "
                                                              f"got {video.end_frame}")
        if previous is not None and video.start_frame < previous.end_frame:
            raise ValidationError(f"{video.field}.start_frame", f"frames [{video.start_frame}, {end}) overlap "
                                                                f"{previous.field} [{previous.start_frame}, "
                                                                f"{previous.end_frame})")
        if video.source_end_frame is not None and video.source_end_frame <= video.source_start_frame:
            raise ValidationError(f"{video.field}.source_end_frame",
                                  f"must be after source_start_frame {video.source_start_frame}")
        frames, fps = _source_info(video)
        previous = replace(video, end_frame=end, source_frames=frames, source_fps=fps)
        placed.append(previous)
    return replace(guidance, videos=tuple(placed)), ignored


def segment_offsets(frames: Sequence[int], overlaps: Sequence[int]) -> list[int]:
    """Where each segment's first frame sits in the journey's timeline: segment i starts where its
    overlap with segment i-1 begins (overlaps[0], the first segment's, is ignored)."""
    offsets = [0]
    for i in range(1, len(frames)):
        offsets.append(offsets[-1] + frames[i - 1] - overlaps[i])
    return offsets


def loaded_indices(video: GuidanceVideo, source_frames: int, source_fps: float, fps: float) -> list[int]:
    """The source frames the headless loader reads for a video: one more than its timeline frames (the
    last one only for optical flow), from its source range [source_start_frame, source_end_frame)
    clamped to the video, "adjust"ed (spread evenly over the range) or "clip"ped (played at its own
    rate from the start of the range, looped when short)."""
    assert video.end_frame is not None
    loaded = video.end_frame - video.start_frame + 1
    start = max(0, min(video.source_start_frame, source_frames - 1))
    end = source_frames if video.source_end_frame is None else video.source_end_frame
    end = max(start + 1, min(end, source_frames))
    available = end - start
    if video.treatment == ADJUST:
        return [start + int(i * (available - 1) / (loaded - 1)) for i in range(loaded)]
    rate = max(round(source_fps), 1)  # rounded as the headless loader does (which divides by 0 under 0.5 fps)
    indices = [start + i for i in resampled_indices(rate, available, loaded, fps)] or [start]
    while len(indices) < loaded:
        indices.extend(indices[: loaded - len(indices)])
    return indices[:loaded]


def resampled_indices(video_fps: float, video_frames: int, count: int, fps: float) -> list[int]:
    """The frames of a `video_fps` video (of `video_frames` frames) shown at the first `count` ticks of
    `fps` (Wan2GP's frame resampling: each tick takes the frame showing at its time)."""
    frame_time, tick = 1 / video_fps, 1 / fps
    target, frame = 0.0, 0
    current, indices = 0.0, []
    while len(indices) < count:
        step = math.ceil(round((target - current) / frame_time, 5))
        frame += step
        if frame >= video_frames:
            break
        indices.append(frame)
        current += step * frame_time
        target += tick
    return indices


def _source_info(video: GuidanceVideo) -> tuple[int, float]:
    """(frames, fps) of a video's source; an unreadable source fails naming its field."""
    path = local_path(video.path, f"{video.field}.path")
    try:
        info = probe(path)
    except (OSError, RuntimeError) as error:
        raise ValidationError(f"{video.field}.path", f"not a readable video: {echo(video.path)} ({error})") from None
    if info.frames < 1 or not info.fps > 0:
        raise ValidationError(f"{video.field}.path", f"{echo(video.path)} has no frames or no frame rate")
    return info.frames, info.fps


# ---- a segment's control frames ------------------------------------------------------------------------

@dataclass(frozen=True)
class SegmentGuidance:
    """What guidance did to one segment's guide: the frames it filled (segment-local indices) and where
    they came from, for result_data."""

    guide: SegmentGuide
    frames: list[int]
    sources: list[dict[str, Any]]


Annotate = Callable[[str, np.ndarray], np.ndarray]  # (mode, frames or flow's frame pairs) -> the network's output


def guide_segment(guide: SegmentGuide, guidance: Guidance, offset: int, size: tuple[int, int], fps: float,
                  annotate: Annotate | None) -> SegmentGuidance:
    """`guide` with guidance's control frames in its generated frames. `offset`: the segment's first
    timeline frame (a headless row's `_frame_offset` wins for its guidance video); `size` (width,
    height); `annotate` runs the mode's network (wan_engine.annotators.Annotators.annotate; raw frames
    and a finished guidance video need none)."""
    generated = [k for k in range(len(guide.mask)) if (guide.mask[k] == MASK_GENERATE).all()]
    if guidance.guidance_video is not None:
        start = offset if guidance.frame_offset is None else guidance.frame_offset
        wanted = {k: start + k for k in generated}
        frames = _frames_at(local_path(guidance.guidance_video, f"{guidance.field}._guidance_video_url"),
                            sorted(set(wanted.values())), size, guidance.field)
        filled = {k: frames[index] for k, index in wanted.items() if index in frames}
        sources = [{"guidance_video": guidance.guidance_video, "frame_offset": start}]
        return _apply(guide, filled, sources)  # the headless composite is annotated already
    filled, sources = {}, []
    for video in guidance.videos:
        assert video.end_frame is not None
        positions = [k for k in generated if video.start_frame <= offset + k < video.end_frame]
        if not positions:
            continue
        assert video.source_frames is not None and video.source_fps is not None  # placed
        path = local_path(video.path, f"{video.field}.path")  # fetched once per box (worker.inputs)
        loaded = loaded_indices(video, video.source_frames, video.source_fps, fps)
        wanted = {k: _shown(loaded, offset + k - video.start_frame, guidance.mode) for k in positions}
        frames = _frames_at(path, sorted({index for shown in wanted.values() for index in shown}), size, video.field)
        picked = [k for k in positions if all(index in frames for index in wanted[k])]
        if picked:
            shown = np.stack([[frames[index] for index in wanted[k]] for k in picked])
            controls = _control_frames(shown if guidance.mode == FLOW else shown[:, 0], guidance, annotate)
            filled.update(zip(picked, controls))
        sources.append({"video": video.field, "path": video.path, "frames": picked,
                        "source_frames": [list(wanted[k]) if guidance.mode == FLOW else wanted[k][0]
                                          for k in picked]})
    return _apply(guide, filled, sources)


def _shown(loaded: list[int], i: int, mode: str) -> tuple[int, ...]:
    """The source frames timeline frame i of a video is drawn from: one, or for flow the pair whose
    motion it shows (the headless flow annotator draws the flow from loaded frame i-1 to i, and the
    first frame repeats the first flow)."""
    if mode != FLOW:
        return (loaded[i],)
    j = max(i - 1, 0)
    return loaded[j], loaded[j + 1]


def _apply(guide: SegmentGuide, filled: Mapping[int, np.ndarray], sources: list[dict[str, Any]]) -> SegmentGuidance:
    frames = guide.guide.copy()
    for k, frame in filled.items():
        frames[k] = frame
    return SegmentGuidance(SegmentGuide(frames, guide.mask), sorted(filled), sources)


def _control_frames(frames: np.ndarray, guidance: Guidance, annotate: Annotate | None) -> np.ndarray:
    """The mode's control frames for fitted source frames (pairs of them for flow), with the headless
    adjustments: flow scaled by `strength` before it is drawn (the drawing normalizes by the frame's
    fastest motion, so this changes little), canny lines times `canny_intensity`, depth contrast
    `depth_contrast` around mid-gray."""
    if guidance.mode == RAW:
        return frames
    if guidance.mode == FLOW:
        from wan_engine.nn.raft import flow_to_image  # torch: only where a segment draws its frames

        return np.stack([flow_to_image(field * guidance.strength) for field in annotate(FLOW, frames)])
    drawn = annotate(guidance.mode, frames)
    if guidance.mode == CANNY and abs(guidance.canny_intensity - 1.0) > 1e-6:
        drawn = (drawn.astype(np.float32) * guidance.canny_intensity).clip(0, 255).astype(np.uint8)
    if guidance.mode == DEPTH and abs(guidance.depth_contrast - 1.0) > 1e-6:
        level = drawn.astype(np.float32) / 255.0
        drawn = (((level - 0.5) * guidance.depth_contrast + 0.5).clip(0, 1) * 255).astype(np.uint8)
    return drawn


def _frames_at(path: Any, indices: list[int], size: tuple[int, int], field: str) -> dict[int, np.ndarray]:
    """The frames at `indices` (ascending) of a video, center-cropped to size's aspect ratio (where it
    differs by more than 0.01) and resized to `size` with Lanczos, as the headless loader fits them.
    Frames before the first one wanted are skipped inside ffmpeg (a segment late in a long journey
    does not pipe the video's beginning); decoding stops after the last one wanted."""
    wanted, found = set(indices), {}
    if not indices:
        return found
    width, height = size
    try:
        for index, frame in enumerate(iter_frames(path, start=indices[0]), start=indices[0]):
            if index in wanted:
                found[index] = _fit(frame, width, height)
            if index >= indices[-1]:
                break
    except FFmpegError as error:
        raise ValidationError(f"{field}.path", f"not a readable video: {error}") from None
    return found


def _fit(frame: np.ndarray, width: int, height: int) -> np.ndarray:
    image = Image.fromarray(frame)
    aspect, source_aspect = width / height, image.width / image.height
    if abs(source_aspect - aspect) > ASPECT_TOLERANCE:
        if source_aspect > aspect:
            crop = int(image.height * aspect)
            left = (image.width - crop) // 2
            image = image.crop((left, 0, left + crop, image.height))
        else:
            crop = int(image.width / aspect)
            top = (image.height - crop) // 2
            image = image.crop((0, top, image.width, top + crop))
    return np.asarray(image.resize((width, height), Image.Resampling.LANCZOS))
