"""The resident engine: keeps one model loaded across requests and runs generations on it.

    engine = Engine(models_dir, device="cuda", dtype=torch.bfloat16, offload="auto")
    engine.load("vace_14B_cocktail_2_2")      # no-op when loaded; switching frees the old model
    result = engine.generate(request, on_progress=cb, should_cancel=fn)

A request is validated completely (parameters, geometry, control inputs, LoRA names and
multipliers) before anything is loaded or computed, so a bad request neither switches the model nor
wastes device time. Out-of-memory during a generation frees the device caches and retries once
under the memory-saving policy (experts take turns on the device); a second failure raises
OutOfMemory. The model stays loaded either way, so the next request runs normally.

Speed and memory (docs/engine.md, "GPU"): `precision` "bf16" (exact, the default) or "fp8"
(wan_engine.fp8: fp8 block linears; a request's own `precision` reloads the model in that mode);
`compile` (default: on CUDA) compiles each DiT block with torch.compile, its warm-up charged to the
`compile` phase and its artifacts kept under `compile_cache_dir` so a restart reuses them;
`gpu_memory_gb` caps what the engine plans to use of the device (default: the whole card) and
streams DiT blocks from host memory when a network does not fit (wan_engine.swap).

A failure of the device itself during a load or a generation (a CUDA, cuBLAS, cuDNN or NCCL error;
wan_engine/device_faults.py) is raised as DeviceFault with the torch error chained. A sticky one (an
illegal memory access, a device-side assert, ...) leaves the engine unusable: every later load or
generation raises DeviceFault at once, since only a new process can use the device again.
"""
from __future__ import annotations

import os
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from wan_engine import pipeline
from wan_engine.checkpoints import key_maps, verify_model_files
from wan_engine.device_faults import as_device_fault
from wan_engine.errors import DeviceFault, InvalidRequest, OutOfMemory, WeightsMissing, echo
from wan_engine.fp8 import check_precision, load_fp8_dit, meta_fp8_dit, quantize_dit
from wan_engine.hub import DownloadError, fetch_needed
from wan_engine.lora import LoraWeights, check_loras_fit, load_lora
from wan_engine.memory import (
    OFFLOAD_POLICIES,
    Experts,
    HostResident,
    experts_must_take_turns,
    Placement,
    release_cached_memory,
    tensor_bytes,
)
from wan_engine.nn.attention import backend_for
from wan_engine.nn.clip import ClipVisionEncoder
from wan_engine.nn.dit import WanDiT
from wan_engine.nn.t5 import UMT5Encoder
from wan_engine.nn.vae import WanVAE
from wan_engine.phases import StepPlan
from wan_engine.registry import DEFAULT_DEFINITIONS_DIR, ModelFiles, ModelRegistry, ModelSpec, NeededFile
from wan_engine.request import PRECISIONS, GenerationRequest, GenerationResult
from wan_engine.sampling import FlowSampler, make_sampler
from wan_engine.schema import Checked, Limits, validate
from wan_engine.swap import WORKING_MEMORY_BYTES, BlockStreamer, execution_order, plan_resident_blocks
from wan_engine.tokenizer import T5Tokenizer
from wan_engine.weights import apply_dtype_policy, load_model

LORA_CACHE_SIZE = 8  # parsed LoRA files kept between tasks (travel segments reuse theirs)
COMPILE_CACHE_FOLDER = ".compile_cache"  # under models_dir unless compile_cache_dir is given
ProgressCallback = Callable[[dict[str, Any]], None]


@dataclass
class LoadedModel:
    """A model definition's networks, built from its files."""

    spec: ModelSpec
    files: ModelFiles | None  # None: networks handed to Engine.install
    networks: pipeline.Networks
    precision: str = "bf16"


@dataclass
class _SharedNetworks:
    """The text encoders, VAEs and image encoders of the models the engine holds, by the files they
    came from (weights only: holding these does not keep any DiT alive)."""

    text_encoders: dict[tuple[Path, Path], pipeline.TextEncoder]
    vaes: dict[Path, nn.Module]
    image_encoders: dict[Path, pipeline.ImageEncoder]

    @classmethod
    def of(cls, models: Sequence[LoadedModel]) -> _SharedNetworks:
        loaded = [m for m in models if m.files is not None]
        return cls(
            {(m.files.text_encoder, m.files.tokenizer): m.networks.text_encoder for m in loaded},
            {m.files.vae: m.networks.vae for m in loaded},
            {m.files.image_encoder: m.networks.image_encoder for m in loaded if m.networks.image_encoder is not None},
        )


class Engine:
    """One resident model at a time on one device (see the module docstring).

    offload: "auto" lets the two Wan 2.2 experts take turns on the device when both do not fit in
    free device memory, "experts" always makes them take turns, "none" never. The text encoder
    always lives in host memory between prompts.

    limits: budgets (prompt length, width x height x frames: wan_engine.schema.Limits) a request must
    fit; None checks none (the worker checks its own settings' budgets before queueing work).

    keep_previous_in_ram: when switching models, keep the previous model's experts in host memory,
    so that switching back costs a host-to-device copy instead of a disk read.

    device_fault (attribute): the sticky DeviceFault that made the engine unusable, else None.

    precision, compile, gpu_memory_gb, compile_cache_dir: see the module docstring; compile_backend
    is torch.compile's (inductor; the CPU tests use aot_eager, which compiles in seconds). vae_dtype:
    default bf16 on CUDA (frames within 40 dB PSNR of fp32, tested), fp32 elsewhere.

    download_missing: a model or LoRA file that is missing but has a hub source is downloaded
    (wan_engine.hub) before the load, reported as progress phase "download"; a download that cannot
    succeed (404, refused token) raises WeightsMissing, a transient failure DownloadError.
    """

    def __init__(
        self,
        models_dir: str | Path,
        device: str | torch.device = "cuda",
        dtype: torch.dtype = torch.bfloat16,
        offload: str = "auto",
        keep_previous_in_ram: bool = False,
        *,
        vae_dtype: torch.dtype | None = None,
        defaults_dir: str | Path = DEFAULT_DEFINITIONS_DIR,
        precision: str = "bf16",
        compile: bool | None = None,
        gpu_memory_gb: float | None = None,
        compile_cache_dir: str | Path | None = None,
        compile_backend: str = "inductor",
        download_missing: bool = False,
        limits: Limits | None = None,
    ):
        if offload not in OFFLOAD_POLICIES:
            raise ValueError(f"offload must be one of {', '.join(OFFLOAD_POLICIES)}, got {offload!r}")
        self.models_dir = Path(models_dir)
        self.registry = ModelRegistry(self.models_dir, defaults_dir)
        self.device = torch.device(device)
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.dtype = dtype
        cuda = self.device.type == "cuda"
        self.vae_dtype = vae_dtype or (torch.bfloat16 if cuda else torch.float32)
        self.precision = check_precision(precision)
        self.compile = cuda if compile is None else compile
        self.compile_backend = compile_backend
        if self.compile:
            _keep_compile_cache(Path(compile_cache_dir) if compile_cache_dir else self.models_dir / COMPILE_CACHE_FOLDER)
        if gpu_memory_gb is not None and not 0 < gpu_memory_gb < float("inf"):
            raise ValueError(f"gpu_memory_gb must be a positive number, got {gpu_memory_gb}")
        self.gpu_memory_bytes = None if gpu_memory_gb is None else int(gpu_memory_gb * 2**30)
        if cuda and self.gpu_memory_bytes is not None:
            total = torch.cuda.get_device_properties(self.device).total_memory
            torch.cuda.set_per_process_memory_fraction(min(1.0, self.gpu_memory_bytes / total), self.device)
        self.offload = offload
        self.keep_previous_in_ram = keep_previous_in_ram
        self.download_missing = download_missing
        self.limits = limits
        self.device_fault: DeviceFault | None = None
        self._loaded: LoadedModel | None = None
        self._previous: LoadedModel | None = None
        self._loras: OrderedDict[tuple[Path, float], LoraWeights] = OrderedDict()

    # ---- models ---------------------------------------------------------------------------------

    @property
    def loaded_model(self) -> str | None:
        """The definition key of the resident model (a preset resolves to its definition)."""
        return None if self._loaded is None else self._loaded.spec.key

    def load(self, key: str, precision: str | None = None) -> bool:
        """Make `key` (a definition or preset) the resident model in `precision` (default: the
        engine's); returns False when it already was.

        UnknownModel, WeightsMissing and LoadError for a file whose header does not fit the network
        (wan_engine.checkpoints) are raised before the current model is touched. The old
        model's experts leave the device before the new ones arrive (parked in host memory with
        keep_previous_in_ram, else freed). If building the new model fails, its partial networks are
        dropped and no model is resident; a failure of the device raises DeviceFault.
        """
        spec = self.registry.get(key)
        precision = check_precision(precision or self.precision)
        self._raise_if_unusable()
        if self._is_resident(spec.key, precision):
            return False
        if self.download_missing:
            self._fetch(spec, self._missing_files(spec, []), lambda progress: None)
        files = self.registry.files_for(spec)
        verify_model_files(spec, files)  # headers only: a bad file fails here, before the resident model goes
        with self._device_failures_as_faults():
            self._switch_to(spec, files, precision)
        return True

    def _switch_to(self, spec: ModelSpec, files: ModelFiles, precision: str) -> None:
        """Free or park the resident model, then make `spec` resident (from host memory or its files)."""
        held = [m for m in (self._loaded, self._previous) if m is not None]
        shared = _SharedNetworks.of(held)
        previous = self._previous
        parked = previous if previous is not None and (previous.spec.key, previous.precision) == (spec.key, precision) else None
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
                self._loaded = self._build(spec, files, shared, precision)
        finally:
            release_cached_memory(self.device)

    def device_bytes(self) -> int:
        """Bytes of the parameters and buffers the engine holds on its device (all models)."""
        held = [m for m in (self._loaded, self._previous) if m is not None]
        return tensor_bytes([module for model in held for module in _modules(model)], self.device)

    def _build(self, spec: ModelSpec, files: ModelFiles, shared: _SharedNetworks, precision: str) -> LoadedModel:
        """Load every network of `spec`, sharing the text encoder and VAE of another model held by
        the engine when they come from the same files; the DiTs in `precision`, compiled when the
        engine compiles, placed for the device budget."""
        text_key = (files.text_encoder, files.tokenizer)
        text_encoder = shared.text_encoders.get(text_key)
        maps = key_maps(spec)  # every published naming of each network -> the official names
        if text_encoder is None:
            encoder = load_model(
                lambda: UMT5Encoder(**spec.text_encoder_config), [files.text_encoder], dtype=self.dtype,
                key_map=maps.text_encoder,
            )
            tokenizer = T5Tokenizer(files.tokenizer, spec.text_len)
            text_encoder = pipeline.TextEncoder(tokenizer, HostResident(encoder, self.device))
        vae = shared.vaes.get(files.vae)
        if vae is None:
            vae = load_model(lambda: WanVAE(**spec.vae_config), [files.vae], dtype=self.vae_dtype, device=self.device,
                             key_map=maps.vae)  # fmt: skip
        image_encoder = None
        if files.image_encoder is not None:  # Wan 2.1 I2V's CLIP encoder, in host memory like the text encoder
            shared_encoder = shared.image_encoders.get(files.image_encoder)
            encoder = shared_encoder.encoder if shared_encoder is not None else HostResident(
                load_model(lambda: ClipVisionEncoder(**spec.image_encoder_config), [files.image_encoder],
                           dtype=self.dtype, key_map=maps.image_encoder), self.device)
            image_encoder = pipeline.ImageEncoder(encoder, spec.image_encoder_frames)

        resident_blocks, take_turns = self._placement(spec, precision, vae)
        load_device = "cpu" if take_turns else self.device
        networks = {
            name: self._prepared(self._load_dit(spec, paths, precision, load_device), precision)
            for name, paths in files.experts.items()
        }
        placed = self._placed(spec, text_encoder, vae, networks, resident_blocks, take_turns, image_encoder)
        return LoadedModel(spec, files, placed, precision)

    def install(
        self,
        key: str,
        experts: dict[str, WanDiT],
        text_encoder: nn.Module,
        tokenizer: T5Tokenizer,
        vae: nn.Module,
        precision: str | None = None,
        image_encoder: nn.Module | None = None,
    ) -> None:
        """Make networks already in memory the resident model `key` (bench/gpu.py: random weights at
        the real shapes, where no checkpoint files exist), prepared and placed as loaded ones are: fp8
        layers in fp8 mode (quantised in place), compiled blocks, the device budget. `image_encoder`:
        the CLIP encoder of a Wan 2.1 image-to-video model, which needs one."""
        spec = self.registry.get(key)
        precision = check_precision(precision or self.precision)
        if (image_encoder is None) != (spec.image_encoder_config is None):
            raise ValueError(f"{key} {'needs' if image_encoder is None else 'has no'} CLIP image encoder")
        self._loaded = self._previous = None
        release_cached_memory(self.device)
        held = tensor_bytes(list(experts.values()), self.device)
        resident_blocks, take_turns = self._placement(spec, precision, vae, held)
        networks = {}
        for name, network in experts.items():
            if precision == "fp8":
                quantize_dit(network, self.device)
            networks[name] = self._prepared(network.to("cpu" if take_turns else self.device), precision)
        encoder = pipeline.TextEncoder(tokenizer, HostResident(text_encoder, self.device))
        images = None if image_encoder is None else pipeline.ImageEncoder(HostResident(image_encoder, self.device),
                                                                          spec.image_encoder_frames)
        networks_placed = self._placed(spec, encoder, vae.to(self.device, self.vae_dtype), networks, resident_blocks,
                                       take_turns, images)
        self._loaded = LoadedModel(spec, None, networks_placed, precision)

    def _placement(self, spec: ModelSpec, precision: str, vae: nn.Module, held_bytes: int = 0) -> tuple[int | None, bool]:
        """(blocks of each DiT that stay on the device, or None when all do; whether the experts take
        turns) for `spec` in `precision` under the offload policy and the device budget; `held_bytes`:
        what the experts already occupy on the device (Engine.install)."""
        meta = _meta_dit(_dit_builder(spec), precision, self.dtype)  # built once, nothing allocated
        resident_blocks = self._resident_blocks(meta, tensor_bytes([vae]))
        expert_bytes = len(spec.experts) * tensor_bytes([meta])
        take_turns = resident_blocks is not None or (
            spec.is_dual_expert
            and experts_must_take_turns(self.offload, expert_bytes, self.device, self.gpu_memory_bytes, held_bytes)
        )
        return resident_blocks, take_turns

    def _placed(
        self, spec: ModelSpec, text_encoder: pipeline.TextEncoder, vae: nn.Module, networks: dict[str, nn.Module],
        resident_blocks: int | None, take_turns: bool, image_encoder: pipeline.ImageEncoder | None = None,
    ) -> pipeline.Networks:  # fmt: skip
        """The networks of a model placed as `_placement` decided (streamed blocks, or experts in turns)."""
        placements: dict[str, Placement] = {}
        if resident_blocks is not None:
            placements = {name: BlockStreamer(net, self.device, resident_blocks) for name, net in networks.items()}
        experts = Experts(networks, self.device, take_turns=take_turns, placements=placements)
        experts.compiled = self.compile
        return pipeline.Networks(text_encoder, vae, experts, vace=spec.is_vace, image_to_video=spec.is_image_to_video,
                                 image_encoder=image_encoder)

    def _prepared(self, network: WanDiT, precision: str) -> WanDiT:
        """`network` with the attention backend of `precision`, compiled when the engine compiles."""
        network.set_attention_backend(backend_for(precision, self.device))
        return network.compile_blocks(backend=self.compile_backend) if self.compile else network

    def _load_dit(self, spec: ModelSpec, paths: Sequence[Path], precision: str, device: Any) -> WanDiT:
        """One DiT in `precision` on `device` (quantised on the engine's device in fp8 mode)."""
        build, key_map = _dit_builder(spec), key_maps(spec).dit
        if precision == "fp8":
            return load_fp8_dit(build, paths, compute_dtype=self.dtype, device=device, quantize_on=self.device,
                                key_map=key_map)  # fmt: skip
        return load_model(build, paths, dtype=self.dtype, device=device, key_map=key_map)

    def _resident_blocks(self, meta: WanDiT, vae_bytes: int) -> int | None:
        """How many blocks of each DiT (`meta`: one as its precision holds it, on the meta device)
        stay on the device under the budget, or None when the whole network fits (no streaming).
        Without a budget (a CPU engine without gpu_memory_gb), None."""
        budget = self.gpu_memory_bytes
        if budget is None and self.device.type == "cuda":
            budget = torch.cuda.get_device_properties(self.device).total_memory
        if budget is None:
            return None
        sizes = [tensor_bytes([block]) for block in execution_order(meta)]
        fixed = tensor_bytes([meta]) - sum(sizes) + vae_bytes
        try:
            resident = plan_resident_blocks(sizes, fixed, WORKING_MEMORY_BYTES, budget)
        except ValueError as error:
            raise OutOfMemory(str(error)) from None
        return None if resident == len(sizes) else resident

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
        timer = pipeline.PhaseTimer(self.device, on_start=_phase_reporter(on_progress))

        checked, precision = self._validated(request)
        values = checked.values
        missing = self._missing_files(checked.spec, values["lora_names"]) if self.download_missing else []
        if missing:
            with timer.measure("download"):
                self._fetch(checked.spec, missing, on_progress)
        loras = [self._lora(path) for path in checked.lora_files]

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
                plan=checked.plan,
                controls=_control_streams(request),
                references=list(request.image_refs),
                image_start=request.image_start,
                image_end=request.image_end,
                loras=loras,
                lora_schedule=checked.lora_schedule,
            )

        with self._device_failures_as_faults():
            # a resident model costs no load phase (none reported, 0 s), only the fault check in load()
            with nullcontext() if self._is_resident(checked.spec.key, precision) else timer.measure("load"):
                self.load(request.model, precision)
            assert self._loaded is not None
            networks = self._loaded.networks
            # under a device budget the DiT leaves the device while the text (and image) encoder visits it
            make_room = networks.experts.to_host if networks.experts.streaming else None
            networks.text_encoder.encoder.make_room = make_room
            if networks.image_encoder is not None:
                networks.image_encoder.encoder.make_room = make_room
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
            "precision": precision,
            "sources": checked.sources,
        }
        return GenerationResult(frames=frames, timings=timings, resolved=resolved, model=checked.spec.key)

    def check(self, request: GenerationRequest) -> None:
        """Validate `request` as generate() does (model, parameters, geometry, control inputs, LoRA
        names and multipliers) without loading a model or reading a LoRA, so a caller that plans
        work (a travel orchestrator) can refuse a bad request before queueing it."""
        self._validated(request)

    def _validated(self, request: GenerationRequest) -> tuple[Checked, str]:
        """The request checked by wan_engine.schema.validate (model, parameters, geometry, prompt, LoRA
        names and multipliers) and its control inputs, and the precision it runs in; raises
        UnknownModel or InvalidRequest otherwise."""
        checked = validate(self.registry, request, self.models_dir, self.limits, self.download_missing)
        precision = request.precision or self.precision
        if precision not in PRECISIONS:
            raise InvalidRequest("precision", f"must be one of {', '.join(PRECISIONS)}, got {echo(precision)}")
        _check_inputs(request, checked.spec)
        checked.sources["precision"] = "request" if request.precision else "engine"
        return checked, precision

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
                    should_cancel=should_cancel,
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

    def _is_resident(self, key: str, precision: str) -> bool:
        """Whether definition `key` is the resident model in `precision`."""
        return self._loaded is not None and (self._loaded.spec.key, self._loaded.precision) == (key, precision)

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

    def _missing_files(self, spec: ModelSpec, lora_names: Sequence[str]) -> list[NeededFile]:
        """The LoRA files and, unless one of the model's layouts is complete, the files of its own
        layout that are not in models_dir."""
        try:
            self.registry.files_for(spec)
            needed = self.registry.needed_loras(lora_names)
        except WeightsMissing:
            needed = self.registry.needed_files(spec, lora_names=lora_names)
        return [f for f in needed if f.present is None]

    def _fetch(self, spec: ModelSpec, missing: Sequence[NeededFile], on_progress: ProgressCallback) -> None:
        """Download `missing` (see download_missing in the class docstring)."""

        def report(event: dict[str, Any]) -> None:
            on_progress({"phase": "download", "file": event["file"], "status": event["status"],
                         "files_done": event["index"], "files": event["files"], "bytes": event.get("bytes"),
                         "percent": round(100.0 * event["index"] / event["files"], 1)})  # fmt: skip

        try:
            fetch_needed(missing, self.models_dir, on_file=report)
        except DownloadError as error:
            if error.permanent:
                raise WeightsMissing(f"model {spec.key!r}: {error}") from error
            raise

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


def _phase_reporter(on_progress: ProgressCallback) -> Callable[[str], None]:
    """Progress at the start of each phase (load, text_encode, vace_encode, decode), so a row never
    shows a stale step through a long phase; denoising reports its own steps."""

    def report(phase: str) -> None:
        if not phase.startswith("denoise"):
            on_progress({"phase": phase})

    return report


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


def _dit_builder(spec: ModelSpec) -> Callable[[], WanDiT]:
    def build() -> WanDiT:
        return WanDiT(**spec.dit_config)

    return build


def _meta_dit(build: Callable[[], WanDiT], precision: str, dtype: torch.dtype) -> WanDiT:
    """The DiT as `precision` holds it, on the meta device."""
    if precision == "fp8":
        return meta_fp8_dit(build, dtype)
    with torch.device("meta"):
        return apply_dtype_policy(build(), dtype)


def _keep_compile_cache(folder: Path) -> None:
    """Keep torch.compile's artifacts (Inductor's FX graph and kernel caches, Triton's binaries)
    in `folder`, so a restarted worker loads them instead of compiling again. A cache folder the
    operator set (TORCHINDUCTOR_CACHE_DIR) wins."""
    folder.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(folder))


def _modules(model: LoadedModel) -> list[nn.Module]:
    networks = model.networks
    image = [networks.image_encoder.encoder.module] if networks.image_encoder is not None else []
    return [networks.text_encoder.encoder.module, networks.vae, *image, *networks.experts.networks.values()]
