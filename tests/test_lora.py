"""LoRA: key formats, multiplier strings, application in the forward path, exact removal."""
from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from diffusers.loaders.lora_conversion_utils import _convert_non_diffusers_wan_lora_to_diffusers
from safetensors.torch import save_file
from torch import nn
from torch.nn.utils import parametrize

from wan_engine.errors import InvalidRequest
from wan_engine.lora import (
    LoraWeights,
    applied_loras,
    check_loras_fit,
    load_lora,
    lora_multiplier_schedule,
    parse_lora_state_dict,
)
from wan_engine.nn.dit import TINY_DIT, WanDiT
from wan_engine.phases import PhaseSettings, plan_steps
from wan_engine.sampling import UniPCSampler
from wan_engine.testing import tiny_dit, tiny_lora_state

RANK, ALPHA = 4, 2.0
TARGETS = ("blocks.0.self_attn.q", "blocks.1.cross_attn.o", "blocks.0.ffn.0", "blocks.2.ffn.2", "head.head")


def make_dit(seed: int) -> WanDiT:
    torch.manual_seed(seed)
    return WanDiT(**TINY_DIT).eval()


def dit_inputs(t: float = 500.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(1, 16, 2, 4, 4, generator=gen)
    context = torch.randn(1, 8, TINY_DIT["text_dim"], generator=gen)
    return x, torch.tensor([t]), context


def run(model: nn.Module, t: float = 500.0) -> torch.Tensor:
    with torch.no_grad():
        return model(*dit_inputs(t))


def low_rank_parts(model: nn.Module, seed: int = 5) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """module -> (down [r, in], up [out, r]) sized for `model`'s layers."""
    gen = torch.Generator().manual_seed(seed)
    modules = dict(model.named_modules())
    parts = {}
    for name in TARGETS:
        linear = modules[name]
        down = torch.randn(RANK, linear.in_features, generator=gen) / linear.in_features**0.5
        up = torch.randn(linear.out_features, RANK, generator=gen) * 0.3
        parts[name] = (down, up)
    return parts


def down_up_alpha_state(parts, prefix: Callable[[str], str]) -> dict[str, torch.Tensor]:
    """`<prefix>.lora_down.weight`, `.lora_up.weight` and `.alpha` per module: the layout ComfyUI
    and kohya share; they differ only in how a module name becomes the prefix."""
    state = {}
    for name, (down, up) in parts.items():
        state[f"{prefix(name)}.lora_down.weight"] = down
        state[f"{prefix(name)}.lora_up.weight"] = up
        state[f"{prefix(name)}.alpha"] = torch.tensor(ALPHA)
    return state


def comfy_state(parts) -> dict[str, torch.Tensor]:
    return down_up_alpha_state(parts, lambda name: f"diffusion_model.{name}")


def kohya_state(parts) -> dict[str, torch.Tensor]:
    return down_up_alpha_state(parts, lambda name: "lora_unet_" + name.replace(".", "_"))


def peft_state(parts) -> dict[str, torch.Tensor]:
    """PEFT keeps alpha in its config, not in the weights; bake alpha/rank into lora_B here."""
    state = {}
    for name, (down, up) in parts.items():
        state[f"base_model.model.{name}.lora_A.default.weight"] = down
        state[f"base_model.model.{name}.lora_B.default.weight"] = up * (ALPHA / RANK)
    return state


def diffusers_state(parts) -> dict[str, torch.Tensor]:
    """The diffusers layout, produced by diffusers' own converter from the ComfyUI layout (which
    takes alpha for block layers only, so the head's alpha / rank is baked into its up matrix).
    The converter scales some tensors in place, hence the copies."""
    state = {key: tensor.clone() for key, tensor in comfy_state(parts).items()}
    alpha = state.pop("diffusion_model.head.head.alpha")
    state["diffusion_model.head.head.lora_up.weight"] = state["diffusion_model.head.head.lora_up.weight"] * alpha / RANK
    return _convert_non_diffusers_wan_lora_to_diffusers(state)


FORMATS = {"comfy": comfy_state, "kohya": kohya_state, "peft": peft_state, "diffusers": diffusers_state}


def merged(model: nn.Module, parts, multiplier: float) -> nn.Module:
    """A copy of `model` with W + m * (alpha / rank) * up @ down written into its weights."""
    copy_ = copy.deepcopy(model)
    modules = dict(copy_.named_modules())
    with torch.no_grad():
        for name, (down, up) in parts.items():
            modules[name].weight += multiplier * (ALPHA / RANK) * up @ down
    return copy_


def constant(value: float, loras: int = 1, steps: int = 1) -> list[list[float]]:
    return [[value] * steps for _ in range(loras)]


def test_a_lora_linear_computes_the_merged_weight_formula() -> None:
    model = make_dit(0)
    parts = low_rank_parts(model)
    q = model.blocks[0].self_attn.q
    x = torch.randn(3, 7, q.in_features)
    down, up = parts["blocks.0.self_attn.q"]
    expected = x @ (q.weight + 0.7 * (ALPHA / RANK) * up @ down).T + q.bias
    with applied_loras(model, [parse_lora_state_dict(comfy_state(parts), "l")], constant(0.7)), torch.no_grad():
        torch.testing.assert_close(q(x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("layout", FORMATS)
def test_each_key_format_gives_the_model_of_merged_weights(layout: str) -> None:
    model = make_dit(0)
    parts = low_rank_parts(model)
    lora = parse_lora_state_dict(FORMATS[layout](parts), layout)
    assert sorted(lora.low_rank) == sorted(n.replace(".", "_") if layout == "kohya" else n for n in TARGETS)
    with applied_loras(model, [lora], constant(0.8)) as active:
        assert active.unmatched == {}
        out = run(model)
    torch.testing.assert_close(out, run(merged(model, parts, 0.8)), rtol=1e-4, atol=1e-4)


def test_full_weight_and_bias_deltas_are_added_and_modulation_deltas_ignored() -> None:
    model = make_dit(0)
    gen = torch.Generator().manual_seed(2)
    block = model.blocks[0]
    state = {
        "diffusion_model.blocks.0.norm3.diff": torch.randn(block.norm3.weight.shape, generator=gen) * 0.1,
        "diffusion_model.blocks.0.norm3.diff_b": torch.randn(block.norm3.bias.shape, generator=gen) * 0.1,
        "diffusion_model.blocks.0.self_attn.q.diff_b": torch.randn(block.self_attn.q.bias.shape, generator=gen),
        "diffusion_model.blocks.0.cross_attn.k.diff": torch.randn(block.cross_attn.k.weight.shape, generator=gen) * 0.1,
        "diffusion_model.blocks.0.modulation.diff": torch.randn(block.modulation.shape, generator=gen),
    }
    lora = parse_lora_state_dict(state, "deltas")
    assert lora.ignored == ("diffusion_model.blocks.0.modulation.diff",)
    reference = copy.deepcopy(model)
    with torch.no_grad():
        ref_block = reference.blocks[0]
        ref_block.norm3.weight += 0.5 * state["diffusion_model.blocks.0.norm3.diff"]
        ref_block.norm3.bias += 0.5 * state["diffusion_model.blocks.0.norm3.diff_b"]
        ref_block.self_attn.q.bias += 0.5 * state["diffusion_model.blocks.0.self_attn.q.diff_b"]
        ref_block.cross_attn.k.weight += 0.5 * state["diffusion_model.blocks.0.cross_attn.k.diff"]
    with applied_loras(model, [lora], constant(0.5)):
        out = run(model)
    torch.testing.assert_close(out, run(reference), rtol=1e-5, atol=1e-5)


def test_after_the_block_weights_and_outputs_are_bit_exact_originals() -> None:
    model = make_dit(0)
    parts = low_rank_parts(model)
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    params = dict(model.named_parameters())
    baseline = run(model)
    lora = parse_lora_state_dict(
        {**comfy_state(parts), "diffusion_model.blocks.0.norm3.diff": torch.ones_like(model.blocks[0].norm3.weight)},
        "mixed",
    )
    with applied_loras(model, [lora], constant(1.0)):
        assert not torch.equal(run(model), baseline)
    assert dict(model.named_parameters()).keys() == params.keys()
    assert all(model.get_parameter(name) is p for name, p in params.items())
    assert all(torch.equal(model.state_dict()[name], t) for name, t in before.items())
    assert type(model.blocks[0].norm3) is nn.LayerNorm
    assert torch.equal(run(model), baseline)


def test_an_exception_inside_the_block_still_removes_the_loras() -> None:
    model = make_dit(0)
    baseline = run(model)
    lora = parse_lora_state_dict(comfy_state(low_rank_parts(model)), "l")
    with pytest.raises(RuntimeError), applied_loras(model, [lora], constant(1.0)):
        raise RuntimeError("generation failed")
    assert torch.equal(run(model), baseline)


class ProjectAndNorm(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(8, 8)
        self.norm = nn.LayerNorm(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x))


def test_loras_follow_a_model_converted_while_they_are_applied() -> None:
    """The engine may move an expert between devices mid-task; a dtype change takes the same path."""
    torch.manual_seed(0)
    model = ProjectAndNorm()
    gen = torch.Generator().manual_seed(4)
    down, up = torch.randn(2, 8, generator=gen), torch.randn(8, 2, generator=gen)
    norm_delta = torch.randn(8, generator=gen)
    state = {"proj.lora_down.weight": down, "proj.lora_up.weight": up, "norm.diff": norm_delta}
    reference = copy.deepcopy(model)
    with torch.no_grad():
        reference.proj.weight += 0.5 * up @ down
        reference.norm.weight += 0.5 * norm_delta
    x = torch.randn(3, 8, generator=gen, dtype=torch.float64)
    with applied_loras(model, [parse_lora_state_dict(state, "moved")], constant(0.5)), torch.no_grad():
        model.double()
        out = model(x)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, reference.double()(x), rtol=1e-5, atol=1e-5)  # reference merged in fp32


def two_phase_plan(steps: int = 6):
    settings = PhaseSettings(guidance_phases=2, switch_threshold=875.0)
    return plan_steps(UniPCSampler(steps, 5.0).timesteps, settings, dual_expert=True)


@pytest.mark.parametrize("multiplier,active_expert", [("1;0", "high"), ("0;1", "low")])
def test_phase_multipliers_reach_only_their_expert(multiplier: str, active_expert: str) -> None:
    experts = {"high": make_dit(0), "low": make_dit(1)}
    parts = low_rank_parts(experts["high"])
    plan = two_phase_plan()
    assert {s.expert for s in plan} == {"high", "low"}
    merged_experts = {name: merged(model, parts, 1.0) for name, model in experts.items()}
    bases = {name: copy.deepcopy(model) for name, model in experts.items()}
    schedule = lora_multiplier_schedule([multiplier], 1, plan, guidance_phases=2)
    lora = parse_lora_state_dict(comfy_state(parts), "phase")
    with applied_loras(list(experts.values()), [lora], schedule) as active:
        for step in plan:
            active.set_step(step.step)
            out = run(experts[step.expert], step.timestep)
            if step.expert == active_expert:
                torch.testing.assert_close(out, run(merged_experts[step.expert], step.timestep), rtol=1e-4, atol=1e-4)
            else:
                assert torch.equal(out, run(bases[step.expert], step.timestep))


def test_per_step_multipliers_change_the_output_step_by_step() -> None:
    model = make_dit(0)
    parts = low_rank_parts(model)
    plan = plan_steps(UniPCSampler(6, 3.0).timesteps, PhaseSettings(), dual_expert=False)
    schedule = lora_multiplier_schedule(["1,0.5,0"], 1, plan, guidance_phases=1)
    assert sorted(set(schedule[0])) == [0.0, 0.5, 1.0]
    references = {m: run(merged(model, parts, m)) for m in set(schedule[0])}
    lora = parse_lora_state_dict(comfy_state(parts), "steps")
    outputs = []
    with applied_loras(model, [lora], schedule) as active:
        for step in plan:
            active.set_step(step.step)
            out = run(model)
            torch.testing.assert_close(out, references[schedule[0][step.step]], rtol=1e-4, atol=1e-4)
            outputs.append(out)
    assert not torch.equal(outputs[0], outputs[-1])


def test_two_loras_on_one_layer_add_up_with_their_own_multipliers() -> None:
    model = make_dit(0)
    first, second = low_rank_parts(model, seed=1), low_rank_parts(model, seed=2)
    reference = merged(merged(model, first, 0.6), second, -0.4)
    loras = [parse_lora_state_dict(comfy_state(p), n) for p, n in ((first, "a"), (second, "b"))]
    with applied_loras(model, loras, [[0.6], [-0.4]]):
        torch.testing.assert_close(run(model), run(reference), rtol=1e-4, atol=1e-4)


def wan2gp_expand(values: list[float], steps: int) -> list[float]:
    """Wan2GP's expand_slist.expand_one, as the reference for spreading values over steps."""
    out, pos, inc = [], 0.0, len(values) / steps
    for _ in range(steps):
        out.append(values[int(pos)])
        pos += inc
    return out


@pytest.mark.parametrize("count,steps", [(1, 5), (2, 4), (2, 5), (3, 6), (3, 10), (4, 7), (5, 5)])
def test_per_step_values_spread_over_the_steps_as_wan2gp_does(count: int, steps: int) -> None:
    values = [float(v) for v in range(1, count + 1)]
    plan = plan_steps(UniPCSampler(steps, 3.0).timesteps, PhaseSettings(), dual_expert=False)
    text = ",".join(str(v) for v in values)
    assert lora_multiplier_schedule([text], 1, plan, 1) == [wan2gp_expand(values, steps)]


def test_per_phase_lists_spread_over_each_phase_only() -> None:
    plan = two_phase_plan(8)
    counts = [sum(s.phase == p for s in plan) for p in (1, 2)]
    schedule = lora_multiplier_schedule(["1,0.5;0.2,0"], 1, plan, guidance_phases=2)
    assert schedule == [wan2gp_expand([1.0, 0.5], counts[0]) + wan2gp_expand([0.2, 0.0], counts[1])]


@pytest.mark.parametrize("model_switch_phase,phase_values", [(1, ["1,0.5", "0", "0"]), (2, ["1,0.5", "1,0.5", "0"])])
def test_two_phase_values_on_three_phases_repeat_the_value_of_the_expert_spanning_two(
    model_switch_phase: int, phase_values: list[str]
) -> None:
    """Wan2GP reads "high;low" on a 3-phase generation per expert instead of refusing it."""
    settings = PhaseSettings(guidance_phases=3, switch_threshold=900.0, switch_threshold2=600.0,
                             model_switch_phase=model_switch_phase)
    plan = plan_steps(UniPCSampler(10, 5.0).timesteps, settings, dual_expert=True)
    counts = [sum(s.phase == p for s in plan) for p in (1, 2, 3)]
    assert min(counts) >= 2
    expected = [v for text, n in zip(phase_values, counts) for v in wan2gp_expand([float(x) for x in text.split(",")], n)]
    assert lora_multiplier_schedule(["1,0.5;0"], 1, plan, 3, model_switch_phase) == [expected]


def test_numbers_and_missing_multipliers_are_constant() -> None:
    plan = two_phase_plan(4)
    assert lora_multiplier_schedule([0.25], 2, plan, 2) == [[0.25] * 4, [1.0] * 4]


@pytest.mark.parametrize(
    "text,phases,steps",
    [
        ("1;0;1", 2, 6),  # three phase values, two phases
        ("1;0", 1, 6),  # phase values for a one-phase generation
        ("abc", 1, 6),
        ("1,,2", 1, 6),
        ("nan", 1, 6),
        ("1,2,3", 1, 2),  # more per-step values than steps
        ("1,0.5,0.2,0.1,0,0,0;1", 2, 8),  # more values than phase 1 has steps
    ],
)
def test_multiplier_strings_that_do_not_fit_are_invalid_requests(text: str, phases: int, steps: int) -> None:
    if phases == 2:
        plan = two_phase_plan(steps)
    else:
        plan = plan_steps(UniPCSampler(steps, 3.0).timesteps, PhaseSettings(), dual_expert=False)
    with pytest.raises(InvalidRequest) as err:
        lora_multiplier_schedule([text], 1, plan, phases)
    assert err.value.field == "lora_multipliers"


def test_more_multipliers_than_loras_is_an_invalid_request() -> None:
    with pytest.raises(InvalidRequest):
        lora_multiplier_schedule(["1", "1"], 1, two_phase_plan(), 2)


def test_a_lora_matching_no_layer_is_an_invalid_request_and_changes_nothing() -> None:
    model = make_dit(0)
    lora = parse_lora_state_dict(
        {
            "diffusion_model.foo.bar.lora_down.weight": torch.ones(2, 4),
            "diffusion_model.foo.bar.lora_up.weight": torch.ones(4, 2),
        },
        "stranger",
    )
    with pytest.raises(InvalidRequest, match="stranger"), applied_loras(model, [lora], constant(1.0)):
        pass
    assert all(not m._forward_hooks and not parametrize.is_parametrized(m) for m in model.modules())


def test_a_lora_for_another_model_size_is_an_invalid_request_and_installs_nothing() -> None:
    model = make_dit(0)
    good = parse_lora_state_dict(comfy_state(low_rank_parts(model)), "good")
    wrong = parse_lora_state_dict(
        {
            "diffusion_model.blocks.0.self_attn.k.lora_down.weight": torch.ones(2, 32),
            "diffusion_model.blocks.0.self_attn.k.lora_up.weight": torch.ones(32, 2),
        },
        "big",
    )
    with pytest.raises(InvalidRequest, match="big"), applied_loras(model, [good, wrong], constant(1.0, 2)):
        pass
    assert all(not m._forward_hooks for m in model.modules())


def test_keys_for_layers_the_model_lacks_are_reported_and_the_rest_applies() -> None:
    model = make_dit(0)
    parts = low_rank_parts(model)
    state = {
        **comfy_state(parts),
        "diffusion_model.blocks.0.cross_attn.k_img.lora_down.weight": torch.ones(RANK, 64),
        "diffusion_model.blocks.0.cross_attn.k_img.lora_up.weight": torch.ones(64, RANK),
    }
    reference = run(merged(model, parts, 1.0))
    with applied_loras(model, [parse_lora_state_dict(state, "i2v")], constant(1.0)) as active:
        assert active.unmatched == {"i2v": ["blocks.0.cross_attn.k_img"]}
        torch.testing.assert_close(run(model), reference, rtol=1e-4, atol=1e-4)


def test_check_loras_fit_reports_unmatched_keys_without_installing_anything() -> None:
    model = make_dit(0)
    state = {
        **comfy_state(low_rank_parts(model)),
        "diffusion_model.blocks.0.cross_attn.k_img.lora_down.weight": torch.ones(RANK, 64),
        "diffusion_model.blocks.0.cross_attn.k_img.lora_up.weight": torch.ones(64, RANK),
    }
    assert check_loras_fit(model, [parse_lora_state_dict(state, "i2v")]) == {"i2v": ["blocks.0.cross_attn.k_img"]}
    assert all(not m._forward_hooks and not parametrize.is_parametrized(m) for m in model.modules())


def test_check_loras_fit_refuses_a_lora_for_another_model_size() -> None:
    wrong = parse_lora_state_dict(
        {
            "diffusion_model.blocks.0.self_attn.k.lora_down.weight": torch.ones(2, 32),
            "diffusion_model.blocks.0.self_attn.k.lora_up.weight": torch.ones(32, 2),
        },
        "big",
    )
    with pytest.raises(InvalidRequest, match="big"):
        check_loras_fit(make_dit(0), [wrong])


def test_a_half_pair_is_an_invalid_request() -> None:
    with pytest.raises(InvalidRequest):
        parse_lora_state_dict({"diffusion_model.blocks.0.self_attn.q.lora_down.weight": torch.ones(2, 64)}, "half")


def test_set_step_outside_the_schedule_is_refused() -> None:
    model = make_dit(0)
    lora = parse_lora_state_dict(comfy_state(low_rank_parts(model)), "l")
    with applied_loras(model, [lora], constant(1.0, steps=3)) as active, pytest.raises(IndexError):
        active.set_step(3)


@pytest.mark.parametrize("layout", ["kohya", "peft"])
def test_tiny_lora_files_of_wan_engine_testing_apply_to_the_tiny_vace_dit(tmp_path: Path, layout: str) -> None:
    model = tiny_dit(vace=True).eval()
    path = tmp_path / f"tiny_{layout}.safetensors"
    save_file(tiny_lora_state(model, 3, layout), str(path))
    lora = load_lora(path)
    assert isinstance(lora, LoraWeights) and lora.name == f"tiny_{layout}" and lora.low_rank
    baseline = run(model)
    with applied_loras(model, [lora], constant(1.0)) as active:
        assert active.unmatched == {}
        assert not torch.allclose(run(model), baseline)
    assert torch.equal(run(model), baseline)
