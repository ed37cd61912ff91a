"""`generate_video` and its aliases (`t2v`, `t2v_22`, `vace`, `vace_21`, `vace_22`): one generation
through the resident engine, written as one mp4 with a first-frame thumbnail.

This module also holds the generation glue that travel segments share: reading the sampling
fields, resolving the model, running the engine with progress and cancellation, encoding the
frames, and the result_data every generation reports (model, preset, parameters with their source,
seed, and the seconds of each phase from queue wait to video encoding).
"""
from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from worker.errors import ValidationError
from worker.handlers import HandlerResult, TaskContext, register
from worker.params import (
    DEFAULT_FPS,
    DEFAULT_RESOLUTION,
    DEFAULT_SEED,
    MAX_FPS,
    MAX_SEED,
    MAX_VIDEO_FRAMES,
    RANDOM_SEED,
    ParamReader,
    parse_resolution,
    round_to_frame_count,
)
from worker.paths import output_file
from worker.video import VideoWriter, iter_frames, load_image, read_image, save_png, thumbnail_path

DEFAULT_VIDEO_LENGTH = 81
DEFAULT_OUTPUT_NAME = "video.mp4"

# The model each task type runs when the row names neither `model` nor `preset` (registry keys).
DEFAULT_MODELS = {
    "generate_video": "vace_14B_cocktail_2_2",
    "t2v": "t2v",
    "t2v_22": "t2v_2_2",
    "vace": "vace_14B",
    "vace_21": "vace_14B",
    "vace_22": "vace_14B_cocktail_2_2",
}


# ---- params shared by every generation ------------------------------------------------------------

def sampling_fields(params: Mapping[str, Any], name: Callable[[str], str] = lambda field: field) -> dict[str, Any]:
    """The optional sampling, guidance-phase and LoRA fields of a request, typed; absent ones are left
    out so the model definition's defaults apply. `name` maps a field to how the task spelled it."""
    reader = ParamReader(params)
    numbers = {"guidance_scale": (0.0, 100.0), "guidance2_scale": (0.0, 100.0), "guidance3_scale": (0.0, 100.0),
               "switch_threshold": (0.0, 1000.0), "switch_threshold2": (0.0, 1000.0), "flow_shift": (0.0, 100.0)}
    integers = {"num_inference_steps": (1, 1000), "guidance_phases": (1, 3), "model_switch_phase": (1, 2)}
    out: dict[str, Any] = {}
    try:
        for key, (low, high) in integers.items():
            if reader.has(key):
                out[key] = reader.integer(key, minimum=low, maximum=high)
        for key, (low, high) in numbers.items():
            if reader.has(key):
                out[key] = reader.number(key, minimum=low, maximum=high)
        if reader.has("sample_solver"):
            out["sample_solver"] = reader.text("sample_solver")
        if reader.has("precision"):  # bf16 or fp8: the engine checks the name
            out["precision"] = reader.text("precision")
        if reader.has("lora_names"):
            out["lora_names"] = reader.texts("lora_names")
        if reader.has("lora_multipliers"):
            out["lora_multipliers"] = _lora_multipliers(params["lora_multipliers"])
    except ValidationError as error:
        raise ValidationError(name(error.field), error.rule) from None
    # Without lora_names the multipliers re-weight the model definition's LoRAs: the engine checks those.
    if "lora_names" in out and len(out.get("lora_multipliers", [])) > len(out["lora_names"]):
        raise ValidationError(name("lora_multipliers"), "has more entries than lora_names")
    return out


def _lora_multipliers(value: Any) -> list[str]:
    """Wan2GP spellings: a list of numbers or strings ("1.0", "0.2;0", "1,0.8;0"), or one string of
    space-separated entries."""
    items = value.split() if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(item, (str, int, float)) and not isinstance(item, bool)
                                              for item in items):
        raise ValidationError("lora_multipliers", "must be a list of multiplier strings like \"1.0\" or \"0.2;0\"")
    return [str(item) for item in items]


def read_seed(reader: ParamReader, field: str = "seed") -> tuple[int, str]:
    """(seed, source): -1 asks for a random seed, which is recorded so the video can be made again."""
    seed = reader.integer(field, DEFAULT_SEED, minimum=RANDOM_SEED, maximum=MAX_SEED)
    if seed == RANDOM_SEED:
        return int(np.random.default_rng().integers(0, MAX_SEED + 1)), "random (task asked for -1)"
    return seed, "task" if reader.has(field) else "default"


def resolve_model(ctx: TaskContext, model: str | None, preset: str | None, *, default: str,
                  name: Callable[[str], str] = lambda field: field) -> Any:
    """The ModelSpec (wan_engine.registry) of what the task names (a preset wins over a model),
    checked against the model definitions without loading anything; an unknown name fails the task
    with the field that named it. Give the engine `spec.preset or spec.key`, so preset defaults apply."""
    from wan_engine.errors import UnknownModel

    key, field = (preset, "preset") if preset else (model or default, "model")
    try:
        return ctx.resources.model_registry().get(key)
    except UnknownModel as error:
        raise ValidationError(name(field), error.rule) from None


def check_parameters(ctx: TaskContext, spec: Any, fields: Mapping[str, Any],
                     name: Callable[[str], str] = lambda field: field) -> None:
    """Validate sampling fields, geometry and LoRAs (names against the loras folder, multiplier
    strings against the phase plan) for `spec` as the engine will, without loading anything, so a
    bad combination fails the task before any work; the error names the task's field."""
    from wan_engine.errors import InvalidRequest
    from wan_engine.request import GenerationRequest

    request = GenerationRequest(model=spec.preset or spec.key, prompt="", **fields)
    _install_lora_urls(ctx, request)
    try:
        ctx.resources.resident_engine().check(request)
    except InvalidRequest as error:
        raise ValidationError(name(error.field), error.rule) from None


# ---- running the engine -------------------------------------------------------------------------

@dataclass
class Generation:
    """What one engine run produced, and the phases the worker timed around it."""

    frames: np.ndarray  # uint8 [F, H, W, 3]
    result: Any  # wan_engine.request.GenerationResult
    phase_seconds: dict[str, float] = field(default_factory=dict)


def run_generation(ctx: TaskContext, request: Any, progress_fields: Mapping[str, Any] | None = None) -> Generation:
    """Run `request` on the worker's resident engine (which loads its model if another is resident).

    Every denoising step's progress goes to the row (throttled by ctx) with an ETA and
    `progress_fields` added; cancelling the row stops the engine at the next step
    (GenerationCancelled: the row keeps no output).
    """
    _install_lora_urls(ctx, request)
    result = ctx.resources.generate(request, on_progress=_progress_with_eta(ctx, progress_fields or {}),
                                    should_cancel=ctx.cancelled)
    timings = dict(result.timings)
    phases = {"queue_wait": queue_wait_seconds(ctx), "model_load": timings.pop("load", 0.0)}
    phases.update((name, seconds) for name, seconds in timings.items() if name != "total")
    return Generation(frames=result.frames, result=result, phase_seconds=phases)


def _install_lora_urls(ctx: TaskContext, request: Any) -> None:
    """LoRAs named by URL are fetched into the models' loras folder, where the engine finds them by name."""
    from wan_engine.engine import LORAS_FOLDER

    ctx.inputs.install_loras(request.lora_names or [], Path(ctx.resources.models_dir) / LORAS_FOLDER)


def _progress_with_eta(ctx: TaskContext, extra: Mapping[str, Any]) -> Callable[[dict[str, Any]], None]:
    """A progress callback adding eta_seconds: the mean time per step since the first step's report,
    times the steps left (the first step also carries text encoding, so it is not counted)."""
    first: list[float] = []

    def report(progress: dict[str, Any]) -> None:
        now = time.monotonic()
        step, steps = progress.get("step"), progress.get("steps")
        eta = None
        if isinstance(step, int) and isinstance(steps, int):
            if not first:
                first[:] = [now, step]
            elif step > first[1]:
                eta = round((now - first[0]) / (step - first[1]) * (steps - step), 1)
        ctx.report_progress({**progress, "eta_seconds": eta, **extra})

    return report


def queue_wait_seconds(ctx: TaskContext) -> float:
    """generation_started_at - created_at of the claimed row (both from the database clock)."""
    task = ctx.task
    if task.created_at is None or task.generation_started_at is None:
        return 0.0
    return max(0.0, (task.generation_started_at - task.created_at).total_seconds())


def write_video(frames: np.ndarray, path: Path, fps: int) -> tuple[Path, float]:
    """Encode frames uint8 [F, H, W, 3] as H.264 mp4 at `path` with a first-frame thumbnail beside it;
    returns (thumbnail, seconds spent)."""
    started = time.perf_counter()
    with VideoWriter(path, fps, frames.shape[2], frames.shape[1]) as writer:
        writer.write(frames)
    thumbnail = save_png(frames[0], thumbnail_path(path))
    return thumbnail, time.perf_counter() - started


def publish_outputs(ctx: TaskContext, result_data: dict[str, Any], output: Path, thumbnail: Path) -> str:
    """Publish the video and its thumbnail (worker.storage: uploaded with --storage-url), put their
    locations in result_data (and the upload's seconds in phase_seconds); returns output_location."""
    started = time.perf_counter()
    if ctx.storage.uploads:
        ctx.report_progress({"phase": "upload"})
    result_data.update(ctx.storage.publish(ctx.task.id, {"output": output, "thumbnail": thumbnail}))
    if ctx.storage.uploads:
        result_data["phase_seconds"]["upload"] = round(time.perf_counter() - started, 4)
    return result_data["output"]


def generation_result_data(generation: Generation, *, preset: str | None, worker_parameters: Mapping[str, tuple[Any, str]],
                           fps: int, output: Path, thumbnail: Path) -> dict[str, Any]:
    """result_data of a generation. `worker_parameters` maps name -> (value, source) for what the
    worker resolved itself (size, length, seed...); the engine reports the sampling ones."""
    resolved = dict(generation.result.resolved)
    sources = dict(resolved.pop("sources", {}))
    parameters = {**resolved, **{key: value for key, (value, _) in worker_parameters.items()}}
    sources.update({key: source for key, (_, source) in worker_parameters.items()})
    frames = generation.frames
    return {
        "model": generation.result.model,
        "preset": preset,
        "seed": parameters.get("seed"),
        "parameters": parameters,
        "parameter_sources": sources,
        "frames": int(frames.shape[0]),
        "width": int(frames.shape[2]),
        "height": int(frames.shape[1]),
        "fps": fps,
        "output": str(output),
        "thumbnail": str(thumbnail),
        "phase_seconds": {key: round(value, 4) for key, value in generation.phase_seconds.items()},
        "generation_seconds": round(generation.result.timings.get("total", 0.0), 4),
    }


# ---- generate_video ------------------------------------------------------------------------------

@register(*DEFAULT_MODELS)
def generate_video(ctx: TaskContext) -> HandlerResult:
    """Validate the row, run one generation, write the mp4 and its thumbnail to the task's folder."""
    from wan_engine.request import GenerationRequest

    params = ctx.task.params
    reader = ParamReader(params)
    spec = resolve_model(ctx, reader.text("model", None), reader.text("preset", None),
                         default=DEFAULT_MODELS[ctx.task.task_type])
    width, height = reader.resolution("resolution", parse_resolution(DEFAULT_RESOLUTION))
    asked_length = reader.integer("video_length", DEFAULT_VIDEO_LENGTH, minimum=1, maximum=MAX_VIDEO_FRAMES)
    video_length = round_to_frame_count(asked_length, "video_length")
    seed, seed_source = read_seed(reader)
    fps = reader.integer("fps", DEFAULT_FPS, minimum=1, maximum=MAX_FPS)
    name = reader.text("output_filename", DEFAULT_OUTPUT_NAME)
    if not name.endswith(".mp4"):
        raise ValidationError("output_filename", f"must end in .mp4, got {name!r}")
    output = output_file(ctx.output_dir, name)

    request = GenerationRequest(
        model=spec.preset or spec.key,
        prompt=reader.text("prompt"),
        negative_prompt=reader.text("negative_prompt", ""),
        width=width,
        height=height,
        video_length=video_length,
        seed=seed,
        video_guide=_control_video(reader, "video_guide", video_length, width, height),
        video_mask=_mask_video(reader, "video_mask", video_length, width, height),
        video_guide2=_control_video(reader, "video_guide2", video_length, width, height),
        video_mask2=_mask_video(reader, "video_mask2", video_length, width, height),
        control_net_weight=reader.number("control_net_weight", 1.0, minimum=0.0, maximum=10.0),
        control_net_weight2=reader.number("control_net_weight2", 1.0, minimum=0.0, maximum=10.0),
        image_refs=[_reference_image(path, f"image_refs[{i}]")
                    for i, path in enumerate(reader.input_files("image_refs", []))],
        image_start=_frame_image(reader, "image_start", width, height),
        image_end=_frame_image(reader, "image_end", width, height),
        **sampling_fields(params),
    )
    ctx.raise_if_cancelled()
    generation = run_generation(ctx, request)
    ctx.report_progress({"phase": "video_encode", "frames": len(generation.frames)})
    thumbnail, encode_seconds = write_video(generation.frames, output, fps)
    generation.phase_seconds["video_encode"] = encode_seconds

    length_source = "task" if reader.has("video_length") else "default"
    if video_length != asked_length:
        length_source += f" ({asked_length} rounded down to 4n+1)"
    worker_parameters = {
        "width": (width, "task" if reader.has("resolution") else "default"),
        "height": (height, "task" if reader.has("resolution") else "default"),
        "video_length": (video_length, length_source),
        "seed": (seed, seed_source),
        "fps": (fps, "task" if reader.has("fps") else "default"),
    }
    result_data = generation_result_data(generation, preset=spec.preset, worker_parameters=worker_parameters,
                                         fps=fps, output=output, thumbnail=thumbnail)
    return HandlerResult(output_location=publish_outputs(ctx, result_data, output, thumbnail), result_data=result_data)


def _control_video(reader: ParamReader, field: str, length: int, width: int, height: int) -> np.ndarray | None:
    """A control video uint8 [length, H, W, 3]: the first `length` frames of the file (only those are
    decoded), which must have the task's resolution and at least that many frames."""
    path = reader.input_file(field, None)
    if path is None:
        return None
    try:
        frames = list(itertools.islice(iter_frames(path), length))
    except (OSError, RuntimeError) as error:
        raise ValidationError(field, f"not a readable video: {path} ({error})") from None
    got_height, got_width = frames[0].shape[:2] if frames else (0, 0)
    if (got_width, got_height) != (width, height):
        raise ValidationError(field, f"is {got_width}x{got_height}; it must match resolution {width}x{height}")
    if len(frames) < length:
        raise ValidationError(field, f"has only {len(frames)} frames; video_length needs {length}")
    return np.stack(frames)


def _mask_video(reader: ParamReader, field: str, length: int, width: int, height: int) -> np.ndarray | None:
    """A mask video as uint8 [length, H, W]: 255 (generate) where the frame is bright, 0 (keep) where dark."""
    frames = _control_video(reader, field, length, width, height)
    if frames is None:
        return None
    return np.where(frames.mean(axis=-1) > 127.5, 255, 0).astype(np.uint8)


def _frame_image(reader: ParamReader, field: str, width: int, height: int) -> np.ndarray | None:
    """The first / last frame of an image-to-video generation, fitted to the resolution like every
    keyframe (video.load_image); the engine refuses it for a model that is not image-to-video."""
    path = reader.input_file(field, None)
    return None if path is None else load_image(path, width, height, field=field)


def _reference_image(path: Path, field: str) -> np.ndarray:
    """A reference image as uint8 [h, w, 3] at its own size (the engine fits it onto a white frame)."""
    return np.array(read_image(path, field), dtype=np.uint8)
