"""Test-only failures of a real Engine: genuine torch error types raised at a generation's first
denoising-step boundary, through the should_cancel callback the pipeline calls there. Production
code knows nothing of this; tests write `faults(engine).oom = 1` or `faults(engine).device = [...]`."""
from __future__ import annotations

import weakref
from typing import Any, Callable

import torch

from wan_engine.engine import Engine

_INJECTORS: "weakref.WeakKeyDictionary[Engine, FaultInjector]" = weakref.WeakKeyDictionary()


class FaultInjector:
    """oom: how many upcoming generation attempts fail with torch.OutOfMemoryError at their first step
    (the engine's out-of-memory retry is an attempt too). device: errors (e.g. a cuBLAS RuntimeError)
    that the upcoming generations raise at their first step, one per generation, in order, once no
    out-of-memory is pending; a None entry lets its generation run normally."""

    def __init__(self, engine: Engine):
        self.oom = 0
        self.device: list[BaseException | None] = []
        generate = engine.generate

        def generate_with_faults(request: Any, on_progress: Any = None,
                                 should_cancel: Callable[[], bool] | None = None) -> Any:
            return generate(request, on_progress=on_progress, should_cancel=self._failing(should_cancel))

        engine.generate = generate_with_faults  # type: ignore[method-assign]

    def _failing(self, should_cancel: Callable[[], bool] | None) -> Callable[[], bool]:
        device_fault_taken = False

        def check() -> bool:
            nonlocal device_fault_taken
            if self.oom > 0:
                self.oom -= 1
                raise torch.OutOfMemoryError("injected out-of-memory (tests/fault_injection.py)")
            if not device_fault_taken and self.device:
                device_fault_taken = True
                fault = self.device.pop(0)
                if fault is not None:
                    raise fault
            return should_cancel() if should_cancel is not None else False

        return check


def faults(engine: Engine) -> FaultInjector:
    """The fault injector of `engine`, installed on first use."""
    if engine not in _INJECTORS:
        _INJECTORS[engine] = FaultInjector(engine)
    return _INJECTORS[engine]
