"""The resident engine: keeps one model loaded across requests and runs generations on it.

    engine = Engine(models_dir, device="cuda", dtype=torch.bfloat16, offload="auto")
    engine.load("vace_14B_cocktail_2_2")      # no-op when loaded; switching frees the old model
    result = engine.generate(request, on_progress=cb, should_cancel=fn)

A request is validated completely (parameters, geometry, control inputs, LoRA names and
multipliers) before anything is loaded or computed, so a bad request neither switches the model nor
wastes device time. Out-of-memory during a generation frees the device caches and retries once
under the memory-saving policy (experts take turns on the device); a second failure raises
OutOfMemory. The model stays loaded either way, so the next request runs normally.

A failure of the device itself during a load or a generation (a CUDA, cuBLAS, cuDNN or NCCL error;
wan_engine/device_faults.py) is raised as DeviceFault with the torch error chained. A sticky one (an
illegal memory access, a device-side assert, ...) leaves the engine unusable: every later load or
generation raises DeviceFault at once, since only a new process can use the device again.
"""
from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from torch import nn

from wan_engine import pipeline
from wan_engine.device_faults import as_device_fault
from wan_engine.errors import DeviceFault, InvalidRequest, OutOfMemory
from wan_engine.lora import LoraWeights, check_loras_fit, load_lora, lora_multiplier_schedule, resolve_lora
from wan_engine.memory import (
    OFFLOAD_POLICIES,
    Experts,
    HostResident,
    experts_must_take_turns,
    release_cached_memory,
    tensor_bytes,
)
from wan_engine.nn.dit import WanDiT
from wan_engine.nn.t5 import UMT5Encoder
from wan_engine.nn.vae import WanVAE
from wan_engine.phases import PhaseSettings, StepPlan, plan_steps
from wan_engine.registry import DEFAULT_DEFINITIONS_DIR, ModelFiles, ModelRegistry, ModelSpec, resolve_parameters
from wan_engine.request import GenerationRequest, GenerationResult
from wan_engine.sampling import FlowSampler, make_sampler
from wan_engine.tokenizer import T5Tokenizer
from wan_engine.weights import load_model

LORAS_FOLDER = "loras"
LORA_CACHE_SIZE = 8  # parsed LoRA files kept between tasks (travel segments reuse theirs)
ProgressCallback = Callable[[dict[str, Any]], None]


@dataclass
class LoadedModel:
    """A model definition's networks, built from its files."""

    spec: ModelSpec
    files: ModelFiles
    networks: pipeline.Networks

    @property
    def text_encoder_key(self) -> tuple[Path, Path]:
        return (self.files.text_encoder, self.files.tokenizer)


@dataclass
class _SharedNetworks:
    """The text encoders and VAEs of the models the engine holds, by the files they came from
    (weights only: holding these does not keep any DiT alive)."""

    text_encoders: dict[tuple[Path, Path], pipeline.TextEncoder]
    vaes: dict[Path, nn.Module]

    @classmethod
    def of(cls, models: Sequence[LoadedModel]) -> _SharedNetworks:
        return cls(
            {m.text_encoder_key: m.networks.text_encoder for m in models},
            {m.files.vae: m.networks.vae for m in models},
        )


class Engine:
    """One resident model at a time on one device (see the module docstring).

    offload: "auto" lets the two Wan 2.2 experts take turns on the device when both do not fit in
    free device memory, "experts" always makes them take turns, "none" never. The text encoder
    always lives in host memory between prompts.

    keep_previous_in_ram: when switching models, keep the previous model's experts in host memory,
    so that switching back costs a host-to-device copy instead of a disk read.

    oom_injections (attribute, for tests of the recovery path): the number of upcoming generation
    attempts that will fail with torch.OutOfMemoryError at their first denoising step.

    device_fault_injections (attribute, for tests of the device-fault path): errors, e.g.
    torch.AcceleratorError("CUDA error: ..."), that the upcoming generation attempts raise at their
    first denoising step, one each, in order (after any pending oom_injections); a None entry lets
    its attempt run normally.

    device_fault (attribute): the sticky DeviceFault that made the engine unusable, else None.
    """

    def __init__(
        self,
        models_dir: str | Path,
        device: str | torch.device = "cuda",
        dtype: torch.dtype = torch.bfloat16,
        offload: str = "auto",
        keep_previous_in_ram: bool = False,
        *,
        vae_dtype: torch.dtype = torch.float32,
        defaults_dir: str | Path = DEFAULT_DEFINITIONS_DIR,
    ):
        if offload not in OFFLOAD_POLICIES:
            raise ValueError(f"offload must be one of {', '.join(OFFLOAD_POLICIES)}, got {offload!r}")
        self.models_dir = Path(models_dir)
        self.registry = ModelRegistry(self.models_dir, defaults_dir)
        self.device = torch.device(device)
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.dtype = dtype
        self.vae_dtype = vae_dtype
        self.offload = offload
        self.keep_previous_in_ram = keep_previous_in_ram
        self.oom_injections = 0
        self.device_fault_injections: list[BaseException | None] = []
        self.device_fault: DeviceFault | None = None
        self._loaded: LoadedModel | None = None
        self._previous: LoadedModel | None = None
        self._loras: OrderedDict[tuple[Path, float], LoraWeights] = OrderedDict()

    # ---- models ---------------------------------------------------------------------------------

    @property
    def loaded_model(self) -> str | None:
        """The definition key of the resident model (a preset resolves to its definition)."""
        return None if self._loaded is None else self._loaded.spec.key

    def load(self, key: str) -> bool:
        """Make `key` (a definition or preset) the resident model; returns False when it already was.

        UnknownModel and WeightsMissing are raised before the current model is touched. The old
        model's experts leave the device before the new ones arrive (parked in host memory with
        keep_previous_in_ram, else freed). If building the new model fails, its partial networks are
        dropped and no model is resident; a failure of the device raises DeviceFault.
        """
        spec = self.registry.get(key)
        self._raise_if_unusable()
        if self._loaded is not None and self._loaded.spec.key == spec.key:
            return False
        files = self.registry.files_for(spec)
        with self._device_failures_as_faults():
            self._switch_to(spec, files)
        return True

    def _switch_to(self, spec: ModelSpec, files: ModelFiles) -> None:
        """Free or park the resident model, then make `spec` resident (from host memory or its files)."""
        held = [m for m in (self._loaded, self._previous) if m is not None]
        shared = _SharedNetworks.of(held)
        parked = self._previous if self._previous is not None and self._previous.spec.key == spec.key else None
        outgoing, self._loaded, self._previous = self._loaded, None, None
        if outgoing is not None and self.keep_previous_in_ram:
            outgoing.networks.experts.to_host()
            self._previous = outgoing
        del held, outgoing  # a model neither loaded nor parked is freed here, before the new one loads
        release_cached_memory(self.device)
        try:
            if parked is not None:
                parked.networks.experts.to_device()
                self._loaded = parked
            else:
                self._loaded = self._build(spec, files, shared)
        finally:
            release_cached_memory(self.device)

    def device_bytes(self) -> int:
        """Bytes of the parameters and buffers the engine holds on its device (all models)."""
        held = [m for m in (self._loaded, self._previous) if m is not None]
        return tensor_bytes([module for model in held for module in _modules(model)], self.device)

    def _build(self, spec: ModelSpec, files: ModelFiles, shared: _SharedNetworks) -> LoadedModel:
        """Load every network of `spec`, sharing the text encoder and VAE of another model held by
        the engine when they come from the same files."""
        text_key = (files.text_encoder, files.tokenizer)
        text_encoder = shared.text_encoders.get(text_key)
        if text_encoder is None:
            encoder = load_model(
                lambda: UMT5Encoder(**spec.text_encoder_config), [files.text_encoder], dtype=self.dtype
            )
            tokenizer = T5Tokenizer(files.tokenizer, spec.text_len)
            text_encoder = pipeline.TextEncoder(tokenizer, HostResident(encoder, self.device))
        vae = shared.vaes.get(files.vae)
        if vae is None:
            vae = load_model(lambda: WanVAE(**spec.vae_config), [files.vae], dtype=self.vae_dtype, device=self.device)

        take_turns = spec.is_dual_expert and experts_must_take_turns(
            self.offload, _checkpoint_bytes(files.experts.values(), self.dtype), self.device
        )
        load_device = "cpu" if take_turns else self.device
        networks = {
            name: load_model(lambda: WanDiT(**spec.dit_config), paths, dtype=self.dtype, device=load_device)
            for name, paths in files.experts.items()
        }
        experts = Experts(networks, self.device, take_turns=take_turns)
        networks = pipeline.Networks(
            text_encoder, vae, experts, vace=spec.is_vace, image_to_video=spec.is_image_to_video
        )
        return LoadedModel(spec, files, networks)

    # ---- generation -----------------------------------------------------------------------------

    def generate(
        self,
        request: GenerationRequest,
        on_progress: ProgressCallback | None = None,
        should_cancel: Callable[[], bool] | None = None,
    ) -> GenerationResult:
        """Validate `request`, load its model if needed, generate; see the module docstring.

        Raises InvalidRequest (naming the field), UnknownModel, WeightsMissing, GenerationCancelled
        (should_cancel() said yes at a step boundary), OutOfMemory or DeviceFault.
        """
        started = time.perf_counter()
        on_progress = on_progress or (lambda progress: None)
        should_cancel = should_cancel or (lambda: False)
        timer = pipeline.PhaseTimer(self.device)

        spec, values, sources, plan, lora_files, lora_schedule = self._validated(request)
        loras = [self._lora(path) for path in lora_files]

        def job() -> pipeline.Job:
            """A fresh job (samplers keep state, so each attempt gets its own)."""
            return pipeline.Job(
                prompt=request.prompt,
                negative_prompt=request.negative_prompt,
                width=request.width,
                height=request.height,
                num_frames=request.video_length,
                seed=request.seed,
                sampler=new_sampler(values),
                plan=plan,
                controls=_control_streams(request),
                references=list(request.image_refs),
                image_start=request.image_start,
                image_end=request.image_end,
                loras=loras,
                lora_schedule=lora_schedule,
            )

        with self._device_failures_as_faults():
            with timer.measure("load"):
                self.load(request.model)
            assert self._loaded is not None
            networks = self._loaded.networks
            # a LoRA that fits no layer fails here, before any denoising
            check_loras_fit(next(iter(networks.experts.networks.values())), loras)
            frames = self._run_with_oom_retry(job, networks, on_progress, should_cancel, timer)
        timings = {"load": 0.0, "vace_encode": 0.0, **timer.seconds, "total": time.perf_counter() - started}
        resolved = {
            **values,
            "seed": request.seed,
            "width": request.width,
            "height": request.height,
            "video_length": request.video_length,
            "sources": sources,
        }
        return GenerationResult(frames=frames, timings=timings, resolved=resolved, model=spec.key)

    def check(self, request: GenerationRequest) -> None:
        """Validate `request` as generate() does (model, parameters, geometry, control inputs, LoRA
        names and multipliers) without loading a model or reading a LoRA, so a caller that plans
        work (a travel orchestrator) can refuse a bad request before queueing it."""
        self._validated(request)

    def _validated(
        self, request: GenerationRequest
    ) -> tuple[ModelSpec, dict[str, Any], dict[str, str], list[StepPlan], list[Path], list[list[float]]]:
        """(spec, resolved values, their sources, step plan, LoRA files, LoRA schedule) of a valid
        request; raises UnknownModel or InvalidRequest otherwise."""
        spec = self.registry.get(request.model)
        values, sources = resolve_parameters(spec, request)
        _check_inputs(request, spec)
        settings = PhaseSettings.from_values(values)
        plan = plan_steps(new_sampler(values).timesteps, settings, spec.is_dual_expert)
        lora_files = [resolve_lora(name, self.models_dir / LORAS_FOLDER) for name in values["lora_names"]]
        lora_schedule = lora_multiplier_schedule(
            values["lora_multipliers"], len(lora_files), plan, settings.guidance_phases, settings.model_switch_phase
        )
        return spec, values, sources, plan, lora_files, lora_schedule

    def _run_with_oom_retry(
        self,
        job: Callable[[], pipeline.Job],
        networks: pipeline.Networks,
        on_progress: ProgressCallback,
        should_cancel: Callable[[], bool],
        timer: pipeline.PhaseTimer,
    ) -> np.ndarray:
        """Run the pipeline; on out-of-memory free the caches, switch to the memory-saving policy and
        retry once, then give up with OutOfMemory (the model stays loaded)."""
        for attempt in (1, 2):
            failure = None
            try:
                current = job()
                return pipeline.generate(
                    networks,
                    current,
                    self.device,
                    on_step=_progress_reporter(on_progress, len(current.plan)),
                    should_cancel=self._with_injected_failures(should_cancel),
                    timer=timer,
                )
            except torch.OutOfMemoryError as error:
                failure = str(error).splitlines()[0] if str(error) else "out of memory"
            # Outside the except block: the traceback (and the activations it pins) is gone.
            release_cached_memory(self.device)
            if attempt == 2:
                policy = "with the experts taking turns, " if networks.experts.taking_turns else ""
                raise OutOfMemory(
                    f"{self.device} ran out of memory twice ({failure}), the second time after freeing its caches "
                    f"{policy}with the model still loaded; try a smaller resolution or fewer frames"
                )
            networks.experts.take_turns()
        raise AssertionError("unreachable")

    def _with_injected_failures(self, should_cancel: Callable[[], bool]) -> Callable[[], bool]:
        """should_cancel, preceded once by a simulated failure while one is pending: an out-of-memory
        (oom_injections > 0), else the next of device_fault_injections."""
        pending = self.oom_injections > 0 or bool(self.device_fault_injections)

        def check() -> bool:
            nonlocal pending
            if pending:
                pending = False
                if self.oom_injections > 0:
                    self.oom_injections -= 1
                    raise torch.OutOfMemoryError("injected out-of-memory (Engine.oom_injections)")
                fault = self.device_fault_injections.pop(0)
                if fault is not None:
                    raise fault
            return should_cancel()

        return check

    def _raise_if_unusable(self) -> None:
        if self.device_fault is not None:
            raise DeviceFault(f"the engine is unusable since an earlier fault: {self.device_fault}", sticky=True)

    @contextmanager
    def _device_failures_as_faults(self) -> Iterator[None]:
        """Re-raise a failure of the device as DeviceFault (the torch error chained); a sticky one makes
        the engine unusable."""
        try:
            yield
        except RuntimeError as error:
            fault = as_device_fault(error, self.device)
            if fault is None:
                raise
            if fault.sticky:
                self.device_fault = fault
            raise fault from error

    def _lora(self, path: Path) -> LoraWeights:
        """A parsed LoRA file, cached by path and modification time."""
        key = (path, path.stat().st_mtime)
        if key not in self._loras:
            self._loras[key] = load_lora(path)
            while len(self._loras) > LORA_CACHE_SIZE:
                self._loras.popitem(last=False)
        self._loras.move_to_end(key)
        return self._loras[key]


def new_sampler(values: dict[str, Any]) -> FlowSampler:
    """A fresh sampler for resolved parameters."""
    return make_sampler(values["sample_solver"], values["num_inference_steps"], values["flow_shift"])


def _progress_reporter(on_progress: ProgressCallback, steps: int) -> pipeline.StepCallback:
    def report(step: StepPlan) -> None:
        done = step.step + 1
        on_progress(
            {
                "phase": "denoise",
                "step": done,
                "steps": steps,
                "expert": step.expert,
                "guidance_phase": step.phase,
                "percent": round(100.0 * done / steps, 1),
            }
        )

    return report


def _control_streams(request: GenerationRequest) -> list[pipeline.ControlStream]:
    streams = []
    if request.video_guide is not None or request.video_mask is not None:
        streams.append(pipeline.ControlStream(request.video_guide, request.video_mask, request.control_net_weight))
    if request.video_guide2 is not None or request.video_mask2 is not None:
        streams.append(pipeline.ControlStream(request.video_guide2, request.video_mask2, request.control_net_weight2))
    return streams


def _check_inputs(request: GenerationRequest, spec: ModelSpec) -> None:
    """The control inputs fit the model and the requested geometry (InvalidRequest names the field)."""
    if not isinstance(request.prompt, str) or not isinstance(request.negative_prompt, str):
        raise InvalidRequest("prompt", "prompt and negative_prompt must be strings")
    if not 0 <= request.seed < 2**63:
        raise InvalidRequest("seed", f"must be in [0, 2^63), got {request.seed}")
    size = (request.height, request.width)
    controls = {
        "video_guide": request.video_guide,
        "video_mask": request.video_mask,
        "video_guide2": request.video_guide2,
        "video_mask2": request.video_mask2,
    }
    given = [name for name, value in controls.items() if value is not None]
    if request.image_refs:
        given.append("image_refs")
    if given and not spec.is_vace:
        raise InvalidRequest(given[0], f"model {spec.key!r} has no VACE blocks to take control inputs")
    for name, value in controls.items():
        if value is None:
            continue
        channels = (3,) if "guide" in name else ()
        _check_array(name, value, (request.video_length, *size, *channels))
    for name in ("control_net_weight", "control_net_weight2"):
        weight = getattr(request, name)
        if not isinstance(weight, (int, float)) or not np.isfinite(weight):
            raise InvalidRequest(name, f"must be a finite number, got {weight!r}")
    for index, image in enumerate(request.image_refs):
        if not _is_rgb_image(image):
            raise InvalidRequest(f"image_refs[{index}]", "must be a uint8 [H, W, 3] image")
    _check_frame_images(request, spec)


def _is_rgb_image(value: Any) -> bool:
    return isinstance(value, np.ndarray) and value.dtype == np.uint8 and value.ndim == 3 and value.shape[2] == 3


def _check_frame_images(request: GenerationRequest, spec: ModelSpec) -> None:
    """image_start / image_end: only for an image-to-video model, which needs at least one, each a
    uint8 image of exactly the requested size."""
    images = {"image_start": request.image_start, "image_end": request.image_end}
    given = [name for name, image in images.items() if image is not None]
    if given and not spec.is_image_to_video:
        raise InvalidRequest(
            given[0], f"model {spec.key!r} is not an image-to-video model (use an i2v model, e.g. i2v_2_2)"
        )
    if spec.is_image_to_video and not given:
        raise InvalidRequest("image_start", f"model {spec.key!r} is image-to-video: give image_start and/or image_end")
    for name in given:
        image = images[name]
        if not _is_rgb_image(image):
            raise InvalidRequest(name, "must be a uint8 [H, W, 3] image")
        if image.shape[:2] != (request.height, request.width):
            got, wanted = f"{image.shape[1]}x{image.shape[0]}", f"{request.width}x{request.height}"
            raise InvalidRequest(name, f"is {got}, the requested resolution is {wanted}")


def _check_array(name: str, value: Any, shape: tuple[int, ...]) -> None:
    """uint8 array of `shape`, except that the first axis (frames) may be longer."""
    if not isinstance(value, np.ndarray) or value.dtype != np.uint8:
        raise InvalidRequest(name, "must be a uint8 array")
    layout = "[F, H, W, 3]" if len(shape) == 4 else "[F, H, W]"
    if value.ndim != len(shape):
        raise InvalidRequest(name, f"must be {layout}, got shape {list(value.shape)}")
    if value.shape[0] < shape[0]:
        raise InvalidRequest(name, f"has {value.shape[0]} frames, fewer than video_length {shape[0]}")
    if value.shape[1:] != shape[1:]:
        height, width = shape[1:3]
        raise InvalidRequest(
            name, f"frames are {value.shape[2]}x{value.shape[1]}, the requested resolution is {width}x{height}"
        )


def _checkpoint_bytes(file_groups: Iterable[Sequence[Path]], dtype: torch.dtype) -> int:
    """Bytes the tensors of these safetensors files take in `dtype` (read from the headers only)."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    total = 0
    for paths in file_groups:
        for path in paths:
            with safe_open(str(path), framework="pt") as reader:
                for key in reader.keys():
                    total += int(np.prod(reader.get_slice(key).get_shape(), dtype=np.int64)) * itemsize
    return total


def _modules(model: LoadedModel) -> list[nn.Module]:
    networks = model.networks
    return [networks.text_encoder.encoder.module, networks.vae, *networks.experts.networks.values()]
