"""What a worker process holds across tasks: its device and (once a generation handler creates it)
the resident engine with the loaded model. Nothing here imports torch: worker start-up stays fast."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable


def resolve_device(configured: str | None) -> str:
    """The configured device, else "cuda" when the NVIDIA driver shows a GPU this process may use,
    else "cpu". Decided from the driver's files rather than torch.cuda so that it costs nothing;
    the engine still fails clearly if torch cannot use the GPU."""
    if configured:
        return configured
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return "cpu"
    gpus = Path("/proc/driver/nvidia/gpus")
    return "cuda" if gpus.is_dir() and any(gpus.iterdir()) else "cpu"


@dataclass
class WorkerResources:
    """Shared by every task this worker runs. `engine` is the resident wan_engine Engine, created by the
    first handler that needs it and kept so the model stays loaded between tasks."""

    device: str
    models_dir: Path
    precision: str = "bf16"  # the engine's default precision (a task's `precision` wins)
    compile: bool = True  # torch.compile the DiT blocks (on CUDA only)
    gpu_memory_gb: float | None = None  # device budget; None: the whole card
    compile_cache_dir: Path | None = None  # torch.compile's artifacts; None: <models_dir>/.compile_cache
    engine: Any | None = None
    metrics: Any | None = None  # worker.metrics.WorkerMetrics when the worker serves metrics
    generations_completed: int = 0  # proof the device works: the poller's device-fault count resets on it
    download_missing: bool = False  # --download-missing: the engine fetches missing weights before a load
    _registry: Any | None = None
    _annotators: Any | None = None

    @classmethod
    def from_config(cls, config: Any) -> WorkerResources:
        """The resources a worker with these settings (worker.config.WorkerConfig) starts with."""
        return cls(device=resolve_device(config.device), models_dir=config.models_dir, precision=config.precision,
                   compile=not config.no_compile, gpu_memory_gb=config.gpu_memory_gb,
                   compile_cache_dir=config.cache_dir / "compile" if config.cache_dir is not None else None,
                   download_missing=config.download_missing)  # fmt: skip

    @property
    def loaded_model(self) -> str | None:
        """The model the engine holds now (the claim prefers tasks for it)."""
        return None if self.engine is None else self.engine.loaded_model

    def resident_engine(self) -> Any:
        """The engine, created on first use (torch is imported only then) and kept for the worker's
        life: bf16 on a GPU, float32 on the CPU (where bf16 matmuls are slow and gain nothing), with
        the worker's precision, compile and device-budget settings."""
        if self.engine is None:
            import torch

            from wan_engine.engine import Engine

            dtype = torch.float32 if self.device == "cpu" else torch.bfloat16
            self.engine = Engine(
                self.models_dir, device=self.device, dtype=dtype, precision=self.precision,
                compile=self.compile and self.device != "cpu", gpu_memory_gb=self.gpu_memory_gb,
                compile_cache_dir=self.compile_cache_dir, download_missing=self.download_missing,
            )  # fmt: skip
        return self.engine

    def model_registry(self) -> Any:
        """The model definitions, to check a model or preset without loading it (torch-free: an
        orchestrator validates its jobs without creating the engine)."""
        if self.engine is not None:
            return self.engine.registry
        if self._registry is None:
            from wan_engine.registry import ModelRegistry

            self._registry = ModelRegistry(self.models_dir)
        return self._registry

    def annotators(self) -> Any:
        """The structure-guidance annotators (wan_engine.annotators), loaded on first use and kept in host
        memory; they run on this worker's device."""
        if self._annotators is None:
            from wan_engine.annotators import Annotators

            self._annotators = Annotators(self.models_dir, self.device, self.download_missing)
        return self._annotators

    def check_annotator(self, kind: str) -> None:
        """Fail (WeightsMissing) when annotator `kind`'s files are missing and may not be fetched; fetch
        them when they may (torch-free, for an orchestrator)."""
        from wan_engine.annotator_files import annotator_paths

        annotator_paths(kind, self.models_dir, self.download_missing)

    def load_model(self, model: str) -> bool:
        """Make `model` (a definition key or preset) resident (--preload-model); False when it was."""
        engine = self.resident_engine()
        previous = engine.loaded_model
        try:
            return engine.load(model)
        finally:
            self._count_load(previous)

    def generate(self, request: Any, on_progress: Callable[[dict], None], should_cancel: Callable[[], bool]) -> Any:
        """engine.generate (which loads the request's model when another one is resident)."""
        engine = self.resident_engine()
        previous = engine.loaded_model
        try:
            result = engine.generate(request, on_progress=on_progress, should_cancel=should_cancel)
            self.generations_completed += 1
            return result
        finally:
            self._count_load(previous)

    def _count_load(self, previous: str | None) -> None:
        current = self.engine.loaded_model if self.engine is not None else None
        if self.metrics is not None and current is not None and current != previous:
            self.metrics.model_loaded(current, previous)
