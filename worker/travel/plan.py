"""The travel plan: N keyframe images -> N-1 chained VACE segments, validated once, stored as JSON.

Two param forms are accepted and normalised to one `TravelPlan`:

* ours (README: "A travel job from SQL"): `images`, `prompts` | `prompt`, `negative_prompt`, `resolution`
  "WxH", `fps`, `segment_frames` int | list (one per segment), `frame_overlap` int | list (one per
  transition, N-2 for N images), `seed`, `model` | `preset`, sampling and LoRA fields;
* headless Wan2GP / Reigh: the same under `orchestrator_details`, named `input_image_paths_resolved`,
  `base_prompts_expanded` (or `base_prompt`), `negative_prompts_expanded` (or `negative_prompt`),
  `segment_frames_expanded`, `frame_overlap_expanded`, `parsed_resolution_wh` ("WxH" or [W, H]),
  `fps_helpers`, `model_name`, `seed_base`, `num_new_segments_to_generate` (checked if given).
  As in that ecosystem, `frame_overlap_expanded` may carry one entry per segment; the last has no
  following segment and is ignored; and `parsed_resolution_wh` sides are rounded down to multiples
  of 16 (its backends send sizes such as "902x508"), the rounding recorded.
  `model_type: "i2v"` makes the segments independent whatever `chain_segments` says, as the
  headless orchestrator does (its SVI chaining, `use_svi`, is refused: not implemented).

Frame math. Segment i has `frames[i]` frames (Wan generates 4n+1; other counts are rounded down and
the rounding recorded) and shares `overlap[i]` frames with segment i-1 (0 for the first segment;
even, rounded down if odd and recorded). The stitched video has sum(frames) - sum(overlaps) frames.
Seeds are `seed + i`, so any segment can be re-run alone and give the same video.

Segment mode: `independent_segments: true` (or `chain_segments: false`, the headless spelling)
makes every segment open on its own start keyframe, so no segment reads its predecessor and they
may run at once on several workers; by default segment i+1 continues from segment i's output.
With an image-to-video model (the orchestrator sets `image_to_video`), consecutive segments joined
with no overlap share one frame exactly (the keyframe, or in chained mode the previous segment's
last frame): the stitch keeps it once, so such a transition adds frames - 1.

Model and preset names are passed through unchecked: the handler validates them against the
engine's registry. Nothing here touches the database.
"""
from __future__ import annotations

import secrets
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from worker.errors import ValidationError
from worker.params import (
    DEFAULT_FPS,
    DEFAULT_RESOLUTION,
    DEFAULT_SEED,
    MAX_FPS,
    MAX_SEED,
    RANDOM_SEED,
    RESOLUTION_MULTIPLE,
    local_path,
    parse_resolution,
    round_to_frame_count,
    split_resolution,
)
from worker.video import check_image

DEFAULT_MODEL = "vace_14B_cocktail_2_2"  # the Wan 2.2 VACE 14B preset ("vace_22_14b")
DEFAULT_SEGMENT_FRAMES = 81
DEFAULT_FRAME_OVERLAP = 8

MIN_SEGMENT_FRAMES = 5  # 4n+1 with n >= 1: a start frame, an end frame and something between
MAX_SEGMENT_FRAMES = 1000  # ~60 s at 16 fps per segment; far past what Wan keeps coherent

# Generation fields a travel job hands through to every segment untouched (the engine resolves them).
SAMPLING_FIELDS = (
    "num_inference_steps",
    "guidance_scale",
    "guidance2_scale",
    "guidance3_scale",
    "guidance_phases",
    "switch_threshold",
    "switch_threshold2",
    "model_switch_phase",
    "flow_shift",
    "sample_solver",
    "precision",
    "lora_names",
    "lora_multipliers",
)

SEGMENT_MODE_FIELDS = ("independent_segments", "chain_segments")  # same names in both forms

HEADLESS_KEY = "orchestrator_details"
# Our field name -> the headless Wan2GP name of the same thing, in `orchestrator_details`.
_HEADLESS_NAMES = {
    "images": "input_image_paths_resolved",
    "prompts": "base_prompts_expanded",
    "prompt": "base_prompt",
    "negative_prompt": "negative_prompts_expanded",
    "resolution": "parsed_resolution_wh",
    "fps": "fps_helpers",
    "segment_frames": "segment_frames_expanded",
    "frame_overlap": "frame_overlap_expanded",
    "model": "model_name",
    "seed": "seed_base",
}


@dataclass(frozen=True)
class Rounding:
    """A value the plan changed to fit a rule, e.g. segment_frames[1]: 80 -> 77 (4n+1)."""

    field: str
    requested: int
    used: int
    rule: str


@dataclass(frozen=True)
class SegmentPlan:
    """One VACE generation: from `start_image` to `end_image` in `frames` frames.

    `overlap` frames at its head are the last `overlap` frames of segment index-1 (0 for index 0).
    """

    index: int
    start_image: str
    end_image: str
    prompt: str
    negative_prompt: str
    frames: int
    overlap: int
    seed: int

    @property
    def new_frames(self) -> int:
        """Frames this segment adds to the stitched video."""
        return self.frames - self.overlap


@dataclass(frozen=True)
class TravelPlan:
    """A validated travel job; `to_params()` / `from_params()` carry it through JSON task params."""

    model: str | None
    preset: str | None
    width: int
    height: int
    fps: int
    seed: int
    segments: tuple[SegmentPlan, ...]
    sampling: dict[str, Any] = field(default_factory=dict)
    roundings: tuple[Rounding, ...] = ()
    independent: bool = False  # segments open on their own start keyframe, never on a predecessor
    image_to_video: bool = False  # an i2v model: segments are conditioned on start and end frames

    @property
    def resolution(self) -> str:
        return f"{self.width}x{self.height}"

    @property
    def shared_frames(self) -> list[int]:
        """Frames the stitch keeps once per transition: 1 where an image-to-video segment opens on
        exactly the frame its predecessor ended on (no overlap), else 0."""
        return [int(self.image_to_video and segment.overlap == 0) for segment in self.segments[1:]]

    @property
    def overlaps(self) -> list[int]:
        """Frames shared by segments i and i+1, one per transition (what `stitch` takes)."""
        return [segment.overlap for segment in self.segments[1:]]

    @property
    def expected_frames(self) -> int:
        """Length of the stitched video: sum(frames) - sum(overlaps) - sum(shared_frames)."""
        return sum(segment.new_frames for segment in self.segments) - sum(self.shared_frames)

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
            "independent": self.independent,
            "image_to_video": self.image_to_video,
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
            independent=bool(params.get("independent", False)),
            image_to_video=bool(params.get("image_to_video", False)),
        )
        if params.get("expected_frames", plan.expected_frames) != plan.expected_frames:
            raise ValidationError("expected_frames", "does not match the stored segments")
        return plan


def is_headless_form(params: Mapping[str, Any]) -> bool:
    return HEADLESS_KEY in params


def plan_travel(params: Mapping[str, Any]) -> TravelPlan:
    """Validate travel params of either form and build the plan; raises ValidationError(field, rule)."""
    if is_headless_form(params):
        details = params[HEADLESS_KEY]
        if not isinstance(details, Mapping):
            raise ValidationError(HEADLESS_KEY, "must be an object")
        return _Planner(_from_headless(details), _headless_field_name, snap_resolution=True).plan()
    return _Planner(params, lambda name: name).plan()


def _headless_field_name(name: str) -> str:
    return f"{HEADLESS_KEY}.{_HEADLESS_NAMES.get(name, name)}"


def _from_headless(details: Mapping[str, Any]) -> dict[str, Any]:
    """Rename the headless fields to ours; shapes are checked by the planner like any other input."""
    ours = {name: details[theirs] for name, theirs in _HEADLESS_NAMES.items() if theirs in details}
    ours.update({name: details[name] for name in (*SAMPLING_FIELDS, *SEGMENT_MODE_FIELDS) if name in details})
    if details.get("use_svi"):
        raise ValidationError(_headless_field_name("use_svi"), "SVI end-frame chaining is not supported")
    if details.get("model_type") == "i2v":  # the headless orchestrator never chains i2v segments
        ours.pop("chain_segments", None)
        ours["independent_segments"] = True
    if "prompts" in ours and "prompt" in ours:
        del ours["prompt"]  # headless rows carry both; the expanded list is the one used
    if "negative_prompt" not in ours and "negative_prompt" in details:
        ours["negative_prompt"] = details["negative_prompt"]
    images = ours.get("images")
    overlap = ours.get("frame_overlap")
    if isinstance(images, list) and isinstance(overlap, list) and len(overlap) == len(images) - 1:
        ours["frame_overlap"] = overlap[:-1]
    declared = details.get("num_new_segments_to_generate")
    if declared is not None and isinstance(images, list) and declared != len(images) - 1:
        raise ValidationError(
            _headless_field_name("num_new_segments_to_generate"),
            f"says {declared} segments but {len(images)} images make {len(images) - 1}",
        )
    return ours


def _as_int(value: Any, name: str) -> int:
    """An integer param; JSON writers that emit 81.0 are accepted, booleans and strings are not."""
    integral = isinstance(value, int) or (isinstance(value, float) and value.is_integer())
    if isinstance(value, bool) or not integral:
        raise ValidationError(name, f"must be an integer, got {value!r}")
    return int(value)


class _Planner:
    """Builds a plan from our form; `name` maps our field names to what the user wrote, for errors.

    snap_resolution: round each side down to a multiple of 16 (recorded) instead of refusing it, as
    headless Wan2GP does with the sizes its backends send ("902x508" for 16:9 becomes 896x496)."""

    def __init__(self, params: Mapping[str, Any], name: Callable[[str], str], *, snap_resolution: bool = False):
        self.params = params
        self.name = name
        self.snap_resolution = snap_resolution
        self.roundings: list[Rounding] = []

    def plan(self) -> TravelPlan:
        images = self._images()
        count = len(images) - 1
        width, height = self._resolution()
        prompts = self._prompts(count)
        negative_prompts = self._per_segment("negative_prompt", count, default="", kind=str)
        frames = self._segment_frames(count)
        overlaps = [0, *self._overlaps(frames)]
        seed = self._seed(count)
        segments = tuple(
            SegmentPlan(
                index=i,
                start_image=images[i],
                end_image=images[i + 1],
                prompt=prompts[i],
                negative_prompt=negative_prompts[i],
                frames=frames[i],
                overlap=overlaps[i],
                seed=seed + i,
            )
            for i in range(count)
        )
        model, preset = self._optional_name("model"), self._optional_name("preset")
        if model is None and preset is None:
            model = DEFAULT_MODEL
        return TravelPlan(
            model=model,
            preset=preset,
            width=width,
            height=height,
            fps=self._fps(),
            seed=seed,
            segments=segments,
            sampling={key: self.params[key] for key in SAMPLING_FIELDS if key in self.params},
            roundings=tuple(self.roundings),
            independent=self._independent(),
        )

    def _independent(self) -> bool:
        """independent_segments, or the inverse of chain_segments; both given must agree."""
        flags = {}
        for key in SEGMENT_MODE_FIELDS:
            if key in self.params:
                if not isinstance(self.params[key], bool):
                    raise ValidationError(self.name(key), f"must be true or false, got {self.params[key]!r}")
                flags[key] = self.params[key]
        independent = flags.get("independent_segments", not flags.get("chain_segments", True))
        if "chain_segments" in flags and flags["chain_segments"] == independent:
            raise ValidationError(self.name("chain_segments"), "contradicts independent_segments")
        return independent

    def _resolution(self) -> tuple[int, int]:
        name = self.name("resolution")
        value = self.params.get("resolution", DEFAULT_RESOLUTION)
        if self.snap_resolution:
            requested = split_resolution(value, name)
            value = [side // RESOLUTION_MULTIPLE * RESOLUTION_MULTIPLE for side in requested]
            for side, asked, used in zip(("width", "height"), requested, value):
                if used != asked:
                    self.roundings.append(Rounding(f"resolution.{side}", asked, used,
                                                   f"multiple of {RESOLUTION_MULTIPLE}, rounded down"))
        return parse_resolution(value, name)

    def _optional_name(self, key: str) -> str | None:
        value = self.params.get(key)
        if value is not None and (not isinstance(value, str) or not value):
            raise ValidationError(self.name(key), f"must be a non-empty string, got {value!r}")
        return value

    def _images(self) -> list[str]:
        name = self.name("images")
        images = self.params.get("images")
        if not isinstance(images, list) or not all(isinstance(path, str) for path in images):
            raise ValidationError(name, "required: a list of image paths (N images make N-1 segments)")
        if len(images) < 2:
            raise ValidationError(name, f"at least 2 images are needed to travel between, got {len(images)}")
        for i, path in enumerate(images):  # a URL is fetched (once per box) and checked like a file
            check_image(local_path(path, f"{name}[{i}]"), f"{name}[{i}]")
        return list(images)

    def _prompts(self, count: int) -> list[str]:
        if "prompts" in self.params and "prompt" in self.params:
            raise ValidationError(self.name("prompts"), "give either 'prompts' (one per segment) or 'prompt', not both")
        if "prompts" not in self.params and "prompt" not in self.params:
            raise ValidationError(self.name("prompts"), "required: 'prompts' (one per segment) or 'prompt' (for all)")
        key = "prompts" if "prompts" in self.params else "prompt"
        return self._per_segment(key, count, default=None, kind=str)

    def _per_segment(self, key: str, count: int, default: Any, kind: type) -> list[Any]:
        """A value for every segment from a scalar or a list of 1 or `count` (prompts, negatives)."""
        name = self.name(key)
        value = self.params.get(key, default)
        values = value if isinstance(value, list) else [value]
        if len(values) not in (1, count):
            raise ValidationError(name, f"needs 1 or {count} entries (one per segment), got {len(values)}")
        if not all(isinstance(item, kind) for item in values):
            raise ValidationError(name, f"entries must be {kind.__name__}")
        return values * count if len(values) == 1 else list(values)

    def _int_list(self, key: str, default: int, length: int) -> list[int]:
        """An int param given once for all, or as a list of exactly `length` entries."""
        name = self.name(key)
        value = self.params.get(key, default)
        if not isinstance(value, list):
            return [_as_int(value, name)] * length
        if len(value) != length:
            raise ValidationError(name, f"needs {length} entries, got {len(value)}")
        return [_as_int(item, f"{name}[{i}]") for i, item in enumerate(value)]

    def _segment_frames(self, count: int) -> list[int]:
        name = self.name("segment_frames")
        frames = self._int_list("segment_frames", DEFAULT_SEGMENT_FRAMES, count)
        rounded = []
        for i, requested in enumerate(frames):
            if not MIN_SEGMENT_FRAMES <= requested <= MAX_SEGMENT_FRAMES:
                raise ValidationError(
                    f"{name}[{i}]", f"must be in {MIN_SEGMENT_FRAMES}..{MAX_SEGMENT_FRAMES}, got {requested}"
                )
            used = round_to_frame_count(requested, f"{name}[{i}]")
            if used != requested:
                self.roundings.append(Rounding(f"segment_frames[{i}]", requested, used, "4n+1, rounded down"))
            rounded.append(used)
        return rounded

    def _overlaps(self, frames: list[int]) -> list[int]:
        """Overlap i joins segments i and i+1: even, >= 0, and less than either's frame count."""
        name = self.name("frame_overlap")
        overlaps = self._int_list("frame_overlap", DEFAULT_FRAME_OVERLAP, len(frames) - 1)
        used_overlaps = []
        for i, requested in enumerate(overlaps):
            field_name = f"{name}[{i}]"
            if requested < 0:
                raise ValidationError(field_name, f"must be >= 0, got {requested}")
            used = requested // 2 * 2
            if used != requested:
                self.roundings.append(Rounding(f"frame_overlap[{i}]", requested, used, "even, rounded down"))
            shorter = min(frames[i], frames[i + 1])
            if used >= shorter:
                raise ValidationError(
                    field_name,
                    f"{used} frames must be fewer than both segments it joins ({frames[i]} and {frames[i + 1]})",
                )
            used_overlaps.append(used)
        for i in range(1, len(frames) - 1):
            head, tail = used_overlaps[i - 1], used_overlaps[i]
            if head + tail >= frames[i]:
                raise ValidationError(
                    name,
                    f"segment {i} has {frames[i]} frames; its overlaps {head} + {tail} must leave it a frame of its own",
                )
        return used_overlaps

    def _seed(self, count: int) -> int:
        name = self.name("seed")
        seed = _as_int(self.params.get("seed", DEFAULT_SEED), name)
        if seed == RANDOM_SEED:
            return secrets.randbelow(MAX_SEED - count + 2)
        if not 0 <= seed <= MAX_SEED - (count - 1):
            highest = MAX_SEED - (count - 1)
            raise ValidationError(name, f"must be -1 (random) or in 0..{highest} (seed + segment index), got {seed}")
        return seed

    def _fps(self) -> int:
        name = self.name("fps")
        fps = _as_int(self.params.get("fps", DEFAULT_FPS), name)
        if not 1 <= fps <= MAX_FPS:
            raise ValidationError(name, f"must be in 1..{MAX_FPS}, got {fps}")
        return fps
