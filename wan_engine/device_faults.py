"""Which torch errors mean the accelerator failed, and which of those leave the process's device
context unusable.

CUDA reports a fault of the device (or its driver, or a library on it) as torch.AcceleratorError
(torch >= 2.8), as torch.cuda.CudaError, or as a RuntimeError whose message carries the library's
status ("CUDA error: ...", "CUBLAS_STATUS_...", "CUDNN_STATUS_...", "NCCL error"). Out-of-memory is
not a fault of the device: it has its own type (torch.OutOfMemoryError) and its own recovery, and a
message that says "out of memory" is never classified here. Some faults are sticky: once a kernel
made an illegal memory access or hit a device-side assert, every later CUDA call of the process
fails with the same error (seen on an H200 with torch 2.11: `x[torch.tensor([10])]` on a 4-element
CUDA tensor, then `torch.ones(4, device="cuda") * 2` both raise AcceleratorError "CUDA error:
device-side assert triggered"), so only a new process can use the device again.
"""
from __future__ import annotations

import torch

from wan_engine.errors import DeviceFault

# The error types torch raises for accelerator failures (those this torch version has).
DEVICE_ERROR_TYPES: tuple[type[BaseException], ...] = tuple(
    kind for kind in (getattr(torch, "AcceleratorError", None), getattr(torch.cuda, "CudaError", None))
    if kind is not None
)
# Text a plain RuntimeError carries when a CUDA library or the driver failed (compared lower-case).
DEVICE_MARKERS = ("cuda error", "cuda driver error", "cublas_status", "cudnn_status", "cudnn error",
                  "cusolver_status", "cufft_", "nccl")
# cudaError strings of faults that poison the context: every later call fails the same way.
STICKY_MARKERS = ("illegal memory access", "illegal instruction", "misaligned address", "device-side assert",
                  "unspecified launch failure", "launch timed out", "ecc error", "hardware stack error",
                  "nvlink error", "invalid program counter")
# Allocation failures, whatever type carries them, belong to the out-of-memory path.
OUT_OF_MEMORY_MARKERS = ("out of memory", "alloc_failed")


def as_device_fault(error: BaseException, device: torch.device | str) -> DeviceFault | None:
    """The DeviceFault that `error` means on `device`, or None when it is not a failure of the device."""
    if not isinstance(error, RuntimeError) or isinstance(error, torch.OutOfMemoryError):
        return None
    text = str(error)
    lowered = text.lower()
    if any(marker in lowered for marker in OUT_OF_MEMORY_MARKERS):
        return None
    if not isinstance(error, DEVICE_ERROR_TYPES) and not any(marker in lowered for marker in DEVICE_MARKERS):
        return None
    sticky = any(marker in lowered for marker in STICKY_MARKERS)
    first_line = text.strip().splitlines()[0] if text.strip() else type(error).__name__
    consequence = ("the device context is unusable until the worker process restarts" if sticky
                   else "the task itself may be fine and can run again on a healthy device")
    return DeviceFault(f"{device} failed: {first_line} ({consequence})", sticky=sticky)
