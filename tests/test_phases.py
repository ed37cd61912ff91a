"""Guidance phases and the expert switch, the latter against diffusers' WanPipeline."""
from __future__ import annotations

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel

from wan_engine.errors import InvalidRequest
from wan_engine.phases import PhaseSettings, StepPlan, plan_steps, steps_per_phase
from wan_engine.sampling import EulerSampler, UniPCSampler, make_sampler


class WanGridUniPC(UniPCMultistepScheduler):
    """diffusers' UniPC, made to step on Wan's UniPC grid whatever set_timesteps is asked."""

    def set_timesteps(self, num_inference_steps=None, device=None, sigmas=None, mu=None):
        super().set_timesteps(device=device, sigmas=UniPCSampler.unshifted_sigmas(num_inference_steps))


class WanGridEuler(FlowMatchEulerDiscreteScheduler):
    """diffusers' flow-matching Euler on Wan2GP's Euler grid."""

    def set_timesteps(self, num_inference_steps=None, device=None, sigmas=None, mu=None, timesteps=None):
        super().set_timesteps(device=device, sigmas=EulerSampler.unshifted_sigmas(num_inference_steps))


def tiny_transformer(seed: int) -> WanTransformer3DModel:
    torch.manual_seed(seed)
    return WanTransformer3DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=4, text_dim=8, freq_dim=8,
        ffn_dim=16, num_layers=1, rope_max_seq_len=16,
    ).eval()


@pytest.fixture(scope="module")
def two_expert_pipeline() -> WanPipeline:
    return WanPipeline(
        tokenizer=None, text_encoder=None, vae=None, scheduler=WanGridUniPC(),
        transformer=tiny_transformer(0), transformer_2=tiny_transformer(1), boundary_ratio=0.875,
    )


def diffusers_experts(pipe: WanPipeline, solver: str, steps: int, shift: float, threshold: float) -> list[str]:
    """Which transformer WanPipeline calls at each step, with boundary_ratio = threshold / 1000
    (checking first that the pipeline steps through our sampler's timesteps)."""
    if solver == "unipc":
        pipe.scheduler = WanGridUniPC(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=shift)
    else:
        pipe.scheduler = WanGridEuler(shift=shift)
    pipe.register_to_config(boundary_ratio=threshold / 1000)
    calls: list[str] = []
    hooks = [
        pipe.transformer.register_forward_hook(lambda *_: calls.append("high")),
        pipe.transformer_2.register_forward_hook(lambda *_: calls.append("low")),
    ]
    try:
        pipe(
            prompt_embeds=torch.zeros(1, 4, 8), height=16, width=16, num_frames=1, num_inference_steps=steps,
            guidance_scale=1.0, output_type="latent", generator=torch.Generator().manual_seed(0),
        )
    finally:
        for hook in hooks:
            hook.remove()
    ours = make_sampler(solver, steps, shift).timesteps
    torch.testing.assert_close(pipe.scheduler.timesteps.to(torch.float32), ours, rtol=0, atol=1e-3)
    return calls


def two_phase(threshold: float, model_switch_phase: int = 1) -> PhaseSettings:
    return PhaseSettings(
        guidance_phases=2, guidance_scale=4.0, guidance2_scale=3.0, switch_threshold=threshold,
        model_switch_phase=model_switch_phase,
    )


@pytest.mark.parametrize("solver", ["unipc", "euler"])
@pytest.mark.parametrize("shift", [1.0, 2.0, 5.0, 12.0])
@pytest.mark.parametrize("threshold", [500.0, 875.0, 900.0, 950.0])
def test_expert_switch_step_matches_diffusers_wan_pipeline(
    two_expert_pipeline: WanPipeline, solver: str, shift: float, threshold: float
) -> None:
    steps = 10
    sampler = make_sampler(solver, steps, shift)
    plan = plan_steps(sampler.timesteps, two_phase(threshold), dual_expert=True)
    expected = diffusers_experts(two_expert_pipeline, solver, steps, shift, threshold)
    assert [s.expert for s in plan] == expected


@pytest.mark.parametrize("k", [1, 3, 6])
def test_a_timestep_equal_to_the_threshold_still_runs_the_high_noise_expert(
    two_expert_pipeline: WanPipeline, k: int
) -> None:
    sampler = UniPCSampler(8, 5.0)
    threshold = float(sampler.timesteps[k])
    plan = plan_steps(sampler.timesteps, two_phase(threshold), dual_expert=True)
    assert plan[k].expert == "high" and plan[k + 1].expert == "low"
    assert [s.expert for s in plan] == diffusers_experts(two_expert_pipeline, "unipc", 8, 5.0, threshold)


def test_three_phases_follow_both_thresholds_with_their_guidance() -> None:
    """The headless fleets' setup: 3 phases, 6 steps, guidance 3/1/1, thresholds 883/558, euler."""
    settings = PhaseSettings(
        guidance_phases=3, guidance_scale=3.0, guidance2_scale=1.0, guidance3_scale=1.0,
        switch_threshold=883.0, switch_threshold2=558.0, model_switch_phase=2,
    )
    sampler = EulerSampler(6, 5.0)
    plan = plan_steps(sampler.timesteps, settings, dual_expert=True)
    for step, t in zip(plan, sampler.timesteps.tolist()):
        phase = 1 + (t < 883.0) + (t < 558.0)
        assert step.phase == phase
        assert step.guidance == (3.0, 1.0, 1.0)[phase - 1]
        assert step.expert == ("high" if phase <= 2 else "low")
    assert set(steps_per_phase(plan, 3)) != {0}


def test_model_switch_phase_1_hands_over_at_the_first_threshold_of_three_phases() -> None:
    settings = PhaseSettings(
        guidance_phases=3, guidance_scale=3.0, switch_threshold=883.0, switch_threshold2=558.0, model_switch_phase=1
    )
    plan = plan_steps(EulerSampler(6, 5.0).timesteps, settings, dual_expert=True)
    assert [s.expert for s in plan] == ["high" if s.phase == 1 else "low" for s in plan]


def test_a_single_expert_model_runs_main_in_every_phase_with_the_phase_guidance() -> None:
    settings = PhaseSettings(guidance_phases=2, guidance_scale=6.0, guidance2_scale=2.0, switch_threshold=700.0)
    plan = plan_steps(UniPCSampler(10, 3.0).timesteps, settings, dual_expert=False)
    assert {s.expert for s in plan} == {"main"}
    assert [s.guidance for s in plan] == [6.0 if s.timestep >= 700.0 else 2.0 for s in plan]


def test_one_phase_uses_guidance_scale_everywhere_whatever_the_thresholds() -> None:
    settings = PhaseSettings(guidance_phases=1, guidance_scale=5.0, guidance2_scale=2.0, switch_threshold=900.0)
    plan = plan_steps(UniPCSampler(5, 3.0).timesteps, settings, dual_expert=False)
    assert {(s.phase, s.guidance) for s in plan} == {(1, 5.0)}


def test_unconditional_pass_is_needed_only_when_guidance_is_not_one() -> None:
    assert not StepPlan(0, 999.0, 1, "high", 1.0).needs_unconditional
    assert StepPlan(0, 999.0, 1, "high", 3.5).needs_unconditional


def test_steps_per_phase_counts_every_step_and_empty_phases() -> None:
    settings = PhaseSettings(guidance_phases=3, switch_threshold=999.5, switch_threshold2=999.5)
    plan = plan_steps(UniPCSampler(4, 2.0).timesteps, settings, dual_expert=False)
    counts = steps_per_phase(plan, 3)
    assert sum(counts) == 4 and counts[1] == 0


def test_plan_records_step_indices_and_timesteps() -> None:
    sampler = UniPCSampler(5, 2.0)
    plan = plan_steps(sampler.timesteps, PhaseSettings(), dual_expert=False)
    assert [s.step for s in plan] == list(range(5))
    assert [s.timestep for s in plan] == sampler.timesteps.tolist()


def test_phase_settings_are_read_from_resolved_parameters() -> None:
    values = dict(
        guidance_phases=3, guidance_scale=3, guidance2_scale=1, guidance3_scale=1.5, switch_threshold=883,
        switch_threshold2=558, model_switch_phase=2, flow_shift=5.0,
    )
    assert PhaseSettings.from_values(values) == PhaseSettings(3, 3.0, 1.0, 1.5, 883.0, 558.0, 2)


@pytest.mark.parametrize(
    "settings,dual_expert,field",
    [
        (PhaseSettings(guidance_phases=0), False, "guidance_phases"),
        (PhaseSettings(guidance_phases=4), False, "guidance_phases"),
        (PhaseSettings(guidance_phases=1), True, "guidance_phases"),
        (PhaseSettings(guidance_phases=2, switch_threshold=875, model_switch_phase=2), True, "model_switch_phase"),
        (PhaseSettings(guidance_phases=3, switch_threshold=500, switch_threshold2=600), False, "switch_threshold2"),
        (PhaseSettings(guidance_phases=2, switch_threshold=1200), False, "switch_threshold"),
        (PhaseSettings(guidance_scale=-1.0), False, "guidance_scale"),
    ],
)
def test_settings_that_cannot_describe_a_generation_are_invalid_requests(
    settings: PhaseSettings, dual_expert: bool, field: str
) -> None:
    with pytest.raises(InvalidRequest) as err:
        plan_steps(UniPCSampler(4, 2.0).timesteps, settings, dual_expert)
    assert err.value.field == field
