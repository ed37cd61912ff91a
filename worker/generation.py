"""The generation glue that every generating task shares (generate_video and its aliases,
wan_2_2_t2i, inpaint_frames, travel segments, the Python API in worker/api.py): reading a generation row in any of
its forms, resolving the model, checking the whole request, running the engine with progress and
cancellation, encoding the frames, and the result_data every generation reports (model, preset,
parameters with their source, seed, and the seconds of each phase from queue wait to video encoding).

Kept out of the handler modules so that no handler imports another's helpers.
"""
from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from wan_engine.errors import InvalidRequest, UnknownModel, echo
from wan_engine.loras import LORAS_FOLDER
from wan_engine.schema import FIELDS, RANDOM_SEED, Limits, Reading, model_default, validate
from worker.dialects import (
    compose_prompt,
    expand_lora_objects,
    flatten_generation_task,
    ignored_params,
    model_and_preset,
    sampling,
)
from worker.errors import ValidationError
from worker.handlers import HandlerResult, TaskContext
from worker.params import REQUIRED, ParamReader, parse_resolution, round_to_frame_count
from worker.paths import output_file
from worker.resources import WorkerResources
from worker.video import VideoWriter, iter_frames, load_image, read_image, save_png, thumbnail_path

DEFAULT_OUTPUT_NAME = "video.mp4"
DEFAULT_IMAGE_NAME = "image.png"

# The model each task type runs when the row names neither `model` nor `preset` (registry keys).
# The generation task types and the model each runs when its row names none: the headless worker's
# (banodoco/reigh-worker tasks/task_types.py TASK_TYPE_TO_MODEL), except generate_video, which takes a
# control video here and so defaults to the Wan 2.2 VACE model (the headless worker's default is t2v).
DEFAULT_MODELS = {
    "generate_video": "vace_14B_cocktail_2_2",
    "t2v": "t2v",
    "t2v_22": "t2v_2_2",
    "vace": "vace_14B_cocktail_2_2",
    "vace_21": "vace_14B",
    "vace_22": "vace_14B_cocktail_2_2",
    "i2v": "i2v",  # Wan 2.1 image-to-video 480p (the headless default, i2v_14B, is a preset of it)
    "i2v_22": "i2v_2_2",
}
IMAGE_TASK = "wan_2_2_t2i"  # one frame of a Wan 2.2 text-to-video model, written as PNG
# What the headless worker's VACE edits of videos (inpaint_frames, join_clips_segment) run by default.
HEADLESS_VACE_MODEL = "wan_2_2_vace_lightning_baseline_2_2_2"


# ---- params shared by every generation ------------------------------------------------------------

def read_seed(reader: ParamReader) -> tuple[int, str]:
    """(seed, source): -1 asks for a random seed, which is recorded so the video can be made again."""
    seed = reader.field("seed")
    if seed == RANDOM_SEED:
        return int(np.random.default_rng().integers(0, FIELDS["seed"].maximum + 1)), "random (task asked for -1)"
    return seed, reader.source("seed")


def _with_model_default(reader: ParamReader, spec: Any, name: str) -> tuple[Any, str]:
    """(value, source) of request field `name`: the row's, else the model's preset or definition's
    (Wan2GP definitions may set resolution, video_length and negative_prompt), else the schema's.
    A blank negative prompt the row sends is its own (none), as Wan2GP takes it."""
    if reader.given(name):
        return reader.field(name), reader.source(name)
    if name == "negative_prompt" and isinstance(reader.params.get(name), str):
        return "", "task (blank)"
    from_model = model_default(spec, name)
    return from_model if from_model is not None else (reader.field(name), reader.source(name))


def resolve_model(resources: WorkerResources, reader: ParamReader, default: str) -> Any:
    """The ModelSpec (wan_engine.registry) of what the row names (a preset wins over a model; the
    seed's `vace_version` must agree with `model_name`), checked against the model definitions
    without loading anything or importing torch. An unknown name fails with the key that named it.
    Give the engine `spec.preset or spec.key`, so preset defaults apply."""
    registry = resources.model_registry()
    model, preset = model_and_preset(reader, registry)
    key, name = (preset, "preset") if preset else (model or default, "model")
    try:
        return registry.get(key)
    except UnknownModel as error:
        raise ValidationError(reader.label(name), error.rule) from None


def check_request(resources: WorkerResources, limits: Limits, fields: Mapping[str, Any], reading: Reading,
                  prefix: str = "", row_fields: Mapping[str, str] | None = None) -> None:
    """Check a whole request (model, sampling fields, geometry, prompt, LoRA names against the loras
    folder, multiplier strings against the step plan) with wan_engine.schema.validate and the
    worker's limits, as the engine will, without loading anything; the error names the row's key.
    `row_fields` maps a request field to the row's field that set it (a travel job's
    segment_frames sets each segment's video_length)."""
    try:
        validate(resources.model_registry(), fields, resources.models_dir, limits, resources.download_missing)
    except InvalidRequest as error:
        field = (row_fields or {}).get(error.field, error.field)
        name = reading.label(field) if field in FIELDS else field
        raise ValidationError(prefix + name, error.rule) from None


def report_ignored(log: Any, ignored: Mapping[str, str]) -> dict[str, str]:
    """Log the keys of the row that were not honoured (they also go to result_data.ignored_params)."""
    if ignored:
        log.warning("params not honoured", ignored_params=dict(ignored))
    return dict(ignored)


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
    (GenerationCancelled: the row keeps no output). LoRAs named by URL must already be installed
    (install_lora_urls), as reading the row does before its check.
    """
    result = ctx.resources.generate(request, on_progress=_progress_with_eta(ctx, progress_fields or {}),
                                    should_cancel=ctx.cancelled)
    timings = dict(result.timings)
    phases = {"queue_wait": queue_wait_seconds(ctx), "model_load": timings.pop("load", 0.0)}
    phases.update((name, seconds) for name, seconds in timings.items() if name != "total")
    return Generation(frames=result.frames, result=result, phase_seconds=phases)


def encode_video(ctx: TaskContext, row: GenerationRow) -> tuple[dict[str, Any], Path]:
    """Run a checked generation row and write its mp4 (row.output) and thumbnail; returns its
    result_data, not yet published, and the thumbnail."""
    ctx.raise_if_cancelled()
    generation = run_generation(ctx, row.request)
    ctx.report_progress({"phase": "video_encode", "frames": len(generation.frames)})
    thumbnail, encode_seconds = write_video(generation.frames, row.output, row.fps)
    generation.phase_seconds["video_encode"] = encode_seconds
    result_data = generation_result_data(generation, preset=row.preset, worker_parameters=row.worker_parameters,
                                         fps=row.fps, output=row.output, thumbnail=thumbnail)
    return row.row_result_data(result_data), thumbnail


def render_video(ctx: TaskContext, row: GenerationRow, extra: Mapping[str, Any] | None = None) -> HandlerResult:
    """Run a checked generation row, write its mp4 and thumbnail, publish them; `extra` joins result_data."""
    result_data, thumbnail = encode_video(ctx, row)
    result_data.update(extra or {})
    return HandlerResult(output_location=publish_outputs(ctx, result_data, row.output, thumbnail), result_data=result_data)


def install_lora_urls(ctx: TaskContext, names: Sequence[str] | None) -> None:
    """LoRAs named by URL are fetched into the models' loras folder, where the engine finds them by name."""
    ctx.inputs.install_loras(list(names or []), Path(ctx.resources.models_dir) / LORAS_FOLDER)


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


def publish(ctx: TaskContext, files: Mapping[str, Path]) -> tuple[dict[str, str], dict[str, float]]:
    """Publish a task's files (worker.storage: uploaded with --storage-url, the progress saying so);
    returns their locations and, when they were uploaded, {"upload": seconds} for phase_seconds."""
    started = time.perf_counter()
    if ctx.storage.uploads:
        ctx.report_progress({"phase": "upload"})
    published = ctx.storage.publish(ctx.task.id, dict(files))
    return published, ({"upload": round(time.perf_counter() - started, 4)} if ctx.storage.uploads else {})


def publish_outputs(ctx: TaskContext, result_data: dict[str, Any], output: Path, thumbnail: Path | None = None) -> str:
    """Publish a generation's output and its thumbnail (an image is its own), put their locations in
    result_data and the upload's seconds in its phase_seconds; returns output_location."""
    published, upload = publish(ctx, {"output": output, **({"thumbnail": thumbnail} if thumbnail else {})})
    result_data.update(published)
    if thumbnail is None:
        result_data["thumbnail"] = published["output"]
    result_data["phase_seconds"].update(upload)
    return published["output"]


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


# ---- reading a generation row ------------------------------------------------------------------------------

@dataclass
class GenerationRow:
    """A generation row read and checked: the request, what the worker resolved itself (name ->
    (value, source)), the keys it did not honour, and the row's own key for each field it gave."""

    request: Any
    worker_parameters: dict[str, tuple[Any, str]]
    ignored: dict[str, str]
    fps: int
    preset: str | None
    output: Path
    given_as: dict[str, str]

    def row_result_data(self, result_data: dict[str, Any]) -> dict[str, Any]:
        """result_data with ignored_params, and each source of a value the row gave under another
        name (the seed's model_name, headless steps, ...) naming that key."""
        sources = result_data["parameter_sources"]
        for name, key in self.given_as.items():
            if key != name:
                sources[name] = f"{sources.get(name, 'task')} ({key})"
        result_data["ignored_params"] = self.ignored
        return result_data


def read_generation(params: Mapping[str, Any], *, resources: WorkerResources, limits: Limits, output_dir: Path,
                    log: Any, default_model: str, install_loras: Callable[[Sequence[str] | None], None],
                    one_frame: bool = False, controls: tuple[np.ndarray, np.ndarray] | None = None,
                    prompt_required: bool = True) -> GenerationRow:
    """Read a generation row in any of its forms (ours, the seed's GenerationTask, headless/Wan2GP
    names) and check it completely before any work; its output goes to `output_dir`.
    `install_loras(names)` puts LoRAs named by URL into the loras folder before the check.
    `controls` (guide uint8 [>= F, H, W, 3], mask uint8 [>= F, H, W]) is a guide the handler built,
    used in place of the row's video_guide / video_mask files (their first video_length frames).
    Without `prompt_required`, a row without a prompt generates from an empty one."""
    from wan_engine.request import GenerationRequest

    reader = ParamReader(expand_lora_objects(flatten_generation_task(params)))
    spec = resolve_model(resources, reader, default_model)
    (resolution, size_source), (asked_length, length_source), (negative_prompt, negative_source) = (
        _with_model_default(reader, spec, name) for name in ("resolution", "video_length", "negative_prompt"))
    width, height = parse_resolution(resolution, reader.label("resolution"))
    if one_frame:
        asked_length, length_source = 1, IMAGE_TASK
    video_length = round_to_frame_count(asked_length, reader.label("video_length"))
    seed, seed_source = read_seed(reader)
    fps = reader.field("fps")
    prompt = compose_prompt(reader.field("prompt", REQUIRED if prompt_required else ""), reader)
    overridden: dict[str, str] = {}
    fields = dict(model=spec.preset or spec.key, prompt=prompt, negative_prompt=negative_prompt,
                  width=width, height=height, video_length=video_length, seed=seed, **sampling(reader, overridden))
    install_loras(fields.get("lora_names"))
    check_request(resources, limits, fields, reader.schema)
    if one_frame and reader.given("video_length"):
        overridden[reader.schema.keys["video_length"]] = f"{IMAGE_TASK} makes one frame"
    guide, mask = (control[:video_length] for control in controls) if controls is not None else (
        _control_video(reader, "video_guide", video_length, width, height),
        _mask_video(reader, "video_mask", video_length, width, height))
    request = GenerationRequest(
        **fields,
        video_guide=guide,
        video_mask=mask,
        video_guide2=_control_video(reader, "video_guide2", video_length, width, height),
        video_mask2=_mask_video(reader, "video_mask2", video_length, width, height),
        control_net_weight=reader.field("control_net_weight"),
        control_net_weight2=reader.field("control_net_weight2"),
        image_refs=[_reference_image(path, f"image_refs[{i}]")
                    for i, path in enumerate(reader.input_files("image_refs", []))],
        image_start=_frame_image(reader, "image_start", width, height),
        image_end=_frame_image(reader, "image_end", width, height),
    )
    if video_length != asked_length:
        length_source += f" ({asked_length} rounded down to 4n+1)"
    worker_parameters = {
        "width": (width, size_source),
        "height": (height, size_source),
        "video_length": (video_length, length_source),
        "seed": (seed, seed_source),
        "fps": (fps, reader.source("fps")),
        "prompt": (prompt, reader.source("prompt")),
        "negative_prompt": (negative_prompt, negative_source),
    }
    suffix = ".png" if one_frame else ".mp4"
    name = reader.text("output_filename", DEFAULT_IMAGE_NAME if one_frame else DEFAULT_OUTPUT_NAME)
    if not name.endswith(suffix):
        raise ValidationError("output_filename", f"must end in {suffix}, got {echo(name)}")
    ignored = report_ignored(log, ignored_params(reader, overridden))
    return GenerationRow(request, worker_parameters, ignored, fps, spec.preset, output_file(output_dir, name),
                         dict(reader.schema.keys))


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
