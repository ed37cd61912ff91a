"""What a worker process holds across tasks: its device and (once a generation handler creates it)
the resident engine with the loaded model. Nothing here imports torch: worker start-up stays fast."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any


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
    engine: Any | None = None

    @property
    def loaded_model(self) -> str | None:
        """The model the engine holds now (the claim prefers tasks for it)."""
        return None if self.engine is None else self.engine.loaded_model
