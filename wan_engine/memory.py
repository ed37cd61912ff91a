"""Where the engine's networks live: the compute device, or host memory that lends them to it.

The policy in one place:
- the text encoder (umT5-XXL, 11 GB in bf16) is needed for a fraction of a second per task; it
  lives in host memory and visits the device only to encode;
- the two Wan 2.2 experts (28 GB each at 14B bf16) are used one after the other; when both do
  not fit next to the working memory of a generation, only the active one sits on the device;
- the DiT of a single-expert model and the VAE stay on the device;
- under a device budget (`gpu_memory_gb`) a DiT that does not fit keeps only its first blocks on
  the device and streams the others from host memory (wan_engine.swap); the text encoder's visit
  then first parks the DiT in host memory (`HostResident.make_room`).

A host-resident network keeps one host copy of its tensors (page-locked when the device is CUDA,
so the copy to the device runs at full bus speed and asynchronously). Sending it back to host
memory only drops the device copy: weights are never modified in place, so nothing needs to be
copied back.
"""
from __future__ import annotations

import gc
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Protocol

import torch
from torch import nn

OFFLOAD_POLICIES = ("auto", "experts", "none")

# Device memory a generation needs beside the weights (activations, attention workspace, VAE chunks,
# allocator slack), as a fraction of both experts' size. Measured on an H200 (bench/generate.py): the
# 14B VACE expert pair (68 GB in bf16) peaked ~10 GB above all weights at 480p x 81 frames; 720p has
# 2.3x the tokens. 0.35 of the pair (24 GB) covers both.
WORKING_MEMORY_FRACTION = 0.35


def tensor_bytes(modules: Iterable[nn.Module], device: torch.device | None = None) -> int:
    """Bytes of all parameters and buffers of `modules` (only those on `device`, when given).

    Tensors shared between modules are counted once."""
    seen: set[int] = set()
    total = 0
    for tensor in module_tensors(modules):
        if device is not None and tensor.device != device:
            continue
        key = tensor.untyped_storage().data_ptr() if not tensor.is_meta else id(tensor)
        if key in seen:
            continue
        seen.add(key)
        total += tensor.untyped_storage().nbytes()
    return total


def free_device_bytes(device: torch.device) -> int | None:
    """Free memory the device reports (CUDA), or None where the notion does not apply (CPU)."""
    if device.type != "cuda":
        return None
    free, _total = torch.cuda.mem_get_info(device)
    return free


def experts_must_take_turns(
    policy: str, expert_bytes: int, device: torch.device, budget_bytes: int | None = None, held_bytes: int = 0
) -> bool:
    """Whether only the active expert may sit on the device (the other in host memory).

    "experts" forces it, "none" forbids it; "auto" decides from the free device memory (plus
    `held_bytes`, what the experts themselves already occupy there), and the device budget when one
    is set: both experts plus the working memory of a generation must fit, or they take turns."""
    if policy not in OFFLOAD_POLICIES:
        raise ValueError(f"offload must be one of {', '.join(OFFLOAD_POLICIES)}, got {policy!r}")
    if policy != "auto":
        return policy == "experts"
    free = free_device_bytes(device)
    room = [n for n in (None if free is None else free + held_bytes, budget_bytes) if n is not None]
    if not room:
        return False
    return expert_bytes * (1 + WORKING_MEMORY_FRACTION) > min(room)


def release_cached_memory(device: torch.device) -> None:
    """Return freed blocks to the device (after a model switch or an out-of-memory error)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


class HostCopies:
    """Host copies of some tensors (page-locked when the device is CUDA) that the tensors point to
    between visits to the device. The tensors are swapped under their own Parameter objects
    (`.data`), so hooks and parametrizations installed on the modules (LoRAs) keep working.

    `to_device()` gives each tensor a device copy (asynchronous from page-locked memory, on the
    current stream); `clone=True` makes a real copy even on a CPU device (block streaming runs its
    full path there); `to_host()` drops the device copies: weights are never modified in place, so
    nothing is copied back."""

    def __init__(self, tensors: Iterable[torch.Tensor], device: torch.device):
        self.device = device
        pin = device.type == "cuda"
        self._slots: list[tuple[torch.Tensor, torch.Tensor]] = []
        for tensor in tensors:
            host = tensor.detach().to("cpu")
            self._slots.append((tensor, host.pin_memory() if pin else host))
        self.to_host()

    def to_device(self, clone: bool = False) -> None:
        for tensor, host in self._slots:
            tensor.data = host.to(self.device, non_blocking=True, copy=clone)

    def to_host(self) -> None:
        for tensor, host in self._slots:
            tensor.data = host

    def device_tensors(self) -> list[torch.Tensor]:
        return [tensor.data for tensor, _ in self._slots]


class HostResident:
    """A network whose weights live in host memory and visit `device` on demand.

    `to_device()` copies every tensor to the device (no-op when there); `to_host()` drops the
    device copies. On a CPU device both are no-ops: host memory is the device. `make_room`, when
    set, is called before each visit (e.g. to park a DiT that leaves too little of a device budget).
    """

    def __init__(self, module: nn.Module, device: torch.device):
        self.module = module
        self.device = device
        self.make_room: Callable[[], None] | None = None
        self._copies = HostCopies(module_tensors([module]), device)
        self.on_device = device.type == "cpu"

    def to_device(self) -> nn.Module:
        if not self.on_device:
            if self.make_room is not None:
                self.make_room()
            self._copies.to_device()
            self.on_device = True
        return self.module

    def to_host(self) -> None:
        if self.on_device and self.device.type != "cpu":
            self._copies.to_host()
            self.on_device = False


def module_tensors(modules: Iterable[nn.Module]) -> Iterator[torch.Tensor]:
    """Every parameter and buffer of `modules`."""
    for module in modules:
        yield from module.parameters()
        yield from module.buffers()


class Placement(Protocol):
    """Where a network lives between uses: HostResident, or wan_engine.swap.BlockStreamer."""

    def to_device(self) -> nn.Module: ...

    def to_host(self) -> None: ...


class Experts:
    """The denoising networks of one model by expert name ("main", or "high" and "low").

    When the experts take turns, each lives in host memory and only the one asked for by
    `activate` sits on the device; otherwise all stay on the device. With `placements` (block
    streaming under a device budget) each network is placed by its own: only the active one has
    anything on the device.
    """

    def __init__(
        self,
        networks: dict[str, nn.Module],
        device: torch.device,
        take_turns: bool,
        placements: dict[str, Placement] | None = None,
    ):
        self.device = device
        self.networks = dict(networks)
        self._residents: dict[str, Placement] = dict(placements or {})
        self.compiled = False  # the networks' blocks are torch.compile'd (see first_compiled_run)
        self._shapes_run: set[tuple[int, ...]] = set()
        if take_turns:
            self.take_turns()

    @property
    def taking_turns(self) -> bool:
        return bool(self._residents)

    @property
    def streaming(self) -> bool:
        """Some network streams blocks from host memory (wan_engine.swap, a device budget)."""
        return any(getattr(placement, "streamed_blocks", 0) for placement in self._residents.values())

    def first_compiled_run(self, shape: Sequence[int]) -> bool:
        """True the first time compiled networks run on latents of `shape` (that run compiles)."""
        if not self.compiled or tuple(shape) in self._shapes_run:
            return False
        self._shapes_run.add(tuple(shape))
        return True

    def take_turns(self) -> None:
        """Switch to one-at-a-time residency (the memory-saving policy); idempotent. A single
        network, or a CPU device, has nothing to gain from it."""
        if self._residents or self.device.type == "cpu" or len(self.networks) < 2:
            return
        self._residents = {name: HostResident(net, self.device) for name, net in self.networks.items()}
        release_cached_memory(self.device)

    def activate(self, name: str) -> nn.Module:
        """The network `name`, on the device (sending the others back to host memory if needed)."""
        if name not in self.networks:
            raise KeyError(f"no expert {name!r}; this model has {', '.join(self.networks)}")
        if self._residents:
            for other, resident in self._residents.items():
                if other != name:
                    resident.to_host()
            return self._residents[name].to_device()
        return self.networks[name]

    def to_host(self) -> None:
        """Park every network in host memory (page-locked on CUDA), e.g. while another model runs."""
        if self._residents:
            for resident in self._residents.values():
                resident.to_host()
        elif self.device.type != "cpu":
            for net in self.networks.values():
                for tensor in module_tensors([net]):
                    tensor.data = tensor.data.to("cpu").pin_memory()
            release_cached_memory(self.device)

    def to_device(self) -> None:
        """Undo `to_host`: networks that do not take turns go back to the device."""
        if not self._residents:
            for net in self.networks.values():
                net.to(self.device)
