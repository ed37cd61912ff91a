"""Exception types the engine raises; the worker maps each to what happens to the task row."""
from __future__ import annotations


class EngineError(Exception):
    """Base class of everything the engine raises on purpose."""


class InvalidRequest(EngineError, ValueError):
    """The request can never succeed as given (permanent). `field` names the offending input."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.rule = message


class UnknownModel(InvalidRequest):
    """A model key or preset that no definition provides."""


class WeightsMissing(EngineError):
    """Weight files a model definition needs are not in models_dir (permanent until an operator acts).
    `missing`: their names relative to models_dir."""

    def __init__(self, message: str, missing: tuple[str, ...] | list[str] = ()):
        super().__init__(message)
        self.missing = tuple(missing)


class LoadError(EngineError):
    """A checkpoint whose keys or shapes do not fit the network (missing, unexpected, wrong shape)."""


class GenerationCancelled(EngineError):
    """should_cancel() said yes; raised at the next denoising-step boundary."""


class OutOfMemory(EngineError):
    """The device ran out of memory even after the engine freed caches and retried once."""


class DeviceFault(EngineError):
    """The accelerator itself failed (a CUDA, cuBLAS, cuDNN or NCCL error; never out-of-memory, which is
    OutOfMemory). The task is not at fault and may run on another device. `sticky`: the failure poisons
    the process's device context (an illegal memory access, a device-side assert, a launch failure, an
    ECC error), so every later call fails too and only a new process recovers; the engine refuses work
    from then on."""

    def __init__(self, message: str, *, sticky: bool):
        super().__init__(message)
        self.sticky = sticky
