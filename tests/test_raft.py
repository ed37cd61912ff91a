"""wan_engine/nn/raft.py against torchvision's RAFT (raft_large, the same network, whose weights
torchvision ported from the released raft-things checkpoint) with the same random weights, and the
colour wheel against torchvision's flow_to_image (tests/torchvision_reference.py)."""
from __future__ import annotations

import types
from collections.abc import Callable, Iterator

import numpy as np
import pytest
import torch

from torchvision_reference import reference_raft, torchvision_modules
from wan_engine.nn.raft import RAFT, colour_wheel, flow_to_image, pad_to_eight
from wan_engine.testing import raft_state


@pytest.fixture
def torchvision() -> Iterator[Callable[[str], types.ModuleType]]:
    with torchvision_modules() as load:
        yield load


def test_our_raft_gives_torchvisions_flow_with_the_same_weights(torchvision) -> None:
    state = raft_state(seed=4)
    ours = RAFT().eval()
    ours.load_state_dict(state, strict=True)
    reference = reference_raft(state, torchvision("torchvision.models.optical_flow.raft"))
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
