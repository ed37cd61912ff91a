"""The generation parameters: each field once, with its type, bounds, the other names rows use for it
(the seed's Headless-Wan2GP docs, Wan2GP's, headless Wan2GP / Reigh's), and where its default comes
from. Torch-free: the worker's param reader, the travel planner and the Engine all check requests
with `read` and `validate` here, so an orchestrator validates without importing CUDA.

Reading a row (`read`): every name of a field (its own and its aliases) is looked up; values are
typed by the field's kind with one spelling rule for numbers (`parse_int`, `parse_float`); two
names of one field with different values fail naming both; a wrong type or an out-of-range value
fails naming the field and the name it came by ("steps (num_inference_steps): ...").

Defaults (`resolve`): a field a request leaves out comes from, in order, the preset, the model
definition, the model family (FAMILY_DEFAULTS) or the field's own default; every value reports its
source ("request", "preset", "definition", "family", "default").

Checking a request (`validate`): the model against the registry, the sampling values (solver,
steps, shift, guidance phases), the geometry and its budget, the prompt length, and the LoRAs
(each name to a file of the LoRA folder, each multiplier string against the step plan), all
without loading anything.
"""
from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wan_engine.errors import InvalidRequest, echo
from wan_engine.loras import LORAS_FOLDER, lora_file, resolve_lora_name
from wan_engine.multipliers import lora_multiplier_schedule
from wan_engine.phases import PhaseSettings, StepPlan, plan_steps
from wan_engine.request import PRECISIONS
from wan_engine.schedules import DEFAULT_SOLVER, SOLVERS, solver_name, timesteps

# ---- who names a field how ------------------------------------------------------------------------

SEED = "seed docs"
WAN2GP = "Wan2GP"
HEADLESS = "headless, Reigh"

# ---- where a default comes from ---------------------------------------------------------------------

REQUEST, PRESET, DEFINITION, FAMILY, DEFAULT = "request", "preset", "definition", "family", "default"
FROM_MODEL = "preset > definition > family"  # Field.default of the fields a model definition may set

WAN21 = "wan2_1"
WAN22 = "wan2_2"
FAMILY_DEFAULTS: dict[str, dict[str, Any]] = {
    WAN21: dict(
        num_inference_steps=25, guidance_scale=7.5, guidance2_scale=7.5, guidance3_scale=7.5, guidance_phases=1,
        switch_threshold=0.0, switch_threshold2=0.0, model_switch_phase=1, flow_shift=5.0,
        sample_solver=DEFAULT_SOLVER, lora_names=[], lora_multipliers=[],
    ),
    WAN22: dict(
        num_inference_steps=10, guidance_scale=1.0, guidance2_scale=1.0, guidance3_scale=1.0, guidance_phases=2,
        switch_threshold=875.0, switch_threshold2=0.0, model_switch_phase=1, flow_shift=2.0,
        sample_solver=DEFAULT_SOLVER, lora_names=[], lora_multipliers=[],
    ),
}  # fmt: skip

# ---- kinds ----------------------------------------------------------------------------------------------

INT, FLOAT, TEXT, NAMES, MULTIPLIERS, RESOLUTION, PATH, PATHS, ANY = (
    "int", "float", "text", "names", "multipliers", "resolution", "path", "paths", "any")  # fmt: skip
RESOLUTION_MULTIPLE = 16  # VAE stride 8 x DiT patch 2
MAX_SIDE_PIXELS = 4096
MAX_VIDEO_FRAMES = 1025
MAX_SEED = 2**32 - 1  # seeds of all segments (seed + index) must fit numpy / torch generators
RANDOM_SEED = -1
NAME_CHARS = 200  # longest model or preset name
PATH_CHARS = 4096  # longest path or URL

# Generation forms a field belongs to: one generation, or a travel job (whose segments it configures).
GENERATE, TRAVEL = "generate", "travel"
BOTH = frozenset({GENERATE, TRAVEL})


@dataclass(frozen=True)
class Field:
    """One parameter. `aliases` maps another name of it to whose name that is; `default` is a value,
    FROM_MODEL (the model's defaults apply), or None (absent unless given)."""

    name: str
    kind: str
    doc: str
    minimum: float | None = None
    maximum: float | None = None
    aliases: Mapping[str, str] = field(default_factory=dict)
    default: Any = None
    forms: frozenset[str] = BOTH
    choices: tuple[str, ...] = ()
    max_chars: int | None = None  # longest text value (prompts are bounded by Limits instead)

    @property
    def names(self) -> tuple[str, ...]:
        return (self.name, *self.aliases)


def _f(name: str, kind: str, doc: str, **options: Any) -> Field:
    return Field(name, kind, doc, **options)


FIELDS: dict[str, Field] = {f.name: f for f in (
    # which model
    _f("model", TEXT, "model definition key", aliases={"model_name": f"{SEED}, {HEADLESS}"}, max_chars=NAME_CHARS),
    _f("preset", TEXT, "preset name (a model plus its defaults)", aliases={"vace_version": SEED}, max_chars=NAME_CHARS),
    # what to generate
    _f("prompt", TEXT, "the text prompt (in a travel job: of every segment without its own)",
       aliases={"base_prompt": HEADLESS}),
    _f("negative_prompt", TEXT, "what to avoid", default=""),
    _f("resolution", RESOLUTION, "WIDTHxHEIGHT, multiples of 16", default="832x480",
       aliases={"parsed_resolution_wh": HEADLESS}),
    _f("video_length", INT, "frames (4n+1; other counts are rounded down)", minimum=1, maximum=MAX_VIDEO_FRAMES,
       default=81, forms=frozenset({GENERATE})),
    _f("seed", INT, "-1 draws a random seed (recorded)", minimum=RANDOM_SEED, maximum=MAX_SEED, default=12345,
       aliases={"seed_base": HEADLESS, "seed_to_use": HEADLESS}),
    _f("fps", INT, "frames per second of the written video", minimum=1, maximum=120, default=16,
       aliases={"fps_helpers": HEADLESS}),
    # control inputs (VACE)
    _f("video_guide", PATH, "control video", forms=frozenset({GENERATE})),
    _f("video_mask", PATH, "mask video: bright = generate, dark = keep", forms=frozenset({GENERATE})),
    _f("video_guide2", PATH, "second control video", forms=frozenset({GENERATE})),
    _f("video_mask2", PATH, "mask of the second control video", forms=frozenset({GENERATE})),
    _f("image_refs", PATHS, "reference images", forms=frozenset({GENERATE})),
    _f("image_start", PATH, "first frame of an image-to-video model's video", forms=frozenset({GENERATE})),
    _f("image_end", PATH, "last frame of an image-to-video model's video", forms=frozenset({GENERATE})),
    _f("control_net_weight", FLOAT, "strength of the control video", minimum=0.0, maximum=10.0, default=1.0,
       forms=frozenset({GENERATE})),
    _f("control_net_weight2", FLOAT, "strength of the second control video", minimum=0.0, maximum=10.0,
       default=1.0, forms=frozenset({GENERATE})),
    # sampling: the model definition's defaults apply
    _f("num_inference_steps", INT, "denoising steps", minimum=1, maximum=1000, default=FROM_MODEL,
       aliases={"steps": HEADLESS}),
    _f("guidance_scale", FLOAT, "CFG scale of guidance phase 1", minimum=0.0, maximum=100.0, default=FROM_MODEL),
    _f("guidance2_scale", FLOAT, "CFG scale of phase 2", minimum=0.0, maximum=100.0, default=FROM_MODEL),
    _f("guidance3_scale", FLOAT, "CFG scale of phase 3", minimum=0.0, maximum=100.0, default=FROM_MODEL),
    _f("guidance_phases", INT, "guidance phases (1-3)", minimum=1, maximum=3, default=FROM_MODEL),
    _f("switch_threshold", FLOAT, "timestep where phase 2 starts", minimum=0.0, maximum=1000.0, default=FROM_MODEL),
    _f("switch_threshold2", FLOAT, "timestep where phase 3 starts", minimum=0.0, maximum=1000.0,
       default=FROM_MODEL),
    _f("model_switch_phase", INT, "Wan2GP: the low-noise expert takes over after this phase (3: never); "
       "read as 1 below 3 phases", minimum=1, maximum=3, default=FROM_MODEL),
    _f("precision", TEXT, "DiT precision of this task (default: the worker's --precision)", choices=PRECISIONS),
    _f("flow_shift", FLOAT, "sigma shift of the schedule", minimum=0.001, maximum=100.0, default=FROM_MODEL),
    _f("sample_solver", TEXT, "sampler", default=FROM_MODEL, choices=("", *SOLVERS)),
    _f("lora_names", NAMES, "LoRA files (name, file name or URL)", default=FROM_MODEL,
       aliases={"activated_loras": f"{WAN2GP}, {HEADLESS}"}),
    _f("lora_multipliers", MULTIPLIERS, "one multiplier string per LoRA (\"1\", \"1;0\", \"1,0.5;0\")",
       default=FROM_MODEL, aliases={"loras_multipliers": f"{WAN2GP}, {HEADLESS}"}),
    # travel jobs
    _f("images", PATHS, "keyframe images (N make N-1 segments)", forms=frozenset({TRAVEL}),
       aliases={"input_image_paths_resolved": HEADLESS}),
    _f("prompts", ANY, "one prompt per segment, or one for all", forms=frozenset({TRAVEL}),
       aliases={"base_prompts_expanded": HEADLESS}),
    _f("negative_prompts", ANY, "negative prompts, one per segment or one for all", forms=frozenset({TRAVEL}),
       aliases={"negative_prompts_expanded": HEADLESS}),
    _f("segment_frames", ANY, "frames of each segment (int or list; 4n+1)", default=81, forms=frozenset({TRAVEL}),
       aliases={"video_length": SEED, "segment_frames_expanded": HEADLESS}),
    _f("frame_overlap", ANY, "frames shared by consecutive segments (int or list)", default=8,
       forms=frozenset({TRAVEL}), aliases={"frame_overlap_expanded": HEADLESS}),
    _f("continue_from_video", PATH, "a video the journey continues: the first segment opens on its last frames "
       "and the stitched video starts with it", forms=frozenset({TRAVEL}),
       aliases={"continue_from_video_resolved_path": HEADLESS}),
)}  # fmt: skip

SAMPLING_FIELDS: tuple[str, ...] = tuple(name for name, f in FIELDS.items() if f.default == FROM_MODEL)


def fields_of(form: str) -> list[Field]:
    return [f for f in FIELDS.values() if form in f.forms]


# ---- limits ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Limits:
    """Budgets checked before any work (a worker sets them from its settings)."""

    max_prompt_chars: int = 20_000  # umT5 reads 512 tokens; 20k characters is far past any real prompt
    max_keyframes: int = 200  # keyframes (images) per travel job
    max_pixel_frames: int = 1280 * 720 * 241  # width x height x frames of one generation or one guide


DEFAULT_LIMITS = Limits()


# ---- values ----------------------------------------------------------------------------------------

_INT_TEXT = re.compile(r"[+-]?[0-9]+\Z")
_FLOAT_TEXT = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?\Z")
MAX_NUMBER_TEXT = 40  # longer number strings are not a number anyone meant


def _number_text(value: str, pattern: re.Pattern[str]) -> str | None:
    """The stripped text when it is a plain ASCII number: no digit separators ("1_000"), no other
    scripts' digits ("９"), no inf / nan, bounded length."""
    text = value.strip()
    return text if len(text) <= MAX_NUMBER_TEXT and pattern.match(text) else None


def parse_int(value: Any, field: str) -> int:
    """An int from an int, an integral finite float or a plain decimal string ("9"); never a bool."""
    if isinstance(value, bool):
        raise InvalidRequest(field, "must be an integer, got a boolean")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    if isinstance(value, str) and (text := _number_text(value, _INT_TEXT)) is not None:
        return int(text)
    raise InvalidRequest(field, f"must be an integer, got {echo(value)}")


def parse_float(value: Any, field: str) -> float:
    """A finite float from a number or a plain decimal string ("2.5", "1e-3"); never a bool."""
    if isinstance(value, bool):
        raise InvalidRequest(field, "must be a number, got a boolean")
    number: float | None = None
    if isinstance(value, (int, float)):
        try:
            number = float(value)
        except OverflowError:  # an int too large for a float
            number = None
    elif isinstance(value, str) and (text := _number_text(value, _FLOAT_TEXT)) is not None:
        number = float(text)
    if number is None or not math.isfinite(number):
        raise InvalidRequest(field, f"must be a finite number, got {echo(value)}")
    return number


def parse_resolution(value: Any, field: str = "resolution") -> tuple[int, int]:
    """(width, height) from "WxH" (any case, spaces allowed) or [W, H]; sides multiples of 16 in
    [16, 4096]."""
    width, height = split_resolution(value, field)
    for side in (width, height):
        if side % RESOLUTION_MULTIPLE or not RESOLUTION_MULTIPLE <= side <= MAX_SIDE_PIXELS:
            raise InvalidRequest(
                field, f"width and height must be multiples of {RESOLUTION_MULTIPLE} between "
                f"{RESOLUTION_MULTIPLE} and {MAX_SIDE_PIXELS}, got {width}x{height}")
    return width, height


def split_resolution(value: Any, field: str = "resolution") -> tuple[int, int]:
    """(width, height) integers from "WxH" or [W, H], before any size rule."""
    if isinstance(value, str) and len(value) <= MAX_NUMBER_TEXT:
        parts: list[Any] = value.lower().replace(" ", "").split("x")
    elif isinstance(value, (list, tuple)):
        parts = list(value)
    else:
        parts = []
    try:
        if len(parts) != 2:
            raise InvalidRequest(field, "")
        width, height = (parse_int(part, field) for part in parts)
    except InvalidRequest:
        raise InvalidRequest(field, f"must be 'WIDTHxHEIGHT' like '832x480', got {echo(value)}") from None
    return width, height


def parse_multipliers(value: Any, field: str = "lora_multipliers") -> list[str]:
    """Wan2GP spellings: a list of numbers or strings ("1.0", "0.2;0", "1,0.8;0"), or one string of
    entries separated by spaces or new lines (lines starting with # are comments)."""
    if isinstance(value, str):
        lines = [line for line in value.splitlines() if not line.strip().startswith("#")]
        value = " ".join(lines).split()
    if not isinstance(value, list) or not all(
        isinstance(item, (str, int, float)) and not isinstance(item, bool) for item in value
    ):
        raise InvalidRequest(field, "must be a list of multiplier strings like \"1.0\" or \"0.2;0\"")
    return [str(item).strip() for item in value]


def parse_texts(value: Any, field: str) -> list[str]:
    """A list of strings; a single string is a list of one."""
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise InvalidRequest(field, "must be a list of strings")
    return list(value)


def typed(name: str, value: Any, label: str | None = None) -> Any:
    """`value` as schema field `name` (kind, bounds, choices); errors name `label` (default: name)."""
    return _typed(FIELDS[name], value, label or name)


def _typed(spec: Field, value: Any, label: str) -> Any:
    """`value` as the kind of `spec`, within its bounds; errors are labelled with the name used."""
    kind = spec.kind
    if kind == INT:
        typed: Any = parse_int(value, label)
    elif kind == FLOAT:
        typed = parse_float(value, label)
    elif kind in (TEXT, PATH):
        if not isinstance(value, str):
            raise InvalidRequest(label, f"must be a string, got {type(value).__name__}")
        longest = PATH_CHARS if kind == PATH else spec.max_chars
        if longest is not None and len(value) > longest:
            raise InvalidRequest(label, f"has {len(value)} characters, more than {longest}: {echo(value)}")
        typed = value
    elif kind in (NAMES, PATHS):
        typed = parse_texts(value, label)
        for index, item in enumerate(typed):
            if len(item) > PATH_CHARS:
                raise InvalidRequest(f"{label}[{index}]", f"has {len(item)} characters, more than {PATH_CHARS}: "
                                                          f"{echo(item)}")
    elif kind == MULTIPLIERS:
        typed = parse_multipliers(value, label)
    elif kind == RESOLUTION:
        typed = split_resolution(value, label)
    else:
        typed = value
    if kind in (INT, FLOAT):
        if spec.minimum is not None and typed < spec.minimum:
            raise InvalidRequest(label, f"must be >= {spec.minimum}, got {typed}")
        if spec.maximum is not None and typed > spec.maximum:
            raise InvalidRequest(label, f"must be <= {spec.maximum}, got {typed}")
    if spec.choices and typed not in spec.choices:
        known = ", ".join(choice or '""' for choice in spec.choices)
        raise InvalidRequest(label, f"must be one of {known}, got {echo(typed)}")
    return typed


def is_absent(value: Any) -> bool:
    """None and blank strings count as "not given" (backends send both for an unset field)."""
    return value is None or (isinstance(value, str) and value.strip() == "")


def label(name: str, canonical: str) -> str:
    """How errors name a value: the key the row used, with the field it stands for when different."""
    return name if name == canonical else f"{name} ({canonical})"


@dataclass
class Reading:
    """A row read against the schema: typed values by field name, the key each came from, and every
    key that was read (so the caller can report the rest as ignored)."""

    values: dict[str, Any] = field(default_factory=dict)
    keys: dict[str, str] = field(default_factory=dict)
    used: set[str] = field(default_factory=set)

    def label(self, name: str) -> str:
        return label(self.keys.get(name, name), name)


def read(params: Mapping[str, Any], form: str = GENERATE) -> Reading:
    """Typed values of the fields of `form` that `params` gives, by any of their names (see the module
    docstring for the rules on conflicts and errors). Absent fields are left out."""
    reading = Reading()
    for spec in fields_of(form):
        found: list[tuple[str, Any]] = []
        for name in spec.names:
            if name in params:
                reading.used.add(name)
                if not is_absent(params[name]):
                    found.append((name, _typed(spec, params[name], label(name, spec.name))))
        if not found:
            continue
        first_name, first = found[0]
        for other_name, other in found[1:]:
            if other != first:
                raise InvalidRequest(
                    label(first_name, spec.name),
                    f"conflicts with {other_name}, another name of {spec.name}: {echo(first)} != {echo(other)}",
                )
        reading.values[spec.name], reading.keys[spec.name] = first, first_name
    return reading


# ---- defaults -----------------------------------------------------------------------------------------

def model_default(spec: Any, name: str) -> tuple[Any, str] | None:
    """(typed value, source) of field `name` from model `spec`'s preset, else its definition; None when
    neither gives it. Also for the request fields a Wan2GP definition may set (resolution,
    video_length, negative_prompt), which Wan2GP applies to whatever a row leaves out."""
    for source, layer in ((PRESET, spec.preset_defaults), (DEFINITION, spec.defaults)):
        if name in layer:
            return _from_layer(spec, name, source, layer)
    return None


def _from_layer(spec: Any, name: str, source: str, layer: Mapping[str, Any]) -> tuple[Any, str]:
    """A layer's value of `name`, checked like a request's and labelled with where it came from."""
    return _typed(FIELDS[name], layer[name], f"{name} (from the {source} of {spec.preset or spec.key})"), source


def resolve(spec: Any, given: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """Values of the sampling fields for model `spec` (a registry ModelSpec): the request's (`given`,
    None = not given), else the preset's, the definition's, the family's. Returns (values, sources).
    Definition values are checked like request values, naming the definition."""
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for name in SAMPLING_FIELDS:
        if name in ("lora_names", "lora_multipliers"):
            continue
        if given.get(name) is not None:
            values[name], sources[name] = _typed(FIELDS[name], given[name], name), REQUEST
        else:
            values[name], sources[name] = model_default(spec, name) or _from_layer(
                spec, name, FAMILY, FAMILY_DEFAULTS[spec.family])
    values["sample_solver"] = solver_name(values["sample_solver"])
    if values["guidance_phases"] < 3 and values["model_switch_phase"] != 1:
        # Wan2GP reads the switch phase only with three phases; below that the experts switch after phase 1.
        values["model_switch_phase"] = 1
        sources["model_switch_phase"] += " (read as 1 below 3 guidance phases, as Wan2GP does)"

    if given.get("lora_names") is not None:
        values["lora_names"] = _typed(FIELDS["lora_names"], given["lora_names"], "lora_names")
        sources["lora_names"] = REQUEST
        model_multipliers: list[str] = []
    else:
        values["lora_names"], sources["lora_names"] = list(spec.loras), DEFINITION if spec.loras else FAMILY
        model_multipliers = list(spec.lora_multipliers)
    if given.get("lora_multipliers") is not None:
        values["lora_multipliers"] = parse_multipliers(given["lora_multipliers"])
        sources["lora_multipliers"] = REQUEST
    else:
        values["lora_multipliers"] = model_multipliers
        sources["lora_multipliers"] = DEFINITION if model_multipliers else FAMILY
    return values, sources


# ---- checking a request -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Checked:
    """A request that passed `validate`: its model spec, the sampling values and their sources, the
    per-step plan, the LoRA files and their per-step multipliers."""

    spec: Any
    values: dict[str, Any]
    sources: dict[str, str]
    plan: list[StepPlan]
    lora_files: list[Path]
    lora_schedule: list[list[float]]


def step_plan(values: Mapping[str, Any], dual_expert: bool) -> list[StepPlan]:
    """The per-step plan of resolved sampling values (the sampler's timesteps, split into phases)."""
    steps = timesteps(values["sample_solver"], values["num_inference_steps"], values["flow_shift"])
    return plan_steps(steps.tolist(), PhaseSettings.from_values(values), dual_expert)


def lora_finder(registry: Any, models_dir: str | Path, download_missing: bool = False) -> Callable[[str], Path]:
    """The file each LoRA name means in `<models_dir>/loras` (wan_engine.loras, with the registry's
    alias table); with download_missing, where a missing one that has a source will be downloaded to."""
    loras_dir = Path(models_dir) / LORAS_FOLDER

    def find(name: str) -> Path:
        try:
            return resolve_lora_name(name, loras_dir, registry.lora_aliases)
        except InvalidRequest:
            file = lora_file(name, loras_dir, registry.lora_aliases)
            if not download_missing or file.source is None:
                raise
            return Path(models_dir) / file.name

    return find


def validate(registry: Any, request: Any, models_dir: str | Path, limits: Limits | None = None,
             download_missing: bool = False) -> Checked:
    """Check `request` (a GenerationRequest, or a mapping of its fields) as a generation would use it:
    model, sampling values, geometry, LoRA names (lora_finder) and multipliers, and with `limits`
    the prompt length and the width x height x frames budget. Reads no weights and no LoRA file;
    raises UnknownModel or InvalidRequest naming the field."""
    given = request if isinstance(request, Mapping) else vars(request)
    spec = registry.get(given["model"])
    values, sources = resolve(spec, given)
    plan = step_plan(values, spec.is_dual_expert)
    find_lora = lora_finder(registry, models_dir, download_missing)
    lora_files = [find_lora(name) for name in values["lora_names"]]
    schedule = lora_multiplier_schedule(values["lora_multipliers"], len(lora_files), plan,
                                        values["guidance_phases"], values["model_switch_phase"])
    if all(given.get(name) is not None for name in ("width", "height", "video_length")):
        check_geometry(int(given["width"]), int(given["height"]), int(given["video_length"]), limits)
    if limits is not None:
        for name in ("prompt", "negative_prompt"):
            check_prompt(given.get(name), name, limits)
    return Checked(spec, values, sources, plan, lora_files, schedule)


def check_geometry(width: int, height: int, video_length: int, limits: Limits | None = None,
                   field: str = "video_length") -> None:
    """Wan needs sizes that patchify exactly (multiples of 16 pixels) and 4n+1 frames (the VAE
    compresses 4 frames per latent after the first); width x height x frames must fit the budget."""
    if width <= 0 or height <= 0 or width % RESOLUTION_MULTIPLE or height % RESOLUTION_MULTIPLE:
        raise InvalidRequest("resolution", f"{width}x{height}: width and height must be positive multiples of 16")
    if video_length < 1 or (video_length - 1) % 4:
        raise InvalidRequest(field, f"{video_length} frames: must be 4n+1 (1, 5, ..., 81)")
    if limits is not None:
        check_budget(width, height, video_length, limits, field)


def check_budget(width: int, height: int, frames: int, limits: Limits = DEFAULT_LIMITS,
                 field: str = "video_length") -> None:
    """width x height x frames within limits.max_pixel_frames (of a generation, or of a guide)."""
    if width * height * frames > limits.max_pixel_frames:
        raise InvalidRequest(
            field, f"{width}x{height} x {frames} frames = {width * height * frames} pixels is over the budget of "
            f"{limits.max_pixel_frames} (max_pixel_frames): use a smaller resolution or fewer frames")


def check_prompt(prompt: Any, field: str = "prompt", limits: Limits = DEFAULT_LIMITS) -> None:
    if prompt is None:
        return
    if not isinstance(prompt, str):
        raise InvalidRequest(field, f"must be a string, got {type(prompt).__name__}")
    if len(prompt) > limits.max_prompt_chars:
        raise InvalidRequest(field, f"has {len(prompt)} characters, over the limit of {limits.max_prompt_chars} "
                                    "(max_prompt_chars)")


def _plain(number: Any) -> str:
    return str(int(number)) if float(number).is_integer() else f"{number:g}"


def markdown_table() -> str:
    """The schema as a Markdown table (field, kind, bounds, other names, default, forms): the table in
    docs/params.md, written by `python -m wan_engine.schema`."""
    lines = ["| field | kind | bounds | other names | default | forms | meaning |", "|---|---|---|---|---|---|---|"]
    for spec in FIELDS.values():
        bounds = "" if spec.minimum is None else f"{_plain(spec.minimum)} .. {_plain(spec.maximum)}"
        if spec.choices:
            bounds = ", ".join(f"`{choice!r}`" for choice in spec.choices)
        if spec.max_chars or spec.kind == PATH:
            bounds = f"at most {spec.max_chars or PATH_CHARS} characters"
        if spec.kind in (NAMES, PATHS):
            bounds = f"each at most {PATH_CHARS} characters"
        aliases = ", ".join(f"`{alias}` ({who})" for alias, who in spec.aliases.items())
        default = spec.default if spec.default == FROM_MODEL or spec.default is None else f"`{spec.default!r}`"
        forms = ", ".join(sorted(spec.forms))
        lines.append(f"| `{spec.name}` | {spec.kind} | {bounds} | {aliases} | {default or ''} | {forms} | {spec.doc} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(markdown_table(), end="")
