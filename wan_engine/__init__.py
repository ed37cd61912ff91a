"""The resident Wan engine: networks, samplers, LoRA, model registry, pipeline.

    from wan_engine import Engine, GenerationRequest
    engine = Engine(models_dir, device="cuda")
    result = engine.generate(GenerationRequest(model="vace_14B", prompt=..., width=832, height=480, video_length=81))

The names below are imported on first use, so that `import wan_engine.errors` (what the worker's
poller needs) does not pay for importing torch.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "Engine": "wan_engine.engine",
    "GenerationRequest": "wan_engine.request",
    "GenerationResult": "wan_engine.request",
    "EngineError": "wan_engine.errors",
    "InvalidRequest": "wan_engine.errors",
    "UnknownModel": "wan_engine.errors",
    "WeightsMissing": "wan_engine.errors",
    "LoadError": "wan_engine.errors",
    "GenerationCancelled": "wan_engine.errors",
    "OutOfMemory": "wan_engine.errors",
    "DeviceFault": "wan_engine.errors",
}
__all__ = list(_EXPORTS)

if TYPE_CHECKING:
    from wan_engine.engine import Engine
    from wan_engine.errors import (
        DeviceFault,
        EngineError,
        GenerationCancelled,
        InvalidRequest,
        LoadError,
        OutOfMemory,
        UnknownModel,
        WeightsMissing,
    )
    from wan_engine.request import GenerationRequest, GenerationResult


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'wan_engine' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value
