"""The travel plan: N keyframe images -> N-1 VACE segments, validated once, stored as JSON.

The params of a travel job come in three forms, all read through the fields of wan_engine.schema
(`images`, `prompts` / `prompt`, `negative_prompt(s)`, `resolution`, `fps`, `segment_frames`,
`frame_overlap`, `seed`, `model` / `preset`, sampling and LoRA fields, by any of their names):

* ours (README: "A travel job from SQL"): `images`, `prompts` | `prompt`, `segment_frames` int | list (each segment's frames, overlap
  included), `frame_overlap` int | list (one per transition), ...;
* the seed's flat row: `model_name`, `vace_version`, `prompt`, `video_length` (frames per segment),
  `num_inference_steps`, `guidance_scale`, `flow_shift`, `lora_names`, `lora_multipliers`;
* headless Wan2GP / Reigh: the same under `orchestrator_details` with the headless names
  (`input_image_paths_resolved`, `base_prompts_expanded`, `enhanced_prompts_expanded`, `base_prompt`,
  `segment_frames_expanded`, `frame_overlap_expanded`, `parsed_resolution_wh`, `seed_base`, `steps`,
  `phase_config`, `additional_loras`, `text_before_prompts` / `text_after_prompts`, ...).

Frame rules (the one used is recorded in the plan as `frame_rule`):

* ours: segment i has `segment_frames[i]` frames (4n+1, rounded down) and shares `overlap[i]` frames
  (even, rounded down) with segment i-1; an overlap that does not fit is an error;
* headless (current reigh-worker orchestrator): `segment_frames_expanded[i]` is rounded down to 4n+1;
  each overlap is made even and capped at the shorter of its two segments; a chained segment after
  the first generates its frames plus the overlap (rounded up to 4n+1), so the stitched length is
  about sum(segment_frames_expanded). `frame_overlap_expanded` may carry one entry per segment (the
  last has no following segment and is dropped), and sizes are snapped down to multiples of 16.

Either way the stitched video has sum(frames) - sum(overlaps) frames, every rounding is recorded,
and seeds are `seed + i`, so any segment can be re-run alone and give the same video.

Independent segments (`chain_segments: false` or `independent_segments: true`) each open on their
own start image and wait for no other segment; the stitch cross-fades their overlaps all the same.
The app's `continuation_config` decides instead when given: strategy "guide_overlap_masked" chains,
"none" does not; the SVI and LTX strategies and `model_family: "ltx"` are refused naming the field.
Structure guidance (`travel_guidance`, `structure_guidance`, the older structure keys) is read and
its videos placed on the journey's timeline (worker/travel/guidance.py). One
keyframe makes one segment that starts on it and ends where the model takes it. A journey that
continues a video (`continue_from_video`, headless `continue_from_video_resolved_path`) has a segment
per image: the first opens on the video's last `frame_overlap[0]` frames, and the stitch starts
with the video.

Model and preset names are passed through unchecked: the handler validates them against the
registry. Nothing here touches the database.
"""
from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from wan_engine.errors import echo
from wan_engine.schema import DEFAULT_LIMITS, MAX_SEED, RANDOM_SEED, RESOLUTION_MULTIPLE, TRAVEL, Limits
from worker.dialects import (
    check_model_family,
    compose_prompt,
    expand_lora_objects,
    ignored_params,
    sampling,
    segment_overrides,
)
from worker.errors import ValidationError
from worker.params import (
    ParamReader,
    local_path,
    parse_resolution,
    round_to_frame_count,
    round_up_to_frame_count,
    snapped_resolution,
    to_int,
    to_text,
)
from worker.travel.colour import ColourAdjustments, read_colour
from worker.travel.guidance import Guidance, place, read_guidance, segment_offsets
from worker.travel.stitch import HEADLESS_SHARPEN
from worker.video import check_image, probe

DEFAULT_MODEL = "vace_14B_cocktail_2_2"  # the seed's default travel model, the Wan 2.2 VACE 14B cocktail
MIN_SEGMENT_FRAMES = 5  # 4n+1 with n >= 1: a start frame, an end frame and something between
MAX_SEGMENT_FRAMES = 1000  # ~60 s at 16 fps per segment; far past what Wan keeps coherent

HEADLESS_KEY = "orchestrator_details"
OURS_RULE = "ours: each segment_frames entry is a segment's whole length, overlap included"
HEADLESS_RULE = ("headless: segment_frames_expanded rounded down to 4n+1; overlaps even and capped at the shorter "
                 "neighbour; a chained segment after the first generates its frames + the overlap, rounded up to 4n+1")
INDEPENDENT_RULE = ("; independent segments: each opens on its own keyframe (nothing is generated on top of "
                    "the overlap), the stitch cross-fades the overlaps")
ENHANCED_PROMPTS = "enhanced_prompts_expanded"
CONTINUATION = "continuation_config"
CROSSFADE_SHARPEN = "crossfade_sharp_amt"
# continuation_config strategies (reigh-worker source/core/params/generation_policy.py): "none" leaves
# segments independent; "guide_overlap_masked" is our chained VACE overlap (each segment's guide opens
# on its predecessor's last frames, masked as kept); the others need what this worker does not have.
NO_CONTINUATION, GUIDE_OVERLAP = "none", "guide_overlap_masked"
UNSUPPORTED_CONTINUATIONS = {
    "svi_latent_chaining": "SVI latent chaining (Wan image-to-video SVI LoRAs and latent tails) is not supported",
    "prefix_video_source": "prefix-video continuation is LTX-2's, and LTX models are not supported",
}
PER_SEGMENT_PHASE_CONFIGS, PER_SEGMENT_LORAS = "phase_configs_expanded", "loras_per_segment_expanded"


@dataclass(frozen=True)
class Rounding:
    """A value the plan changed to fit a rule, e.g. segment_frames[1]: 80 -> 77 (4n+1)."""

    field: str
    requested: int
    used: int
    rule: str


@dataclass(frozen=True)
class SegmentPlan:
    """One VACE generation: from `start_image` to `end_image` (None: the journey's last segment from a
    single keyframe ends where the model takes it) in `frames` frames.

    `overlap` frames at its head are the last `overlap` frames of segment index-1 (0 for index 0).
    """

    index: int
    start_image: str
    end_image: str | None
    prompt: str
    negative_prompt: str
    frames: int
    overlap: int
    seed: int
    previous_video: str | None = None  # the first segment of a continued journey opens on this video's tail

    @property
    def new_frames(self) -> int:
        """Frames this segment adds to the stitched video."""
        return self.frames - self.overlap


@dataclass(frozen=True)
class TravelPlan:
    """A validated travel job; `to_params()` / `from_params()` carry it through JSON task params.

    `sampling` holds the typed sampling and LoRA fields (GenerationRequest keyword arguments);
    `ignored_params` the keys of the row that were not honoured (reported on the job's rows)."""

    model: str | None
    preset: str | None
    width: int
    height: int
    fps: int
    seed: int
    segments: tuple[SegmentPlan, ...]
    sampling: dict[str, Any] = field(default_factory=dict)
    roundings: tuple[Rounding, ...] = ()
    frame_rule: str = OURS_RULE
    independent: bool = False  # segments open on their own keyframes, never on a predecessor
    ignored_params: dict[str, str] = field(default_factory=dict)
    given_as: dict[str, str] = field(default_factory=dict)  # schema field -> the row's key for it
    continue_from: str | None = None  # a video this journey continues (stitched first)
    continue_frames: int = 0
    segment_sampling: tuple[dict[str, Any], ...] = ()  # per segment, what it sets over `sampling`
    image_to_video: bool = False  # an i2v model (the orchestrator sets it): segments take start and end frames
    colour: ColourAdjustments = ColourAdjustments()  # Reigh's colour adjustments (worker/travel/colour.py)
    crossfade_sharpen: float | None = None  # the headless stitch's fade and sharpening (travel/stitch.py), or ours
    guidance: Guidance | None = None  # structure videos steering the generated frames (travel/guidance.py)

    @property
    def resolution(self) -> str:
        return f"{self.width}x{self.height}"

    @property
    def overlaps(self) -> list[int]:
        """Frames shared by consecutive videos of the stitch (the continued video, if any, then the
        segments), one per join: what `stitch` takes."""
        return [segment.overlap for segment in (self.segments if self.continue_from else self.segments[1:])]

    @property
    def shared_frames(self) -> list[int]:
        """Frames the stitch keeps once per join of the plan's overlaps (shared_frames_of)."""
        return self.shared_frames_of(self.overlaps)

    def shared_frames_of(self, overlaps: list[int]) -> list[int]:
        """Frames the stitch keeps once per join with these overlaps: 1 where an image-to-video segment
        opens on exactly the frame its predecessor ended on (no overlap), else 0."""
        return [int(self.image_to_video and overlap == 0) for overlap in overlaps]

    def sampling_of(self, index: int) -> dict[str, Any]:
        """The sampling fields of segment `index`: the job's, with the segment's own overrides."""
        own = self.segment_sampling[index] if self.segment_sampling else {}
        return {**self.sampling, **own}

    @property
    def expected_frames(self) -> int:
        """Length of the stitched video: the continued video's frames + sum(frames) - sum(overlaps)
        - sum(shared_frames)."""
        return self.continue_frames + sum(segment.new_frames for segment in self.segments) - sum(self.shared_frames)

    @property
    def timeline_offsets(self) -> list[int]:
        """Each segment's first frame in the journey's timeline (the stitched video without a continued
        video's own frames), where structure guidance places its videos."""
        return segment_offsets([segment.frames for segment in self.segments],
                               [segment.overlap for segment in self.segments])

    @property
    def timeline_frames(self) -> int:
        return self.timeline_offsets[-1] + self.segments[-1].frames

    def to_params(self) -> dict[str, Any]:
        """JSON-ready dict; `expected_frames` is written for operators reading the row."""
        return {
            "model": self.model,
            "preset": self.preset,
            "resolution": self.resolution,
            "fps": self.fps,
            "seed": self.seed,
            "segments": [asdict(segment) for segment in self.segments],
            "sampling": dict(self.sampling),
            "roundings": [asdict(rounding) for rounding in self.roundings],
            "frame_rule": self.frame_rule,
            "independent": self.independent,
            "ignored_params": dict(self.ignored_params),
            "given_as": dict(self.given_as),
            "continue_from": self.continue_from,
            "continue_frames": self.continue_frames,
            "segment_sampling": [dict(overrides) for overrides in self.segment_sampling],
            "image_to_video": self.image_to_video,
            "colour": self.colour.to_params(),
            "crossfade_sharpen": self.crossfade_sharpen,
            "guidance": None if self.guidance is None else self.guidance.to_params(),
            "expected_frames": self.expected_frames,
        }

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> TravelPlan:
        """Inverse of `to_params` (a plan the worker stored; its files were checked when planned)."""
        width, height = parse_resolution(params["resolution"], "resolution")
        plan = cls(
            model=params["model"],
            preset=params["preset"],
            width=width,
            height=height,
            fps=params["fps"],
            seed=params["seed"],
            segments=tuple(SegmentPlan(**segment) for segment in params["segments"]),
            sampling=dict(params["sampling"]),
            roundings=tuple(Rounding(**rounding) for rounding in params["roundings"]),
            frame_rule=params["frame_rule"],
            independent=params["independent"],
            ignored_params=dict(params["ignored_params"]),
            given_as=dict(params["given_as"]),
            continue_from=params["continue_from"],
            continue_frames=params["continue_frames"],
            segment_sampling=tuple(dict(overrides) for overrides in params["segment_sampling"]),
            image_to_video=params["image_to_video"],
            colour=ColourAdjustments.from_params(params.get("colour")),  # absent from plans stored before it
            crossfade_sharpen=params.get("crossfade_sharpen"),
            guidance=None if params.get("guidance") is None else Guidance.from_params(params["guidance"]),
        )
        if params.get("expected_frames", plan.expected_frames) != plan.expected_frames:
            raise ValidationError("expected_frames", "does not match the stored segments")
        return plan


@dataclass(frozen=True)
class SegmentJob:
    """What one segment row carries: its segment, the job's shared settings, and the job's size (the
    whole plan is stored once, on the stitch row, so a job's params grow linearly with its segments)."""

    segment: SegmentPlan
    model: str | None
    preset: str | None
    width: int
    height: int
    fps: int
    sampling: dict[str, Any]
    segment_count: int
    expected_frames: int
    independent: bool = False  # the segment opens on its own keyframe, not on the previous output
    image_to_video: bool = False  # conditioned on start and end frames instead of a guide video
    colour: ColourAdjustments = ColourAdjustments()
    guidance: Guidance | None = None  # the job's structure guidance
    guidance_offset: int = 0  # the segment's first frame in the journey's timeline

    def to_params(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> SegmentJob:
        guidance = params.get("guidance")
        return cls(**{**params, "segment": SegmentPlan(**params["segment"]), "sampling": dict(params["sampling"]),
                      "colour": ColourAdjustments.from_params(params.get("colour")),
                      "guidance": None if guidance is None else Guidance.from_params(guidance)})

    @classmethod
    def of(cls, plan: TravelPlan, index: int) -> SegmentJob:
        return cls(plan.segments[index], plan.model, plan.preset, plan.width, plan.height, plan.fps,
                   plan.sampling_of(index), len(plan.segments), plan.expected_frames, plan.independent,
                   plan.image_to_video, plan.colour, plan.guidance, plan.timeline_offsets[index])


def is_headless_form(params: Mapping[str, Any]) -> bool:
    return HEADLESS_KEY in params


def travel_reader(params: Mapping[str, Any]) -> tuple[ParamReader, ParamReader | None]:
    """(reader of the travel fields, reader of the row's top level when they sit under
    orchestrator_details, else None)."""
    if not is_headless_form(params):
        return ParamReader(expand_lora_objects(params), TRAVEL), None
    top = ParamReader(params, TRAVEL)
    top.used.add(HEADLESS_KEY)
    details = params[HEADLESS_KEY]
    if not isinstance(details, Mapping):
        raise ValidationError(HEADLESS_KEY, "must be an object")
    reader = ParamReader(expand_lora_objects(details, f"{HEADLESS_KEY}."), TRAVEL, prefix=f"{HEADLESS_KEY}.")
    # The app nests a copy of the payload in itself (composeTaskFamilyPayload, reigh-app
    # shared/taskContracts.ts), which the headless orchestrator then rewrites only in the outer one: the
    # outer one is what is read.
    reader.used.add(HEADLESS_KEY)
    return reader, top


def plan_travel(params: Mapping[str, Any], limits: Limits = DEFAULT_LIMITS) -> TravelPlan:
    """Validate travel params of any form and build the plan; raises ValidationError(field, rule)."""
    return read_travel(params, limits)[0]


def read_travel(params: Mapping[str, Any], limits: Limits = DEFAULT_LIMITS, *, independent: bool = False,
                segment_prompt: str | None = None) -> tuple[TravelPlan, ParamReader]:
    """plan_travel, with the reader of the travel fields, whose labels name fields as the row wrote
    them. `independent` plans every segment to open on its own keyframe whatever the params say
    (one segment re-made alone); `segment_prompt`, the prompt a segment row gives itself, stands in
    for a segment the params give no prompt."""
    reader, top = travel_reader(params)
    plan = _Planner(reader, headless=top is not None, limits=limits, independent=independent,
                    segment_prompt=segment_prompt).plan()
    ignored = ignored_params(reader, plan.ignored_params)
    if top is not None:
        ignored.update(ignored_params(top))
    given_as = {name: reader.key(name) for name in reader.schema.keys}
    return replace(plan, ignored_params=ignored, given_as=given_as), reader


def read_crossfade_sharpen(reader: ParamReader, default: float | None) -> float | None:
    """The headless `crossfade_sharp_amt` (the unsharp amount of its cross-fade, 0..5) where the row
    gives one, else `default` (the headless stitch's 0.3 for a headless job, None, ours, otherwise)."""
    return reader.number(CROSSFADE_SHARPEN, default, minimum=0.0, maximum=5.0)


def continuation_strategy(reader: ParamReader) -> str | None:
    """The strategy of the row's `continuation_config` ({"strategy", "overlap_frames"}; strategy "none"
    when left out, as the headless GenerationPolicy reads it), None without one. `overlap_frames` is
    read but changes nothing for guide_overlap_masked: the headless worker takes each join's overlap
    from frame_overlap_expanded. Strategies this worker cannot do fail naming the field."""
    reader.used.add(CONTINUATION)
    if not reader.has(CONTINUATION):
        return None
    config, field = reader.params[CONTINUATION], reader.prefix + CONTINUATION
    if not isinstance(config, Mapping):
        raise ValidationError(field, "must be an object {\"strategy\", \"overlap_frames\"}")
    strategy = to_text(config.get("strategy") or NO_CONTINUATION, f"{field}.strategy")
    if strategy in UNSUPPORTED_CONTINUATIONS:
        raise ValidationError(f"{field}.strategy", f"{echo(strategy)}: {UNSUPPORTED_CONTINUATIONS[strategy]}")
    if strategy not in (NO_CONTINUATION, GUIDE_OVERLAP):
        raise ValidationError(f"{field}.strategy", f"must be {NO_CONTINUATION!r} or {GUIDE_OVERLAP!r}, got {echo(strategy)}")
    if config.get("overlap_frames") is not None:
        to_int(config["overlap_frames"], f"{field}.overlap_frames")
    return strategy


class _Planner:
    """Builds a plan from a reader of either form (see the module docstring for the frame rules)."""

    def __init__(self, reader: ParamReader, *, headless: bool, limits: Limits, independent: bool = False,
                 segment_prompt: str | None = None):
        self.reader = reader
        self.segment_prompt = segment_prompt
        self.headless = headless
        self.independent = independent
        self.limits = limits
        self.roundings: list[Rounding] = []
        self.overridden: dict[str, str] = {}
        self.continuation: str | None = None  # the row's continuation_config strategy, if it has one
        self.guidance: Guidance | None = None

    def label(self, name: str) -> str:
        return self.reader.label(name)

    def plan(self) -> TravelPlan:
        image_to_video_mode = self._travel_mode()
        images = self._images()
        width, height = self._resolution()
        continued = self._continued_video()
        # A continued journey has a segment per image (the first travels from the video's end to
        # images[0]); otherwise N images make N-1 segments (one image: one segment opening on it).
        starts = [continued[0], *images] if continued else images
        count = len(images) if continued else max(1, len(images) - 1)
        self._check_declared_count(count)
        chained = not self._independent(image_to_video_mode) or continued is not None
        prompts = self._prompts(count)
        negative_prompts = self._negative_prompts(count)
        asked = self._segment_frames(count)
        overlaps = self._overlaps([continued[1], *asked]) if continued else [0, *self._overlaps(asked)]
        self._note_continuation_overlap(overlaps[1:] if not continued else overlaps)
        frames = self._generated_frames(asked, overlaps, first_join=0 if continued else 1, chained=chained)
        seed = self._seed(count)
        segments = tuple(
            SegmentPlan(
                index=i,
                start_image=starts[i],
                end_image=starts[i + 1] if i + 1 < len(starts) else None,
                prompt=prompts[i],
                negative_prompt=negative_prompts[i],
                frames=frames[i],
                overlap=overlaps[i],
                seed=seed + i,
                previous_video=continued[0] if continued and i == 0 else None,
            )
            for i in range(count)
        )
        model, preset = self.reader.field("model"), self.reader.field("preset")
        if model is None and preset is None:
            model = DEFAULT_MODEL
        rule = HEADLESS_RULE if self.headless else OURS_RULE
        plan = TravelPlan(
            model=model,
            preset=preset,
            width=width,
            height=height,
            fps=self.reader.field("fps"),
            seed=seed,
            segments=segments,
            sampling=sampling(self.reader, self.overridden),
            roundings=tuple(self.roundings),
            frame_rule=rule if chained else rule + INDEPENDENT_RULE,
            independent=not chained,
            ignored_params=self.overridden,
            continue_from=continued[0] if continued else None,
            continue_frames=continued[1] if continued else 0,
            segment_sampling=self._segment_sampling(count),
            colour=read_colour(self.reader),
            crossfade_sharpen=read_crossfade_sharpen(self.reader, HEADLESS_SHARPEN if self.headless else None),
        )
        if self.guidance is None:
            return plan
        guidance, unplaced = place(self.guidance, plan.timeline_frames)  # videos past the end are reported
        return replace(plan, guidance=guidance, ignored_params={**self.overridden, **self._own_keys(unplaced)})

    def _own_keys(self, reasons: Mapping[str, str]) -> dict[str, str]:
        """Reasons keyed by field names relative to the travel fields (ignored_params adds their place)."""
        return {key.removeprefix(self.reader.prefix): reason for key, reason in reasons.items()}

    def _segment_sampling(self, count: int) -> tuple[dict[str, Any], ...]:
        """Reigh's per-pair overrides (`phase_configs_expanded`, `loras_per_segment_expanded`), one
        dict per segment; () when the row has none."""
        lists = [self.reader.params.get(key) for key in (PER_SEGMENT_PHASE_CONFIGS, PER_SEGMENT_LORAS)]
        self.reader.used.update((PER_SEGMENT_PHASE_CONFIGS, PER_SEGMENT_LORAS))
        for key, value in zip((PER_SEGMENT_PHASE_CONFIGS, PER_SEGMENT_LORAS), lists):
            if value is not None and not isinstance(value, list):
                raise ValidationError(self.reader.prefix + key, "must be a list with an entry (or null) per segment")
        if not any(lists):
            return ()
        configs, loras = ([*(value or []), *[None] * count][:count] for value in lists)
        prefix = self.reader.prefix
        return tuple(segment_overrides(configs[i], loras[i], f"{prefix}{PER_SEGMENT_PHASE_CONFIGS}[{i}]",
                                       f"{prefix}{PER_SEGMENT_LORAS}[{i}]") for i in range(count))

    def _continued_video(self) -> tuple[str, int] | None:
        """(path or URL as given, frames) of the video the journey continues (a URL is fetched on this
        box to look at it; segments fetch it where they run). Any frame size: as in the headless
        worker, the first segment reads its frames scaled to the job's resolution, and the stitched
        video takes the continued video's size."""
        value = self.reader.field("continue_from_video", None)
        if value is None:
            return None
        name = self.label("continue_from_video")
        path = local_path(value, name)
        try:
            info = probe(path)
        except (OSError, RuntimeError) as error:
            raise ValidationError(name, f"not a readable video: {echo(value)} ({error})") from None
        return value, info.frames

    def _note_continuation_overlap(self, joins: list[int]) -> None:
        """continuation_config.overlap_frames is not what the joins use (the headless worker reads each
        join's overlap from frame_overlap_expanded too): reported when it differs from them."""
        config = self.reader.params.get(CONTINUATION)
        given = config.get("overlap_frames") if isinstance(config, Mapping) else None
        if given is not None and any(overlap != to_int(given, CONTINUATION) for overlap in joins):
            self.overridden[f"{CONTINUATION}.overlap_frames"] = (
                f"the joins overlap by {joins} frames, from frame_overlap_expanded (as the headless worker reads them)")

    # ---- what kind of journey ----

    def _travel_mode(self) -> bool:
        """True for Reigh's `model_type: "i2v"` (image-to-video travel), False for "vace"; SVI
        end-frame chaining (`use_svi`), a continuation, guidance or model family this worker cannot do
        are refused."""
        mode = self.reader.text("model_type", "vace")
        if mode not in ("vace", "i2v"):
            raise ValidationError(self.reader.prefix + "model_type", f"must be \"vace\" or \"i2v\", got {echo(mode)}")
        if self.reader.flag("use_svi", False):
            raise ValidationError(self.reader.prefix + "use_svi", "SVI end-frame chaining is not supported")
        reading = read_guidance(self.reader)
        self.guidance = reading.guidance
        self.overridden.update(self._own_keys(reading.ignored))
        if self.guidance is not None and mode == "i2v":
            raise ValidationError(self.guidance.field, "structure guidance steers VACE segments through their guide "
                                                       "videos; model_type is \"i2v\" (Uni3C, its guidance, is not "
                                                       "supported)")
        check_model_family(self.reader)
        self.continuation = continuation_strategy(self.reader)
        if self.continuation == GUIDE_OVERLAP and mode == "i2v":
            raise ValidationError(f"{self.reader.prefix}{CONTINUATION}.strategy",
                                  f"{GUIDE_OVERLAP} chains VACE segments through their guide videos; model_type is "
                                  "\"i2v\", whose segments this worker never chains that way")
        return mode == "i2v"

    def _independent(self, image_to_video_mode: bool) -> bool:
        """Segments are independent (each opens on its own keyframe) when `chain_segments` is false
        or, without it, `independent_segments` is true; the two may not contradict each other. A
        `continuation_config` decides instead (its strategy "none": independent, guide_overlap_masked:
        chained), and neither flag may contradict it. The headless orchestrator never chains
        `model_type: "i2v"` segments without a continuation, so neither does this."""
        chain = self.reader.flag("chain_segments", True) if self.reader.has("chain_segments") else None
        independent = (self.reader.flag("independent_segments", False)
                       if self.reader.has("independent_segments") else None)
        if self.independent:
            return True
        if self.continuation is not None:
            chained = self.continuation == GUIDE_OVERLAP
            for key, says_independent in (("chain_segments", None if chain is None else not chain),
                                          ("independent_segments", independent)):
                if says_independent is not None and says_independent == chained:
                    raise ValidationError(self.reader.prefix + key, f"contradicts {CONTINUATION}.strategy "
                                                                    f"{echo(self.continuation)}")
            return not chained
        if image_to_video_mode:
            return True
        if chain is not None and independent is not None and chain == independent:
            raise ValidationError(self.reader.prefix + "chain_segments",
                                  f"is {str(chain).lower()}, which contradicts independent_segments")
        return not chain if chain is not None else bool(independent)

    def _check_declared_count(self, count: int) -> None:
        declared = self.reader.integer("num_new_segments_to_generate", None)
        if declared is not None and declared != count:
            images = len(self.reader.field("images"))
            raise ValidationError(self.reader.prefix + "num_new_segments_to_generate",
                                  f"says {declared} segments but {images} images make {count}")

    # ---- fields ----

    def _resolution(self) -> tuple[int, int]:
        """The resolution; the headless form snaps each side down to a multiple of 16 (recorded), as
        headless Wan2GP does with the sizes its backends send ("902x508" for 16:9 becomes 896x496)."""
        name = self.label("resolution")
        value = self.reader.field("resolution")
        if not self.headless:
            return parse_resolution(value, name)
        size, requested = snapped_resolution(value, name)
        for side, asked, used in zip(("width", "height"), requested, size):
            if used != asked:
                self.roundings.append(Rounding(f"resolution.{side}", asked, used,
                                               f"multiple of {RESOLUTION_MULTIPLE}, rounded down"))
        return size

    def _images(self) -> list[str]:
        name = self.label("images")
        images = self.reader.field("images", None)
        if images is None:
            raise ValidationError(name, "required: a list of image paths (N images make N-1 segments)")
        if not images:
            raise ValidationError(name, "needs at least one keyframe image")
        if len(images) > self.limits.max_keyframes:
            raise ValidationError(name, f"has {len(images)} images, over the limit of {self.limits.max_keyframes} "
                                        "(max_keyframes)")
        for i, path in enumerate(images):  # a URL is fetched (once per box) and checked like a file
            key = f"{self.reader.key('images')}[{i}]"
            check_image(local_path(path, key), key)
        return list(images)

    def _prompts(self, count: int) -> list[str]:
        """Per segment: the enhanced prompt when there is one, else the segment's prompt, else
        `prompt` / `base_prompt` (the prompt of every segment), wrapped in text_before/after_prompts.
        Ours requires one; the headless form may leave a segment without (its orchestrator then runs
        the segment on an empty prompt, as image-to-video jobs from the Reigh app often do)."""
        listed = self._per_segment("prompts", count, default=[""])
        enhanced = self._per_segment_key(ENHANCED_PROMPTS, count)
        fallback = self.reader.field("prompt", "")
        prompts = []
        for i in range(count):
            chosen = next((p for p in (enhanced[i], listed[i], fallback, self.segment_prompt) if p and p.strip()),
                          "" if self.headless else None)
            if chosen is None:
                raise ValidationError(self.label("prompts"),
                                      f"required: segment {i} has no prompt ('prompts', one per segment, or 'prompt')")
            prompts.append(compose_prompt(chosen, self.reader))
        return prompts

    def _negative_prompts(self, count: int) -> list[str]:
        fallback = self.reader.field("negative_prompt")
        listed = self._per_segment("negative_prompts", count, default=[fallback])
        return [p if p and p.strip() else fallback for p in listed]

    def _per_segment(self, name: str, count: int, default: list[str]) -> list[str]:
        """A text for every segment from a scalar or a list of 1 or `count` (prompts, negatives)."""
        value = self.reader.field(name, default)
        return self._texts_for_segments(value, count, self.label(name))

    def _per_segment_key(self, key: str, count: int) -> list[str]:
        value = self.reader.params.get(key)
        self.reader.used.add(key)
        return [""] * count if value is None else self._texts_for_segments(value, count, self.reader.prefix + key)

    @staticmethod
    def _texts_for_segments(value: Any, count: int, name: str) -> list[str]:
        values = value if isinstance(value, list) else [value]
        if len(values) not in (1, count):
            wanted = "1 entry" if count == 1 else f"1 or {count} entries"
            raise ValidationError(name, f"needs {wanted} (one per segment), got {len(values)}")
        if not all(isinstance(item, str) or item is None for item in values):
            raise ValidationError(name, "entries must be strings")
        values = ["" if item is None else item for item in values]
        return values * count if len(values) == 1 else list(values)

    def _int_list(self, name: str, length: int, *, extra_allowed: bool = False) -> list[int]:
        """An int field given once for all, or as a list of `length` entries (one more allowed in the
        headless form, whose lists carry an entry per segment: the last is dropped)."""
        label = self.label(name)
        value = self.reader.field(name)
        if not isinstance(value, list):
            return [to_int(value, label)] * length
        if extra_allowed and len(value) == length + 1:
            value = value[:length]
        if len(value) != length:
            raise ValidationError(label, f"needs {length} entries, got {len(value)}")
        return [to_int(item, f"{self.reader.key(name)}[{i}]") for i, item in enumerate(value)]

    def _segment_frames(self, count: int) -> list[int]:
        label = self.reader.key("segment_frames")
        rounded = []
        for i, requested in enumerate(self._int_list("segment_frames", count)):
            low = 1 if self.headless else MIN_SEGMENT_FRAMES
            if not low <= requested <= MAX_SEGMENT_FRAMES:
                raise ValidationError(f"{label}[{i}]", f"must be in {low}..{MAX_SEGMENT_FRAMES}, got {requested}")
            used = round_to_frame_count(requested, f"{label}[{i}]")
            if used != requested:
                self.roundings.append(Rounding(f"segment_frames[{i}]", requested, used, "4n+1, rounded down"))
            rounded.append(used)
        return rounded

    def _overlaps(self, frames: list[int]) -> list[int]:
        """Overlap i joins segments i and i+1: even, >= 0; ours must be shorter than both neighbours
        (else an error), headless ones are capped at the shorter neighbour (recorded)."""
        label = self.reader.key("frame_overlap")
        requested_overlaps = self._int_list("frame_overlap", len(frames) - 1, extra_allowed=self.headless)
        used_overlaps = []
        for i, requested in enumerate(requested_overlaps):
            field_name = f"{label}[{i}]"
            if requested < 0:
                raise ValidationError(field_name, f"must be >= 0, got {requested}")
            used = requested // 2 * 2
            shorter = min(frames[i], frames[i + 1])
            if self.headless:
                used = min(used, shorter)  # the headless orchestrator caps instead of refusing
            if used != requested:
                rule = "even, capped at the shorter segment" if self.headless else "even, rounded down"
                self.roundings.append(Rounding(f"frame_overlap[{i}]", requested, used, rule))
            if used >= shorter and not self.headless:
                raise ValidationError(
                    field_name,
                    f"{used} frames must be fewer than both segments it joins ({frames[i]} and {frames[i + 1]})",
                )
            used_overlaps.append(used)
        if not self.headless:
            for i in range(1, len(frames) - 1):
                head, tail = used_overlaps[i - 1], used_overlaps[i]
                if head + tail >= frames[i]:
                    raise ValidationError(
                        label,
                        f"segment {i} has {frames[i]} frames; its overlaps {head} + {tail} must leave it a frame of its own",
                    )
        return used_overlaps

    def _generated_frames(self, frames: list[int], overlaps: list[int], first_join: int,
                          chained: bool) -> list[int]:
        """Frames each segment generates: its frames (ours), or its frames + its overlap rounded up
        to 4n+1 (headless chained segments after the first). `first_join`: the index of the first
        segment's overlap in the frame_overlap list (0 when it continues a video, else 1)."""
        if not self.headless:
            return frames
        generated = []
        for i, (count, overlap) in enumerate(zip(frames, overlaps)):
            with_context = overlap and i > 0 and chained
            total = round_up_to_frame_count(count + overlap) if with_context else count
            if total < overlap + 1:
                raise ValidationError(f"{self.reader.key('frame_overlap')}[{i + first_join - 1}]",
                                      f"{overlap} frames leave segment {i} no frame of its own")
            generated.append(total)
        return generated

    def _seed(self, count: int) -> int:
        name = self.label("seed")
        seed = self.reader.field("seed")
        if seed == RANDOM_SEED:
            return secrets.randbelow(MAX_SEED - count + 2)
        if not 0 <= seed <= MAX_SEED - (count - 1):
            highest = MAX_SEED - (count - 1)
            raise ValidationError(name, f"must be -1 (random) or in 0..{highest} (seed + segment index), got {seed}")
        return seed

