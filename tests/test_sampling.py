"""Samplers against their diffusers schedulers, fed the same deterministic pseudo-model."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import DPMSolverMultistepScheduler, FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

from wan_engine.errors import InvalidRequest
from wan_engine.sampling import (
    DPMPP2MSampler,
    EulerSampler,
    FlowSampler,
    UniPCSampler,
    classifier_free_guidance,
    make_sampler,
)
from wan_engine.schedules import shift_sigmas

STEPS_AND_SHIFTS = [(1, 5.0), (2, 3.0), (4, 1.0), (6, 5.0), (10, 2.0), (20, 12.0), (30, 8.0)]


class PseudoModel:
    """A fixed, timestep-dependent linear map of the sample: v = (0.5 + t/1000) * M x + c."""

    def __init__(self, channels: int = 4):
        gen = torch.Generator().manual_seed(7)
        self.mix = torch.randn(channels, channels, generator=gen, dtype=torch.float64) * 0.4
        self.bias = torch.randn(1, channels, 1, 3, 3, generator=gen, dtype=torch.float64) * 0.3

    def __call__(self, x: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        scale = 0.5 + float(t) / 1000.0
        v = scale * torch.einsum("ij,bj...->bi...", self.mix, x.double()) + self.bias
        return v.to(torch.float32)


def initial_noise() -> torch.Tensor:
    return torch.randn(1, 4, 2, 3, 3, generator=torch.Generator().manual_seed(3))


def run_ours(sampler: FlowSampler) -> torch.Tensor:
    model, x = PseudoModel(), initial_noise()
    for t in sampler.timesteps:
        x = sampler.step(model(x, t), x)
    return x


def run_diffusers(scheduler) -> torch.Tensor:
    model, x = PseudoModel(), initial_noise()
    for t in scheduler.timesteps:
        x = scheduler.step(model(x, t), t, x, return_dict=False)[0]
    return x


def diffusers_unipc(steps: int, shift: float) -> UniPCMultistepScheduler:
    scheduler = UniPCMultistepScheduler(
        num_train_timesteps=1000, solver_order=2, prediction_type="flow_prediction", use_flow_sigmas=True,
        flow_shift=shift, solver_type="bh2", predict_x0=True, lower_order_final=True, final_sigmas_type="zero",
    )
    scheduler.set_timesteps(sigmas=UniPCSampler.unshifted_sigmas(steps))
    return scheduler


def diffusers_euler(steps: int, shift: float) -> FlowMatchEulerDiscreteScheduler:
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)
    scheduler.set_timesteps(sigmas=EulerSampler.unshifted_sigmas(steps))
    return scheduler


def diffusers_dpmpp(steps: int, shift: float) -> DPMSolverMultistepScheduler:
    """DPMSolverMultistepScheduler cannot take custom sigmas, so Wan's dpm++ grid (which starts at
    sigma 1, unlike diffusers' flow grid) is installed after set_timesteps, as Wan2GP itself does."""
    scheduler = DPMSolverMultistepScheduler(
        num_train_timesteps=1000, solver_order=2, prediction_type="flow_prediction", use_flow_sigmas=True,
        flow_shift=shift, algorithm_type="dpmsolver++", solver_type="midpoint", lower_order_final=True,
        final_sigmas_type="zero",
    )
    scheduler.set_timesteps(steps)
    sigmas = shift_sigmas(DPMPP2MSampler.unshifted_sigmas(steps), shift)
    scheduler.sigmas = torch.from_numpy(np.concatenate([sigmas, [0.0]]).astype(np.float32))
    scheduler.timesteps = torch.from_numpy(sigmas * 1000).to(torch.int64)
    return scheduler


# Our sampler -> (the diffusers scheduler it must reproduce, tolerance on the timesteps). diffusers'
# UniPC and DPM++ timesteps are integers, so ours must equal them; its flow-match Euler keeps float32
# sigma * 1000, computed in another order, so they agree to rounding.
DIFFUSERS_REFERENCES = {
    UniPCSampler: (diffusers_unipc, 0.0),
    EulerSampler: (diffusers_euler, 1e-3),
    DPMPP2MSampler: (diffusers_dpmpp, 0.0),
}


@pytest.mark.parametrize("steps,shift", STEPS_AND_SHIFTS)
@pytest.mark.parametrize("cls", DIFFUSERS_REFERENCES, ids=lambda cls: cls.__name__)
def test_sampler_matches_its_diffusers_scheduler_step_for_step(cls: type[FlowSampler], steps: int, shift: float) -> None:
    make_reference, timestep_atol = DIFFUSERS_REFERENCES[cls]
    ours, ref = cls(steps, shift), make_reference(steps, shift)
    torch.testing.assert_close(ours.timesteps, ref.timesteps.to(torch.float32), rtol=0, atol=timestep_atol)
    torch.testing.assert_close(run_ours(ours), run_diffusers(ref), rtol=0, atol=1e-5)


@pytest.mark.parametrize("steps,shift", STEPS_AND_SHIFTS)
def test_unipc_grid_is_the_flow_grid_of_diffusers_wan_schedulers(steps: int, shift: float) -> None:
    """diffusers' DPM flow grid, shift(linspace(0.999, 0, n+1))[:n], is Wan's UniPC grid."""
    ref = DPMSolverMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=shift)
    ref.set_timesteps(steps)
    assert torch.equal(UniPCSampler(steps, shift).timesteps, ref.timesteps.to(torch.float32))


@pytest.mark.parametrize("cls", [UniPCSampler, EulerSampler, DPMPP2MSampler])
def test_schedules_decrease_from_near_one_to_zero(cls: type[FlowSampler]) -> None:
    sampler = cls(8, 3.0)
    sigmas = sampler.sigmas
    assert sigmas.shape == (9,) and sampler.timesteps.shape == (8,)
    assert sigmas[0] > 0.99 and sigmas[-1] == 0
    assert torch.all(sigmas[1:] < sigmas[:-1])


def test_shift_keeps_the_ends_and_pushes_sigmas_toward_noise() -> None:
    grid = np.linspace(0.0, 1.0, 11)
    shifted = shift_sigmas(grid, 5.0)
    assert shifted[0] == 0.0 and shifted[-1] == 1.0
    assert np.all(shifted[1:-1] > grid[1:-1])
    np.testing.assert_array_equal(shift_sigmas(grid, 1.0), grid)


def test_a_sampler_refuses_more_steps_than_it_was_made_for() -> None:
    sampler = EulerSampler(1, 1.0)
    x = initial_noise()
    sampler.step(x, x)
    with pytest.raises(RuntimeError):
        sampler.step(x, x)


def test_step_returns_the_dtype_of_the_sample() -> None:
    sampler = UniPCSampler(3, 2.0)
    x = initial_noise().to(torch.bfloat16)
    assert sampler.step(x, x).dtype == torch.bfloat16


def test_make_sampler_uses_wan2gp_solver_names() -> None:
    assert isinstance(make_sampler("unipc", 4, 2.0), UniPCSampler)
    assert isinstance(make_sampler("", 4, 2.0), UniPCSampler)
    assert isinstance(make_sampler("euler", 4, 2.0), EulerSampler)
    assert isinstance(make_sampler("dpm++", 4, 2.0), DPMPP2MSampler)


def test_unknown_sampler_name_is_an_invalid_request_listing_known_names() -> None:
    with pytest.raises(InvalidRequest) as err:
        make_sampler("ddim", 4, 2.0)
    assert err.value.field == "sample_solver" and "unipc" in str(err.value)


def test_zero_steps_is_an_invalid_request() -> None:
    with pytest.raises(InvalidRequest) as err:
        make_sampler("euler", 0, 2.0)
    assert err.value.field == "num_inference_steps"


def test_classifier_free_guidance_extrapolates_from_uncond_through_cond() -> None:
    cond, uncond = torch.tensor([2.0, 0.0]), torch.tensor([1.0, 1.0])
    torch.testing.assert_close(classifier_free_guidance(cond, uncond, 3.0), torch.tensor([4.0, -2.0]))
    torch.testing.assert_close(classifier_free_guidance(cond, uncond, 1.0), cond)
