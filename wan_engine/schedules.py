"""Sampling grids of the flow samplers, in numpy only: what the step plan, the LoRA multiplier
schedule and a torch-free request check need to know about a sampler (its timesteps), without
importing torch. wan_engine.sampling builds its samplers on these grids.

    unipc  linspace(0.999, 0, n + 1)[:n], shifted; timesteps truncated to integers
           (Wan's FlowUniPCMultistepScheduler; 0.999 is its sigma_max, stored in float32)
    dpm++  linspace(1, 0, n + 1)[:n], shifted; timesteps truncated to integers
           (Wan's get_sampling_sigmas + FlowDPMSolverMultistepScheduler)
    euler  linspace(1, 0.001, n), shifted; float timesteps (Wan2GP's euler loop)
"""
from __future__ import annotations

import numpy as np

from wan_engine.errors import InvalidRequest, echo

NUM_TRAIN_TIMESTEPS = 1000
DEFAULT_SOLVER = "unipc"  # what Wan2GP runs for sample_solver ""
# Wan builds the UniPC grid from sigma_max = 1 - 1/1000 held in a float32 tensor.
_UNIPC_SIGMA_MAX = float(np.float32(1.0 - 1.0 / NUM_TRAIN_TIMESTEPS))


def unipc_sigmas(num_steps: int) -> np.ndarray:
    return np.linspace(_UNIPC_SIGMA_MAX, 0.0, num_steps + 1)[:num_steps]


def dpm_sigmas(num_steps: int) -> np.ndarray:
    return np.linspace(1.0, 0.0, num_steps + 1)[:num_steps]


def euler_sigmas(num_steps: int) -> np.ndarray:
    return np.linspace(1.0, 1.0 / NUM_TRAIN_TIMESTEPS, num_steps)


# solver name -> (unshifted grid, whether its timesteps are truncated to integers)
GRIDS = {"unipc": (unipc_sigmas, True), "euler": (euler_sigmas, False), "dpm++": (dpm_sigmas, True)}
SOLVERS = tuple(GRIDS)


def shift_sigmas(sigmas: np.ndarray, shift: float) -> np.ndarray:
    """Wan's time shift: sigma' = shift * sigma / (1 + (shift - 1) * sigma). Keeps 0 and 1 fixed."""
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def solver_name(name: str) -> str:
    """The solver a Wan2GP `sample_solver` value names ("" is unipc); InvalidRequest otherwise."""
    solver = name or DEFAULT_SOLVER
    if solver not in GRIDS:
        raise InvalidRequest("sample_solver", f"unknown sampler {echo(name)}; known: {', '.join(SOLVERS)}")
    return solver


def check_schedule(num_steps: int, shift: float) -> None:
    if num_steps < 1:
        raise InvalidRequest("num_inference_steps", f"must be at least 1, got {num_steps}")
    if not shift > 0:
        raise InvalidRequest("flow_shift", f"must be positive, got {shift}")


def shifted_sigmas(solver: str, num_steps: int, shift: float) -> np.ndarray:
    """[num_steps] float64: the solver's grid after the shift (without the final 0)."""
    check_schedule(num_steps, shift)
    grid, _ = GRIDS[solver_name(solver)]
    return shift_sigmas(grid(num_steps), shift)


def timesteps(solver: str, num_steps: int, shift: float) -> np.ndarray:
    """[num_steps] float32: what the network is conditioned on at each step (sigma * 1000,
    truncated as the reference schedulers cast them to int64 where they do)."""
    _, truncated = GRIDS[solver_name(solver)]
    scaled = shifted_sigmas(solver, num_steps, shift) * NUM_TRAIN_TIMESTEPS
    return (np.trunc(scaled) if truncated else scaled).astype(np.float32)
