"""Block swapping: run a DiT that does not fit the device budget by streaming some of its blocks.

The blocks run in a fixed order (main block 0, VACE block 0, main blocks 1.., with each VACE block
right before the main block after the one that needs its hint: `execution_order`). The first
`resident` blocks of that order, and everything that is not a block (embeddings, head, ...), stay
on the device; every later block lives in host memory (page-locked on CUDA) and visits the device
for its own forward only:

- when block i starts, the next streamed block in the order is copied to the device on a side
  CUDA stream, so the copy of block i+1 overlaps the compute of block i;
- a streamed block is waited for (an event on the side stream) before it runs, and its device copy
  is dropped when the next block starts; `record_stream` keeps the allocator from reusing that
  memory before the compute stream is done with it.

So at most two streamed blocks are on the device at any time. On a CPU device the copies are plain
synchronous clones (there is no side stream): the same code path runs, and produces the same numbers
bit for bit, as tests check.

`plan_resident_blocks` decides how many blocks stay: the fixed part, the working memory of a
generation and two streaming buffers are taken from the budget first, then blocks in order while
they fit. The hooks that do the streaming are forward pre-hooks on the blocks themselves, so they
run outside a compiled block (`WanDiT.compile_blocks` compiles each block's forward only).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from wan_engine.memory import HostCopies, module_tensors


# Device memory a generation needs beside the weights when a DiT streams blocks: activations of one
# 14B forward at 480p x 81 frames (4.5 GiB measured on an H200, bench/dit.py), the VAE's chunk
# activations and allocator slack. An estimate: not yet measured under a budget.
WORKING_MEMORY_BYTES = 6 * 2**30


def execution_order(model: nn.Module) -> list[nn.Module]:
    """The DiT's blocks in the order a forward runs them (VACE blocks before their main block's successor)."""
    vace_after = dict(zip(getattr(model, "vace_layers", []), getattr(model, "vace_blocks", [])))
    order: list[nn.Module] = []
    for layer, block in enumerate(model.blocks):
        order.append(block)
        if layer in vace_after:
            order.append(vace_after[layer])
    return order


def plan_resident_blocks(block_bytes: Sequence[int], fixed_bytes: int, working_bytes: int, budget_bytes: int) -> int:
    """How many blocks (from the start of execution order) stay on the device within `budget_bytes`.

    All of them when everything fits; else as many as fit beside the fixed part, the working memory
    and two streaming buffers of the largest block. Raises ValueError when not even that fits."""
    available = budget_bytes - fixed_bytes - working_bytes
    if sum(block_bytes) <= available:
        return len(block_bytes)
    buffers = 2 * max(block_bytes)
    if available < buffers:
        need = (fixed_bytes + working_bytes + buffers) / 2**30
        raise ValueError(
            f"a device budget of {budget_bytes / 2**30:.1f} GiB cannot hold the network's fixed part, its working "
            f"memory and two streamed blocks ({need:.1f} GiB)"
        )
    resident, used = 0, buffers
    for size in block_bytes:
        if used + size > available:
            break
        resident, used = resident + 1, used + size
    return resident


class BlockStreamer:
    """A DiT placed for a device budget (see the module docstring): `to_device()` brings its fixed
    part and resident blocks to the device and returns the module, `to_host()` drops every device copy;
    the streamed blocks come and go during forward. Same interface as wan_engine.memory.HostResident."""

    def __init__(self, module: nn.Module, device: torch.device, resident_blocks: int):
        self.module = module
        self.device = device
        order = execution_order(module)
        self.resident_blocks = resident_blocks
        self.streamed = order[resident_blocks:]
        streamed_ids = {id(block) for block in self.streamed}
        block_tensors = {id(t) for block in self.streamed for t in module_tensors([block])}
        self._fixed = HostCopies([t for t in module_tensors([module]) if id(t) not in block_tensors], device)
        self._blocks = {id(block): HostCopies(list(module_tensors([block])), device) for block in self.streamed}
        self._next = {id(block): self.streamed[(i + 1) % len(self.streamed)] for i, block in enumerate(self.streamed)}
        # the streamed block to prefetch when each block of the order starts
        self._prefetch_at: dict[int, nn.Module] = {}
        upcoming = self.streamed[0] if self.streamed else None
        for block in reversed(order):
            if id(block) in streamed_ids:
                self._prefetch_at[id(block)] = self._next[id(block)]
            elif upcoming is not None:
                self._prefetch_at[id(block)] = upcoming
            if id(block) in streamed_ids:
                upcoming = block
        self._stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self._ready: dict[int, torch.cuda.Event | None] = {}  # streamed blocks on the device (or on their way)
        self._hooks = [block.register_forward_pre_hook(self._before_block) for block in order] if self.streamed else []
        self.on_device = False
        self.copies = 0  # streamed-block copies made (tests, benchmarks)

    @property
    def streamed_blocks(self) -> int:
        return len(self.streamed)

    def to_device(self) -> nn.Module:
        if not self.on_device:
            self._fixed.to_device()
            self.on_device = True
        return self.module

    def to_host(self) -> None:
        for key in list(self._ready):
            self._evict(key)
        if self.on_device:
            self._fixed.to_host()
            self.on_device = False

    def remove(self) -> None:
        """Uninstall the hooks and leave every tensor in host memory."""
        self.to_host()
        for hook in self._hooks:
            hook.remove()
        self._hooks = []

    def _before_block(self, block: nn.Module, args: tuple) -> None:
        key = id(block)
        if key in self._blocks:
            if key not in self._ready:
                self._fetch(block)
            event = self._ready[key]
            if event is not None:
                torch.cuda.current_stream(self.device).wait_event(event)
                for tensor in self._blocks[key].device_tensors():
                    tensor.record_stream(torch.cuda.current_stream(self.device))
        upcoming = self._prefetch_at.get(key)
        for other in list(self._ready):
            if other != key and (upcoming is None or other != id(upcoming)):
                self._evict(other)
        if upcoming is not None and id(upcoming) not in self._ready and id(upcoming) != key:
            self._fetch(upcoming)

    def _fetch(self, block: nn.Module) -> None:
        """Start copying a streamed block to the device (on the side stream on CUDA)."""
        copies = self._blocks[id(block)]
        if self._stream is None:
            copies.to_device(clone=True)
            self._ready[id(block)] = None
        else:
            with torch.cuda.stream(self._stream):
                copies.to_device()
                event = torch.cuda.Event()
                event.record(self._stream)
            self._ready[id(block)] = event
        self.copies += 1

    def _evict(self, key: int) -> None:
        self._blocks[key].to_host()
        del self._ready[key]

