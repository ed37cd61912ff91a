"""Guidance phases: which expert runs and with which CFG scale, step by step.

Wan2GP splits the denoising trajectory into 1 to 3 guidance phases at timestep thresholds:

- phase 1 runs while t >= switch_threshold, with guidance_scale;
- phase 2 (guidance_phases >= 2) runs while switch_threshold2 <= t < switch_threshold, with
  guidance2_scale;
- phase 3 (guidance_phases == 3) runs while t < switch_threshold2, with guidance3_scale.

Timesteps only decrease, so once a phase ends it never comes back.

A dual-expert model (Wan 2.2 A14B) hands over from the high-noise to the low-noise expert at the
start of phase `model_switch_phase + 1`: with model_switch_phase = 1 the switch is at
switch_threshold (the usual 2-phase Wan 2.2 setup), with model_switch_phase = 2 (3 phases only) it
is at switch_threshold2, and with model_switch_phase = 3 it never happens: the high-noise expert runs
every step, as in Wan2GP, which switches when entering phase `model_switch_phase + 1`. Single-expert
models run their one network ("main") in every phase.

One deliberate difference from Wan2GP: Wan2GP moves to the next phase when t <= threshold, whereas
the official Wan 2.2 code and diffusers' WanPipeline keep the high-noise expert while
t >= boundary. This module follows the latter (a phase ends when t drops *below* its threshold);
the two only differ for a step whose timestep equals the threshold exactly.

The plan also tells the pipeline when the unconditional pass can be skipped (guidance 1.0) and
gives the LoRA code the number of steps in each phase (multiplier strings are per phase).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from wan_engine.errors import InvalidRequest

MAX_PHASES = 3
SINGLE_EXPERT = "main"
HIGH_NOISE_EXPERT = "high"
LOW_NOISE_EXPERT = "low"


@dataclass(frozen=True)
class StepPlan:
    """What happens at one denoising step."""

    step: int  # 0-based index into the sampler's timesteps
    timestep: float
    phase: int  # 1-based guidance phase
    expert: str  # "main", "high" or "low"
    guidance: float  # CFG scale of the phase

    @property
    def needs_unconditional(self) -> bool:
        """A guidance of 1.0 makes CFG return the conditional prediction: one forward suffices."""
        return self.guidance != 1.0


@dataclass(frozen=True)
class PhaseSettings:
    """The Wan2GP guidance-phase knobs, with the request's field names. The defaults are neutral
    (one phase, no CFG); real defaults come from the model definition (schema.resolve)."""

    guidance_phases: int = 1
    guidance_scale: float = 1.0
    guidance2_scale: float = 1.0
    guidance3_scale: float = 1.0
    switch_threshold: float = 0.0
    switch_threshold2: float = 0.0
    model_switch_phase: int = 1

    @classmethod
    def from_values(cls, values: Mapping[str, Any]) -> PhaseSettings:
        """Pick the phase fields out of resolved parameters (see schema.resolve)."""
        return cls(
            guidance_phases=int(values["guidance_phases"]),
            guidance_scale=float(values["guidance_scale"]),
            guidance2_scale=float(values["guidance2_scale"]),
            guidance3_scale=float(values["guidance3_scale"]),
            switch_threshold=float(values["switch_threshold"]),
            switch_threshold2=float(values["switch_threshold2"]),
            model_switch_phase=int(values["model_switch_phase"]),
        )

    def validate(self, dual_expert: bool) -> None:
        """Raise InvalidRequest naming the field when the settings cannot describe a generation."""
        if not 1 <= self.guidance_phases <= MAX_PHASES:
            raise InvalidRequest("guidance_phases", f"must be 1, 2 or 3, got {self.guidance_phases}")
        for name in ("guidance_scale", "guidance2_scale", "guidance3_scale"):
            if getattr(self, name) < 0:
                raise InvalidRequest(name, f"must not be negative, got {getattr(self, name)}")
        for name in ("switch_threshold", "switch_threshold2"):
            if not 0 <= getattr(self, name) <= 1000:
                raise InvalidRequest(name, f"is a timestep in [0, 1000], got {getattr(self, name)}")
        if self.guidance_phases == 3 and self.switch_threshold2 > self.switch_threshold:
            raise InvalidRequest(
                "switch_threshold2",
                f"phase 3 starts after phase 2, so it must not exceed switch_threshold "
                f"({self.switch_threshold2} > {self.switch_threshold})",
            )
        if dual_expert:
            if self.guidance_phases < 2:
                raise InvalidRequest(
                    "guidance_phases", "a dual-expert model needs 2 or 3 phases: the experts switch at a phase boundary"
                )
            if not (1 <= self.model_switch_phase < self.guidance_phases or self.model_switch_phase == MAX_PHASES):
                raise InvalidRequest(
                    "model_switch_phase",
                    f"the expert switch follows phase 1..{self.guidance_phases - 1} (3: never), "
                    f"got {self.model_switch_phase}",
                )

    def phase_of(self, timestep: float) -> int:
        """The guidance phase (1-based) that a timestep falls in."""
        phase = 1
        if self.guidance_phases >= 2 and timestep < self.switch_threshold:
            phase = 2
        if self.guidance_phases >= 3 and timestep < self.switch_threshold2:
            phase = 3
        return phase

    def guidance_of(self, phase: int) -> float:
        return (self.guidance_scale, self.guidance2_scale, self.guidance3_scale)[phase - 1]


def plan_steps(timesteps: Sequence[float], settings: PhaseSettings, dual_expert: bool) -> list[StepPlan]:
    """The per-step plan for a sampler's timesteps (after validating the settings)."""
    settings.validate(dual_expert)
    plan = []
    for step, t in enumerate(timesteps):
        timestep = float(t)
        phase = settings.phase_of(timestep)
        if not dual_expert:
            expert = SINGLE_EXPERT
        elif phase <= settings.model_switch_phase:
            expert = HIGH_NOISE_EXPERT
        else:
            expert = LOW_NOISE_EXPERT
        plan.append(StepPlan(step, timestep, phase, expert, settings.guidance_of(phase)))
    return plan


def steps_per_phase(plan: Sequence[StepPlan], guidance_phases: int) -> list[int]:
    """How many steps each of the `guidance_phases` phases got (a phase may get none)."""
    counts = [0] * guidance_phases
    for step in plan:
        counts[step.phase - 1] += 1
    return counts
