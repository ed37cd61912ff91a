"""Block streaming under a device budget (wan_engine.swap): the plan, bit-equal outputs against the
resident network (eager and compiled), and the engine running a streamed two-expert model. On the CPU
the device copies are real clones made by the same code path as on CUDA (no side stream)."""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from wan_engine import testing
from wan_engine.engine import Engine
from wan_engine.fp8 import meta_fp8_dit
from wan_engine.memory import tensor_bytes
from wan_engine.nn.dit import VACE_14B_LAYERS, VACE_IN_DIM, WAN21_14B, WanDiT
from wan_engine.nn.vae import WAN21_VAE, WanVAE
from wan_engine.request import GenerationRequest
from wan_engine.swap import WORKING_MEMORY_BYTES, BlockStreamer, execution_order, plan_resident_blocks

GIB = 2**30
CPU = torch.device("cpu")


def test_the_plan_keeps_blocks_in_order_while_they_fit_beside_two_streaming_buffers() -> None:
    blocks = [10, 10, 12, 10, 10]
    assert plan_resident_blocks(blocks, fixed_bytes=5, working_bytes=20, budget_bytes=77) == 5  # 5 + 20 + 52
    # 76 - 5 - 20 = 51 available: 2 x 12 buffers, then 10 + 10 -> 44; the third (12) does not fit
    assert plan_resident_blocks(blocks, fixed_bytes=5, working_bytes=20, budget_bytes=76) == 2
    assert plan_resident_blocks(blocks, fixed_bytes=5, working_bytes=20, budget_bytes=50) == 0
    with pytest.raises(ValueError, match="cannot hold"):
        plan_resident_blocks(blocks, fixed_bytes=5, working_bytes=20, budget_bytes=48)


def test_the_14b_vace_expert_in_fp8_fits_a_24_gib_budget_streaming_7_of_its_48_blocks() -> None:
    def build() -> WanDiT:
        return WanDiT(**WAN21_14B, vace_layers=VACE_14B_LAYERS, vace_in_dim=VACE_IN_DIM)

    network = meta_fp8_dit(build)
    with torch.device("meta"):
        vae_bytes = tensor_bytes([WanVAE(**WAN21_VAE).to(torch.bfloat16)])
    sizes = [tensor_bytes([block]) for block in execution_order(network)]
    fixed = tensor_bytes([network]) - sum(sizes) + vae_bytes
    resident = plan_resident_blocks(sizes, fixed, WORKING_MEMORY_BYTES, 24 * GIB)
    assert (len(sizes), resident) == (48, 41)
    assert fixed + WORKING_MEMORY_BYTES + 2 * max(sizes) + sum(sizes[:resident]) <= 24 * GIB
    assert plan_resident_blocks(sizes, fixed, WORKING_MEMORY_BYTES, 48 * GIB) == 48


def tiny(seed: int) -> WanDiT:
    model = testing.tiny_dit(vace=True)
    model.load_state_dict(testing.random_state(model, seed))
    return model.eval().requires_grad_(False)


@pytest.mark.parametrize("compiled", [False, True])
def test_a_streamed_dit_gives_the_resident_dits_output_bit_for_bit(compiled: bool) -> None:
    resident = tiny(7)
    generator = torch.Generator().manual_seed(7)
    x, context = torch.randn(1, 16, 3, 16, 16, generator=generator), torch.randn(1, 10, 32, generator=generator)
    controls = [torch.randn(1, VACE_IN_DIM, 3, 16, 16, generator=generator) for _ in range(2)]
    t = torch.tensor([600.0])
    with torch.no_grad():
        expected = resident(x, t, context, controls, [1.0, 0.6])
    network = copy.deepcopy(resident)
    if compiled:  # the streaming hooks run outside the compiled block forwards
        network.compile_blocks(backend="aot_eager")
    streamer = BlockStreamer(network, CPU, resident_blocks=2)
    order = execution_order(network)
    assert [id(b) for b in streamer.streamed] == [id(b) for b in order[2:]] and streamer.streamed_blocks == 4
    host = {id(t): t.data_ptr() for block in order[2:] for t in block.parameters()}
    seen: list[bool] = []  # while a streamed block runs, its weights are a device copy
    order[-1].register_forward_pre_hook(
        lambda block, args: seen.append(all(t.data_ptr() != host[id(t)] for t in block.parameters()))
    )
    model = streamer.to_device()
    with torch.no_grad():
        for forward in (1, 2):
            assert torch.equal(model(x, t, context, controls, [1.0, 0.6]), expected)
            # every streamed block was copied in once per forward; the first is prefetched for the next
            assert streamer.copies == 4 * forward + 1
            assert len(streamer._ready) <= 2
    assert seen == [True, True]
    streamer.to_host()
    assert all(t.data_ptr() == host[id(t)] for block in order[2:] for t in block.parameters())


def test_the_engine_streams_blocks_under_a_budget_and_makes_the_same_frames(tiny_models_dir: Path) -> None:
    request = GenerationRequest(
        model="tiny_vace_2_2", prompt="a fox in the snow", width=64, height=48, video_length=5, seed=2,
        num_inference_steps=3,
    )  # fmt: skip
    exact = Engine(tiny_models_dir, device="cpu", dtype=torch.float32).generate(request).frames
    network = testing.tiny_dit(vace=True)
    sizes = [tensor_bytes([block]) for block in execution_order(network)]
    with torch.device("meta"):
        vae_bytes = tensor_bytes([testing.tiny_vae()])
    fixed = tensor_bytes([network]) - sum(sizes) + vae_bytes
    budget = fixed + WORKING_MEMORY_BYTES + 2 * max(sizes) + sum(sizes[:3])
    engine = Engine(tiny_models_dir, device="cpu", dtype=torch.float32, gpu_memory_gb=budget / GIB)
    frames = engine.generate(request).frames
    experts = engine._loaded.networks.experts
    assert experts.streaming and experts.taking_turns
    assert {p.resident_blocks for p in experts._residents.values()} == {3}
    assert np.array_equal(frames, exact)
