"""torchvision as the reference of our RAFT (wan_engine/nn/raft.py), for tests/test_raft.py and
bench/raft.py.

torchvision is not installed: its compiled operators do not load beside this machine's CPU build of
torch, and transformers, finding it installed, would import it and fail. scripts/test.sh unpacks its
wheel (the version made for this torch) into .venv/reference/ instead, and its pure-Python modules are
imported from there without the package's __init__ (which registers those operators).
"""
from __future__ import annotations

import importlib
import sys
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

REFERENCE = Path(__file__).resolve().parent.parent / ".venv" / "reference" / "torchvision"


@contextmanager
def torchvision_modules() -> Iterator[Callable[[str], types.ModuleType]]:
    """Import torchvision modules from the unpacked wheel, the package itself left unexecuted; the
    stand-in package is removed afterwards (transformers looks for torchvision by its import spec)."""
    assert REFERENCE.is_dir(), f"{REFERENCE} is missing: scripts/test.sh unpacks torchvision there"
    package = types.ModuleType("torchvision")
    package.__path__ = [str(REFERENCE)]
    sys.modules["torchvision"] = package
    try:
        yield importlib.import_module
    finally:
        for name in [key for key in sys.modules if key == "torchvision" or key.startswith("torchvision.")]:
            del sys.modules[name]


def torchvision_names(key: str) -> str | None:
    """The released RAFT's key -> torchvision's (None: the second name of a shared norm)."""
    replacements = [
        ("fnet.", "feature_encoder."), ("cnet.", "context_encoder."),
        ("update_block.encoder.convc1.", "update_block.motion_encoder.convcorr1.0."),
        ("update_block.encoder.convc2.", "update_block.motion_encoder.convcorr2.0."),
        ("update_block.encoder.convf1.", "update_block.motion_encoder.convflow1.0."),
        ("update_block.encoder.convf2.", "update_block.motion_encoder.convflow2.0."),
        ("update_block.encoder.conv.", "update_block.motion_encoder.conv.0."),
        ("update_block.mask.0.", "mask_predictor.convrelu.0."), ("update_block.mask.2.", "mask_predictor.conv."),
    ]
    for gate in "zrq":
        for half in "12":
            replacements.append((f"update_block.gru.conv{gate}{half}.",
                                 f"update_block.recurrent_block.convgru{half}.conv{gate}."))
    for old, new in replacements:
        if key.startswith(old):
            key = new + key[len(old):]
            break
    parts = key.split(".")
    if parts[0] in ("feature_encoder", "context_encoder"):
        if parts[1] in ("conv1", "norm1"):
            return ".".join([parts[0], "convnormrelu", "0" if parts[1] == "conv1" else "1", *parts[2:]])
        if parts[1] == "conv2":
            return ".".join([parts[0], "conv", *parts[2:]])
        block, member = parts[:3], parts[3]
        if member == "norm3":
            return None
        renamed = {"conv1": "convnormrelu1.0", "norm1": "convnormrelu1.1", "conv2": "convnormrelu2.0",
                   "norm2": "convnormrelu2.1"}.get(member, member)
        return ".".join([*block, renamed, *parts[4:]])
    return key


def reference_raft(state: dict[str, torch.Tensor], raft: types.ModuleType) -> torch.nn.Module:
    """torchvision's raft_large (from `raft`, its optical_flow.raft module) holding `state`, a state of
    ours."""
    reference = raft.raft_large(weights=None).eval()
    mapped = {torchvision_names(key): value for key, value in state.items() if torchvision_names(key) is not None}
    reference.load_state_dict(mapped, strict=True)
    return reference
