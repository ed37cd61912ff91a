"""wan_engine/nn/raft.py against torchvision's RAFT (raft_large, the same network, whose weights
torchvision ported from the released raft-things checkpoint) with the same random weights, and the
colour wheel against torchvision's flow_to_image.

torchvision is not installed: its compiled operators do not load beside this machine's CPU build of
torch, and transformers, finding it installed, would import it and fail. scripts/test.sh unpacks its
wheel (the version made for this torch) into .venv/reference/ instead, and its pure-Python modules are
imported from there without the package's __init__ (which registers those operators)."""
from __future__ import annotations

import importlib
import sys
import types
from collections.abc import Callable, Iterator

import numpy as np
import pytest
import torch

from conftest import REPO_ROOT
from wan_engine.nn.raft import RAFT, colour_wheel, flow_to_image, pad_to_eight
from wan_engine.testing import raft_state


REFERENCE = REPO_ROOT / ".venv" / "reference" / "torchvision"


@pytest.fixture
def torchvision() -> Iterator[Callable[[str], types.ModuleType]]:
    """Import a torchvision module from the unpacked wheel, the package itself left unexecuted; the
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


def reference_from(state: dict[str, torch.Tensor], raft: types.ModuleType) -> torch.nn.Module:
    reference = raft.raft_large(weights=None).eval()
    mapped = {torchvision_names(key): value for key, value in state.items() if torchvision_names(key) is not None}
    reference.load_state_dict(mapped, strict=True)
    return reference


def test_our_raft_gives_torchvisions_flow_with_the_same_weights(torchvision) -> None:
    state = raft_state(seed=4)
    ours = RAFT().eval()
    ours.load_state_dict(state, strict=True)
    reference = reference_from(state, torchvision("torchvision.models.optical_flow.raft"))
    generator = torch.Generator().manual_seed(5)
    first = torch.rand(1, 3, 128, 160, generator=generator) * 255
    second = torch.roll(first, shifts=(3, -5), dims=(2, 3))  # a frame moved, so the flow is not noise
    with torch.no_grad():
        got = ours(first, second, iterations=6)
        expected = reference(2 * first / 255 - 1, 2 * second / 255 - 1, num_flow_updates=6)[-1]
    assert got.shape == (1, 2, 128, 160)
    scale = expected.abs().max()
    assert scale > 0.1 and (got - expected).abs().max() <= 1e-4 * scale, ((got - expected).abs().max(), scale)


def test_the_colour_wheel_and_the_drawing_are_torchvisions(torchvision) -> None:
    utils = torchvision("torchvision.utils")
    assert np.array_equal(colour_wheel(), utils._make_colorwheel().numpy())
    flow = np.random.default_rng(3).normal(0, 4, (24, 32, 2)).astype(np.float32)
    expected = utils.flow_to_image(torch.from_numpy(flow).permute(2, 0, 1)).permute(1, 2, 0).numpy()
    got = flow_to_image(flow)
    assert got.dtype == np.uint8 and np.abs(got.astype(int) - expected.astype(int)).max() <= 1  # their eps differs
    assert (flow_to_image(np.zeros((4, 4, 2), np.float32)) == 255).all()  # no motion: white


def test_frames_are_padded_to_multiples_of_eight_by_repeating_their_edges() -> None:
    x = torch.arange(2 * 3 * 5 * 6, dtype=torch.float32).view(2, 3, 5, 6)
    padded, (left, right, top, bottom) = pad_to_eight(x)
    assert padded.shape == (2, 3, 8, 8) and (left, right, top, bottom) == (1, 1, 1, 2)
    assert torch.equal(padded[..., top: 8 - bottom, left: 8 - right], x)
    assert torch.equal(padded[..., 0, left: 8 - right], x[..., 0, :])  # the top row repeated


@pytest.mark.parametrize("prefix", ["module.", ""])
def test_the_released_layout_loads_with_or_without_dataparallels_prefix(tmp_path, prefix: str) -> None:
    from wan_engine.annotators import _load_raft

    state = {f"{prefix}{key}": value for key, value in raft_state(seed=1).items()
             if not key.endswith("num_batches_tracked")}  # older saves have no counters
    torch.save(state, tmp_path / "raft-things.pth")
    loaded = _load_raft(tmp_path / "raft-things.pth")
    assert torch.equal(loaded.cnet.layer2[0].norm3.weight, loaded.cnet.layer2[0].downsample[1].weight)
