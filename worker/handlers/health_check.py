"""`health_check`: an operator's probe of the fleet through the table. Insert a row, read result_data:
which worker took it, on which host and device, with which model loaded. `sleep_seconds` (optional)
holds the claim that long, e.g. to see several workers answer at once."""
from __future__ import annotations

import os
import platform
import socket
import sys
import time

from worker.errors import ValidationError
from worker.handlers import HandlerResult, TaskContext, register
from worker.store import CHILD_KEY_PARAM

MAX_SLEEP_SECONDS = 3600.0
ACCEPTED_FIELDS = ("sleep_seconds", CHILD_KEY_PARAM)  # child_key: when an orchestrator inserted the probe


@register("health_check")
def health_check(ctx: TaskContext) -> HandlerResult:
    sleep_seconds = _sleep_seconds(ctx.task.params)
    deadline = time.monotonic() + sleep_seconds
    while time.monotonic() < deadline:
        ctx.raise_if_cancelled()
        time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))
    torch = sys.modules.get("torch")  # reported only when already imported: never import it for a probe
    return HandlerResult(
        result_data={
            "worker_id": ctx.worker_id,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "device": ctx.resources.device,
            "loaded_model": ctx.resources.loaded_model,
            "python": platform.python_version(),
            "torch": getattr(torch, "__version__", None),
            "slept_seconds": sleep_seconds,
        }
    )


def _sleep_seconds(params: dict) -> float:
    for name in params:
        if name not in ACCEPTED_FIELDS:
            raise ValidationError(name, f"unknown field; health_check accepts {', '.join(ACCEPTED_FIELDS)}")
    value = params.get("sleep_seconds", 0)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValidationError("sleep_seconds", f"must be a number of seconds, got {type(value).__name__} {value!r}")
    if not 0 <= value <= MAX_SLEEP_SECONDS:
        raise ValidationError("sleep_seconds", f"must be between 0 and {MAX_SLEEP_SECONDS:g}, got {value}")
    return float(value)
