"""Joining clips with generated transitions: the headless worker's join_clips family (banodoco/reigh-worker
source/task_handlers/join/), read and planned here, run by the handlers join_clips_orchestrator,
join_clips_segment and join_final_stitch.

A transition between clip 1 and clip 2 is a VACE generation whose guide keeps frames of clip 1, then
gray frames to generate, then frames of clip 2 (travel.guide.gap_guide). Two modes:
* insert (`replace_mode` false): the kept frames ("context") are clip 1's last and clip 2's first
  `context_frame_count` frames, and the `gap_frame_count` generated frames are new time between them;
* replace (`replace_mode` true): the generated frames stand in for clip 1's last `gap_from_clip1` and
  clip 2's first `gap_from_clip2` frames (the gap split in half) and the context is the frames next to
  them, so the joined video keeps the clips' length.
The stitch lays the clips (without the replaced ends) and the transitions end to end, each
transition's context cross-faded with the clip frames it copies (travel.stitch, the headless fade).

Frame counts follow the headless arithmetic (join/generation.py, join/vace_quantization.py): the
context is no longer than either clip; in replace mode, clips shorter than gap + 2 x context shrink
both in proportion (never below gap 1, context 2); the guide's length is rounded down to 4n+1 by
taking the difference from the gap; a clip too short for its half of the gap passes the rest to the
other. One deviation: here gap_from_clip1 + gap_from_clip2 always equals the frames generated, so a
replace join keeps the video's length (the headless handler splits the gap before its last rounding,
so after a proportional reduction it cuts up to a few more frames than it generates).

Clips are read at the join's rate (`fps`, default 16, or with `use_input_video_fps` the slower clip's;
a clip more than 0.5 fps off is resampled), a clip of another shape is center-cropped to the first
clip's (or to `aspect_ratio`), and the frames are scaled to the join's resolution (`resolution`, each
side snapped down to a multiple of 16 as headless Wan2GP does with the app's sizes, else the first
clip's size rounded down likewise).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from worker.errors import ValidationError
from worker.params import MAX_VIDEO_FRAMES, ParamReader, headless_size, round_to_frame_count, to_int
from worker.travel.stitch import Source
from worker.video import FFmpegError, VideoInfo, cropped_size, frame_count, probe, resampled_rate, video_ends

ORCHESTRATOR_TASK, SEGMENT_TASK, STITCH_TASK = "join_clips_orchestrator", "join_clips_segment", "join_final_stitch"
START, END = "starting_video_path", "ending_video_path"
CONTEXT, GAP, REPLACE = "context_frame_count", "gap_frame_count", "replace_mode"
BRIDGING = "keep_bridging_images"
TRANSITION_ONLY = "transition_only"
INDEX, HEADLESS_INDEX = "transition_index", "join_index"
ASPECT = "aspect_ratio"
INPUT_RESOLUTION, INPUT_FPS = "use_input_video_resolution", "use_input_video_fps"
VID2VID = "vid2vid_init_strength"
AUDIO = "audio_url"
TRANSITION = "transition"  # result_data key of a join_clips_segment: the transition's facts
CROP_ASPECT = "crop_aspect"  # among those facts: the shape (width / height) both clips were cropped to
# Every key of a join row that is the join's own, not the generation's (read_generation never sees them),
# and the headless child's copy of its orchestrator's payload, whose settings the row itself carries.
JOIN_KEYS = (START, END, CONTEXT, GAP, REPLACE, BRIDGING, TRANSITION_ONLY, INDEX, HEADLESS_INDEX, ASPECT,
             INPUT_RESOLUTION, INPUT_FPS, VID2VID, AUDIO, "resolution", "fps", "orchestrator_details")
# The headless handler's defaults (join/generation.py); its orchestrator's default prompt.
DEFAULT_CONTEXT, DEFAULT_GAP, DEFAULT_FPS = 8, 53, 16
DEFAULT_JOIN_PROMPT = "smooth transition"
# The shortest guide the headless proportional reduction leaves: gap 1 between contexts of 2 (so a
# reduced context may exceed a context asked below 2).
MIN_REDUCED_GAP, MIN_REDUCED_CONTEXT = 1, 2
MIN_GUIDE_FRAMES = MIN_REDUCED_GAP + 2 * MIN_REDUCED_CONTEXT


@dataclass(frozen=True)
class Transition:
    """Which frames of two clips one transition keeps and replaces, under the headless worker's names
    (the JSON its join_clips_segment returns), so either worker's final stitch reads the other's."""

    clip1_total_frames: int
    clip2_total_frames: int
    context_from_clip1: int  # clip 1's frames the transition opens with
    gap_frames: int  # frames generated
    context_from_clip2: int  # clip 2's frames the transition ends with
    gap_from_clip1: int  # clip 1's last frames the gap replaces (0 when inserting)
    gap_from_clip2: int  # clip 2's first frames the gap replaces
    mode: str  # "replace" | "insert"

    @property
    def frames(self) -> int:
        return self.context_from_clip1 + self.gap_frames + self.context_from_clip2

    @property
    def clip1_context(self) -> tuple[int, int]:
        """[start, end) of clip 1's frames kept at the transition's start."""
        end = self.clip1_total_frames - self.gap_from_clip1
        return end - self.context_from_clip1, end

    @property
    def clip2_context(self) -> tuple[int, int]:
        """[start, end) of clip 2's frames kept at the transition's end."""
        return self.gap_from_clip2, self.gap_from_clip2 + self.context_from_clip2

    def metadata(self) -> dict[str, Any]:
        """The facts result_data carries (and the final stitch reads), with the frame ranges."""
        (start1, end1), (start2, end2) = self.clip1_context, self.clip2_context
        return {**asdict(self), "frames": self.frames, "clip1_context_start_idx": start1, "clip1_context_end_idx": end1,
                "clip2_context_start_idx": start2, "clip2_context_end_idx": end2}


def plan_transition(clip1_frames: int, clip2_frames: int, context: int, gap: int, replace: bool) -> tuple[Transition, list[str]]:
    """The transition between clips of these lengths (at the join's rate), and each adjustment made
    to the asked context and gap, in words. Raises ValidationError naming the key that cannot be met."""
    notes: list[str] = []
    shortest = min(clip1_frames, clip2_frames)
    if context > shortest:
        notes.append(f"{CONTEXT} {context} -> {shortest}: the shorter clip has {shortest} frames")
        context = shortest
    if replace and shortest < gap + 2 * context:
        ratio = max(MIN_GUIDE_FRAMES, shortest - 2) / (gap + 2 * context)
        reduced_gap, reduced_context = max(1, int(gap * ratio)), max(1, int(context * ratio))
        if reduced_gap + 2 * reduced_context < MIN_GUIDE_FRAMES:
            reduced_gap, reduced_context = MIN_REDUCED_GAP, MIN_REDUCED_CONTEXT
        notes.append(f"{GAP} {gap} -> {reduced_gap} and {CONTEXT} {context} -> {reduced_context}: replacing needs "
                     f"{gap} + 2 x {context} frames of each clip; the shorter has {shortest}")
        gap, context = reduced_gap, reduced_context
    generated = _round_gap(context, gap, context, notes)
    if not replace:
        return Transition(clip1_frames, clip2_frames, context, generated, context, 0, 0, "insert"), notes

    from_clip1 = generated // 2
    from_clip2 = generated - from_clip1
    if from_clip1 > clip1_frames - 1:  # each clip keeps a frame of context: the other gives the rest
        from_clip1, from_clip2 = clip1_frames - 1, from_clip2 + from_clip1 - (clip1_frames - 1)
    if from_clip2 > clip2_frames - 1:
        from_clip1, from_clip2 = from_clip1 + from_clip2 - (clip2_frames - 1), clip2_frames - 1
    if from_clip1 > clip1_frames - 1:
        raise ValidationError(GAP, f"{generated} frames cannot replace the clips' ends: the clips have "
                                   f"{clip1_frames} and {clip2_frames} frames, and each keeps one for context")
    context1, context2 = min(context, clip1_frames - from_clip1), min(context, clip2_frames - from_clip2)
    rounded = _round_gap(context1, generated, context2, notes)
    cut = generated - rounded  # frames the rounding took from the gap: replace that many fewer, half each
    cut1 = min(from_clip1, (cut + 1) // 2)
    cut1 += max(0, cut - cut1 - from_clip2)
    from_clip1, from_clip2 = from_clip1 - cut1, from_clip2 - (cut - cut1)
    return Transition(clip1_frames, clip2_frames, context1, rounded, context2, from_clip1, from_clip2, "replace"), notes


def _round_gap(context1: int, gap: int, context2: int, notes: list[str]) -> int:
    """The gap that makes context1 + gap + context2 a 4n+1 frame count (what the Wan VAE needs), rounding
    down by taking frames from the gap; at least one frame must be left to generate."""
    total = context1 + gap + context2
    if total > MAX_VIDEO_FRAMES:
        raise ValidationError(GAP, f"{context1} + {gap} + {context2} frames is more than one generation makes "
                                   f"({MAX_VIDEO_FRAMES})")
    taken = total - round_to_frame_count(total, GAP)
    rounded = gap - taken
    if rounded < 1:
        raise ValidationError(GAP, f"{context1} + {gap} + {context2} frames round down to 4n+1 by taking {taken} from "
                                   "the gap, which leaves none to generate: give a larger gap_frame_count")
    if rounded != gap:
        notes.append(f"{GAP} {gap} -> {rounded}: {context1} + {gap} + {context2} frames rounded down to 4n+1")
    return rounded


@dataclass(frozen=True)
class StitchedTransition:
    """What a final stitch needs of one finished transition, read from either worker's row."""

    index: int
    context_from_clip1: int
    context_from_clip2: int
    gap_from_clip1: int
    gap_from_clip2: int
    fps: float | None
    aspect: float | None  # the shape the clips were cropped to; None: the first clip's own

    @classmethod
    def read(cls, facts: Mapping[str, Any], default_index: int, field: str) -> StitchedTransition:
        """From a transition's facts (ours: result_data.transition; the headless worker's: the JSON
        of its output_location); a missing or malformed one fails naming `field`. The clips' shape is
        ours `crop_aspect`, else (the headless worker's) that of the transition's resolution."""
        def count(key: str) -> int:
            value = to_int(facts.get(key), f"{field}.{key}") if key in facts else None
            if value is None or value < 0:
                raise ValidationError(field, f"the transition's {key} must be a count >= 0, got {facts.get(key)!r}")
            return value

        fps, resolution, aspect = facts.get("fps"), facts.get("resolution"), facts.get(CROP_ASPECT)
        if not (isinstance(aspect, (int, float)) and aspect > 0):
            sized = isinstance(resolution, list) and len(resolution) == 2 and all(
                isinstance(side, int) and side > 0 for side in resolution)
            aspect = resolution[0] / resolution[1] if sized else None
        return cls(
            index=to_int(facts.get(INDEX, default_index), f"{field}.{INDEX}"),
            context_from_clip1=count("context_from_clip1"), context_from_clip2=count("context_from_clip2"),
            gap_from_clip1=count("gap_from_clip1"), gap_from_clip2=count("gap_from_clip2"),
            fps=float(fps) if isinstance(fps, (int, float)) and fps > 0 else None,  # optional in either form
            aspect=float(aspect) if aspect is not None else None,
        )


# ---- reading a join row ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ClipRead:
    """One clip of a join and how it is read: resampled to `rate` (None: as stored)."""

    path: Path
    field: str  # the key that named it, for errors
    info: VideoInfo
    rate: float | None


@dataclass(frozen=True)
class JoinSpec:
    """A join row's clips and settings, checked; the frames are not read yet."""

    clips: tuple[ClipRead, ClipRead]
    context: int
    gap: int
    replace: bool
    bridging: bool
    fps: int
    aspect: float  # both clips center-cropped to this shape: aspect_ratio's, else the first clip's own
    width: int
    height: int
    sources: dict[str, str]  # how fps, width and height were chosen
    overridden: dict[str, str]  # keys a use_input_video_* switch set aside, and why

    def frame_counts(self, counted: dict[tuple[Path, float], int]) -> tuple[int, int]:
        """Each clip's frames at the join's rate: its header's count, or a resampled clip's decoded once
        per rate into `counted` (which the joins of one job share: a middle clip is in two)."""
        def count(clip: ClipRead) -> int:
            if clip.rate is None:
                return clip.info.frames
            if (clip.path, clip.rate) not in counted:
                try:
                    counted[clip.path, clip.rate] = frame_count(clip.path, clip.rate)
                except FFmpegError as error:
                    raise ValidationError(clip.field, f"not a readable video: {error}") from None
            return counted[clip.path, clip.rate]

        first, second = self.clips
        return count(first), count(second)

    def read_context(self) -> tuple[Transition, list[str], Any, Any]:
        """(transition, adjustments, clip 1's frames before the gap, clip 2's after it), the frames
        uint8 [n, H, W, 3] at the join's resolution; each clip decoded once, holding at most
        2 x (gap + context) frames of it."""
        keep = self.gap + max(self.context, MIN_REDUCED_CONTEXT)  # what a transition can take of a clip's end
        count1, _, tail = self._ends(self.clips[0], keep)
        count2, head, _ = self._ends(self.clips[1], keep)
        transition, notes = plan_transition(count1, count2, self.context, self.gap, self.replace)
        start1, end1 = (index - (count1 - len(tail)) for index in transition.clip1_context)
        before = tail[start1:end1]
        after = head[slice(*transition.clip2_context)]
        return transition, notes, before, after

    def facts(self, transition: Transition, index: int, adjustments: list[str], anchors: Mapping[int, Any]) -> dict[str, Any]:
        """result_data.transition of a join: the transition's frames under the headless names, and
        how this join read its clips (rate, size, shape), what it was asked, and what it changed."""
        return {**transition.metadata(), INDEX: index, "fps": self.fps, "resolution": [self.width, self.height],
                CROP_ASPECT: self.aspect, "requested_gap": self.gap, "context_frame_count": self.context,
                "blend_frames": min(transition.context_from_clip1, transition.context_from_clip2),
                "adjustments": adjustments,
                "bridging_frames": sorted(transition.context_from_clip1 + at for at in anchors)}

    def stitch_sources(self) -> list[Source]:
        """The clips as a stitch reads them: at the join's rate where they were resampled, cropped alike."""
        return [Source(clip.path, resample=clip.rate is not None, aspect=self.aspect) for clip in self.clips]

    def _ends(self, clip: ClipRead, keep: int) -> tuple[int, Any, Any]:
        try:
            return video_ends(clip.path, keep, (self.width, self.height), fps=clip.rate, aspect=self.aspect)
        except FFmpegError as error:
            raise ValidationError(clip.field, f"not a readable video: {error}") from None


def read_join(reader: ParamReader, start: Path, end: Path) -> JoinSpec:
    """The join a row asks for between the clips at `start` and `end` (already local files)."""
    infos = []
    for path, field in ((start, START), (end, END)):
        try:
            infos.append(probe(path))
        except (OSError, FFmpegError) as error:
            raise ValidationError(field, f"not a readable video: {error}") from None
    context = reader.integer(CONTEXT, DEFAULT_CONTEXT, minimum=1, maximum=MAX_VIDEO_FRAMES)
    gap = reader.integer(GAP, DEFAULT_GAP, minimum=1, maximum=MAX_VIDEO_FRAMES)
    replace = reader.flag(REPLACE)
    if replace and reader.has(VID2VID) and reader.number(VID2VID, minimum=0.0) < 1.0:
        raise ValidationError(VID2VID, "is not supported: the gap is generated from noise, not from the frames it "
                                       "replaces; leave it out (or 1.0)")

    sources: dict[str, str] = {}
    overridden = {key: f"{switch} is on" for key, switch in (("fps", INPUT_FPS), ("resolution", INPUT_RESOLUTION))
                  if reader.has(key) and reader.flag(switch)}
    if reader.flag(INPUT_FPS):  # a faster clip is resampled to it, so frames count alike in join and stitch
        fps_value, sources["fps"] = min(info.fps for info in infos), f"{INPUT_FPS} (the slower clip's rate)"
    else:
        fps_value = reader.number("fps", DEFAULT_FPS, minimum=1, maximum=120)
        sources["fps"] = "task" if reader.has("fps") else "default"
    rates = [resampled_rate(info.fps, fps_value) for info in infos]
    aspect = _aspect(reader, infos[0])
    width, height = cropped_size(infos[0].width, infos[0].height, aspect)
    given = None if reader.flag(INPUT_RESOLUTION) else reader.params.get("resolution")
    (width, height), sources["width"] = headless_size(given, (width, height), START)
    sources["height"] = sources["width"]
    clips = (ClipRead(start, START, infos[0], rates[0]), ClipRead(end, END, infos[1], rates[1]))
    return JoinSpec(clips, context, gap, replace, reader.flag(BRIDGING), max(1, round(fps_value)), aspect, width,
                    height, sources, overridden)


def _aspect(reader: ParamReader, first: VideoInfo) -> float:
    """The shape both clips are cropped to: `aspect_ratio` ("16:9"), else the first clip's own."""
    text = reader.text(ASPECT, None)
    if text is None:
        return first.width / first.height
    parts = text.split(":")
    try:
        width, height = (float(part) for part in parts) if len(parts) == 2 else (0.0, 0.0)
    except ValueError:
        width = height = 0.0
    if not (width > 0 and height > 0):
        raise ValidationError(ASPECT, f"must be width:height, like \"16:9\", got {text!r}")
    return width / height


def clip_locations(listed: Any, field: str) -> list[str]:
    """A clip_list's locations: its entries are {"url": ...} objects (the app's) or plain strings."""
    if not isinstance(listed, list):
        raise ValidationError(field, f"must be a list of clips ({{\"url\": ...}} objects), got {listed!r}")
    clips = []
    for i, clip in enumerate(listed):
        url = clip.get("url") if isinstance(clip, Mapping) else clip
        if not isinstance(url, str) or not url.strip():
            raise ValidationError(f"{field}[{i}]", f"needs the clip's url, got {clip!r}")
        clips.append(url)
    return clips


def bridging_anchors(gap: int, before: Any, after: Any) -> dict[int, Any]:
    """keep_bridging_images: clip 1's last kept frame a third into the gap and clip 2's first two
    thirds in, as the headless handler places them (a gap under 3 frames has no room and gets none)."""
    first, second = gap // 3, gap * 2 // 3
    if gap < 3 or first >= second or not len(before) or not len(after):
        return {}
    return {first: before[-1], second: after[0]}


def require_vace(registry: Any, model: str) -> None:
    """A join generates from a guide, which only a VACE model follows (`model`: what the row runs)."""
    if not registry.get(model).is_vace:
        raise ValidationError("model", f"{model!r} is not a VACE model; a join generates with one (e.g. "
                                       "wan_2_2_vace_lightning_baseline_2_2_2)")


def generation_params(params: Mapping[str, Any], spec: JoinSpec, length: int) -> dict[str, Any]:
    """The generation row of a join: the row's keys that are not the join's own, at the join's size,
    rate and guide length; the prompt defaults to empty, as the headless handler's does."""
    return {**{key: value for key, value in params.items() if key not in JOIN_KEYS},
            "resolution": f"{spec.width}x{spec.height}", "video_length": length, "fps": spec.fps}


def join_layout(clips: list[Source], transitions: list[tuple[Path, StitchedTransition]]) -> tuple[list[Source], list[int]]:
    """The videos of a joined result and the frames each pair cross-fades: every clip without the ends
    its transitions replace, each transition between its two clips, blending its context with theirs."""
    if len(transitions) != len(clips) - 1:
        raise ValueError(f"{len(clips)} clips need {len(clips) - 1} transitions, got {len(transitions)}")
    videos: list[Source] = []
    overlaps: list[int] = []
    for index, clip in enumerate(clips):
        skip = transitions[index - 1][1].gap_from_clip2 if index > 0 else 0
        drop = transitions[index][1].gap_from_clip1 if index < len(transitions) else 0
        videos.append(dataclasses.replace(clip, skip=skip, drop=drop))
        if index < len(transitions):
            path, transition = transitions[index]
            videos.append(Source(path))
            overlaps += [transition.context_from_clip1, transition.context_from_clip2]
    return videos, overlaps
