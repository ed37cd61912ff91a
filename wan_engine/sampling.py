"""Flow-matching samplers for Wan: shifted sigma schedules, UniPC (bh2), Euler, DPM++ 2M, and CFG.

Wan is trained on rectified flow: x_sigma = (1 - sigma) * x0 + sigma * noise, and the network
predicts the velocity v = noise - x0, so x0 = x_sigma - sigma * v. Every sampler here consumes that
flow prediction. Sigmas run from (almost) 1 down to a final 0; the network is conditioned on
timestep = sigma * 1000.

The shift s warps a uniform grid toward the noisy end: sigma' = s * sigma / (1 + (s - 1) * sigma).

Each sampler keeps the grid that Wan (and Wan2GP, whose `sample_solver` names are used here) uses
for it (wan_engine.schedules, torch-free), so phase thresholds such as `switch_threshold = 875` land
on the same steps as there. The grids are computed with numpy in float64, exactly as those
references do, so the integer timesteps agree with them bit for bit.

Usage, one instance per generation (the multistep samplers keep history):

    sampler = make_sampler("unipc", num_steps=10, shift=2.0)
    for t in sampler.timesteps:            # [num_steps] float32
        v = model(x, t)
        x = sampler.step(v, x)
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod

import numpy as np
import torch

from wan_engine import schedules


def classifier_free_guidance(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """uncond + scale * (cond - uncond). At scale 1.0 the result is `cond`, so callers skip the
    unconditional forward entirely for such steps (see phases.StepPlan.needs_unconditional)."""
    return uncond + scale * (cond - uncond)


def _log_snr(sigma: float) -> float:
    """lambda = log(alpha / sigma) with alpha = 1 - sigma; +inf at sigma 0, -inf at sigma 1."""
    if sigma <= 0.0:
        return math.inf
    if sigma >= 1.0:
        return -math.inf
    return math.log(1.0 - sigma) - math.log(sigma)


class FlowSampler(ABC):
    """A sampler over flow predictions: a fixed schedule plus a stateful `step`.

    Attributes:
        num_steps: number of network evaluations.
        sigmas: [num_steps + 1] float64, decreasing, last value 0.
        timesteps: [num_steps] float32, what the network is conditioned on at each step.
        step_index: index of the next step (0 before the first call to `step`).
    """

    name: str

    def __init__(self, num_steps: int, shift: float):
        self.num_steps = num_steps
        self.shift = shift
        sigmas = schedules.shifted_sigmas(self.name, num_steps, shift)
        self.sigmas = torch.from_numpy(np.concatenate([sigmas, [0.0]]))
        self.timesteps = torch.from_numpy(schedules.timesteps(self.name, num_steps, shift))
        self.step_index = 0

    @classmethod
    def unshifted_sigmas(cls, num_steps: int) -> np.ndarray:
        """[num_steps] float64: this sampler's grid before the shift (wan_engine.schedules)."""
        return schedules.GRIDS[cls.name][0](num_steps)

    def step(self, model_output: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        """Advance `sample` [B,C,F,H,W] from sigmas[i] to sigmas[i+1] given the flow prediction
        `model_output` at sigmas[i]. Computes in float32, returns sample's dtype."""
        if self.step_index >= self.num_steps:
            raise RuntimeError(f"{self.name}: all {self.num_steps} steps were already taken")
        x = sample.to(torch.float32)
        v = model_output.to(torch.float32)
        out = self._update(v, x, self.step_index)
        self.step_index += 1
        return out.to(sample.dtype)

    @abstractmethod
    def _update(self, v: torch.Tensor, x: torch.Tensor, i: int) -> torch.Tensor:
        """The sample at sigmas[i+1] from the sample x and the flow prediction v at sigmas[i]."""

    def _sigma(self, i: int) -> float:
        return float(self.sigmas[i])


class EulerSampler(FlowSampler):
    """First-order: x_{i+1} = x_i + (sigma_{i+1} - sigma_i) * v_i (the exact flow ODE step for a
    constant velocity). Matches diffusers' FlowMatchEulerDiscreteScheduler on the same sigmas."""

    name = "euler"

    def _update(self, v: torch.Tensor, x: torch.Tensor, i: int) -> torch.Tensor:
        return x + (self._sigma(i + 1) - self._sigma(i)) * v


class _DataPredictionSampler(FlowSampler):
    """Multistep samplers that work on x0 predictions and keep the last two of them."""

    def __init__(self, num_steps: int, shift: float):
        super().__init__(num_steps, shift)
        self._x0_history: list[torch.Tensor] = []

    def _remember(self, x0: torch.Tensor) -> None:
        self._x0_history = [*self._x0_history[-1:], x0]


class DPMPP2MSampler(_DataPredictionSampler):
    """DPM-Solver++ 2M (multistep, midpoint form) on x0 = x - sigma * v.

    First order at the first step (no history) and at the last step (its target sigma is 0),
    second order in between, as diffusers' DPMSolverMultistepScheduler with lower_order_final and
    final_sigmas_type="zero" does.
    """

    name = "dpm++"

    def _update(self, v: torch.Tensor, x: torch.Tensor, i: int) -> torch.Tensor:
        sigma_s0, sigma_t = self._sigma(i), self._sigma(i + 1)
        m0 = x - sigma_s0 * v
        self._remember(m0)
        h = _log_snr(sigma_t) - _log_snr(sigma_s0)
        # alpha_t * (1 - e^-h): the weight of the data term in the exponential integrator
        data_weight = (1.0 - sigma_t) * -math.expm1(-h)
        first_order = i == 0 or i == self.num_steps - 1
        if first_order:
            return (sigma_t / sigma_s0) * x + data_weight * m0
        m1 = self._x0_history[0]
        h_prev = _log_snr(sigma_s0) - _log_snr(self._sigma(i - 1))
        d1_weight = 0.5 * h / h_prev  # 0.5 / r0, with r0 = h_prev / h; 0 when h_prev is infinite
        return (sigma_t / sigma_s0) * x + data_weight * (m0 + d1_weight * (m0 - m1))


class UniPCSampler(_DataPredictionSampler):
    """UniPC multistep, B(h) = e^h - 1 ("bh2"), order 2, predicting x0 (Wan's default sampler).

    Each step first corrects the sample it is given with the new model output (UniC, skipped at the
    first step), then predicts the next sample (UniP). The predictor order is 1 at the first step
    (warm-up) and at the last step (lower_order_final), 2 otherwise; the corrector reuses the order
    the previous predictor had. This is the update of diffusers' UniPCMultistepScheduler and Wan's
    FlowUniPCMultistepScheduler with solver_order=2, predict_x0=True, solver_type="bh2",
    lower_order_final=True, final_sigmas_type="zero" and no disabled corrector steps.
    """

    name = "unipc"

    def __init__(self, num_steps: int, shift: float):
        super().__init__(num_steps, shift)
        self._last_sample: torch.Tensor | None = None
        self._last_order = 0

    def _update(self, v: torch.Tensor, x: torch.Tensor, i: int) -> torch.Tensor:
        x0 = x - self._sigma(i) * v
        if self._last_sample is not None:
            x = self._correct(x0, i)
        self._remember(x0)
        order = min(2, self.num_steps - i, i + 1)
        self._last_sample, self._last_order = x, order
        return self._predict(x, i, order)

    def _bh_terms(self, s0: int, t: int) -> tuple[float, float, float, float]:
        """For a step from sigmas[s0] to sigmas[t]: h, e^-h - 1, and the b_1, b_2 coefficients of
        the B(h) = e^-h - 1 variant in the data-prediction parameterisation."""
        h = _log_snr(self._sigma(t)) - _log_snr(self._sigma(s0))
        hh = -h
        h_phi_1 = math.expm1(hh)
        b_h = h_phi_1
        phi_k = h_phi_1 / hh - 1.0
        b1 = phi_k / b_h
        b2 = (phi_k / hh - 0.5) * 2.0 / b_h
        return h, h_phi_1, b1, b2

    def _ratio(self, earlier: int, s0: int, h: float) -> float:
        """r_k = (lambda(sigmas[earlier]) - lambda(sigmas[s0])) / h."""
        return (_log_snr(self._sigma(earlier)) - _log_snr(self._sigma(s0))) / h

    def _predict(self, x: torch.Tensor, i: int, order: int) -> torch.Tensor:
        """UniP from sigmas[i] to sigmas[i+1]."""
        sigma_s0, sigma_t = self._sigma(i), self._sigma(i + 1)
        alpha_t = 1.0 - sigma_t
        h, h_phi_1, _, _ = self._bh_terms(i, i + 1)
        m0 = self._x0_history[-1]
        x_t = (sigma_t / sigma_s0) * x - alpha_t * h_phi_1 * m0
        if order == 2:
            d1 = (self._x0_history[0] - m0) / self._ratio(i - 1, i, h)
            x_t = x_t - alpha_t * h_phi_1 * 0.5 * d1  # rho_p = 1/2 for order 2
        return x_t

    def _correct(self, x0: torch.Tensor, i: int) -> torch.Tensor:
        """UniC: refine the sample that the previous predictor produced at sigmas[i], using the new
        x0 prediction `x0` made there."""
        assert self._last_sample is not None
        sigma_s0, sigma_t = self._sigma(i - 1), self._sigma(i)
        alpha_t = 1.0 - sigma_t
        h, h_phi_1, b1, b2 = self._bh_terms(i - 1, i)
        m0 = self._x0_history[-1]
        x_t = (sigma_t / sigma_s0) * self._last_sample - alpha_t * h_phi_1 * m0
        if self._last_order == 1:
            correction = 0.5 * (x0 - m0)
        else:
            rk = self._ratio(i - 2, i - 1, h)
            d1 = (self._x0_history[0] - m0) / rk
            # solve [[1, 1], [rk, 1]] @ (rho_0, rho_1) = (b1, b2)
            rho_0 = (b1 - b2) / (1.0 - rk)
            rho_1 = b1 - rho_0
            correction = rho_0 * d1 + rho_1 * (x0 - m0)
        return x_t - alpha_t * h_phi_1 * correction


SAMPLERS: dict[str, type[FlowSampler]] = {
    "unipc": UniPCSampler,
    "euler": EulerSampler,
    "dpm++": DPMPP2MSampler,
}


def make_sampler(name: str, num_steps: int, shift: float) -> FlowSampler:
    """A fresh sampler by Wan2GP `sample_solver` name ("" means "unipc", as in Wan2GP)."""
    return SAMPLERS[schedules.solver_name(name)](num_steps, shift)
