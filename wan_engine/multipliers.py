"""LoRA multiplier strings (Wan2GP syntax) -> a multiplier per LoRA per denoising step. Torch-free:
the request check expands them too, so a bad string fails before any work.

- "0.8": the same value at every step;
- "1;0" / "0;1;0": one value per guidance phase, `;`-separated; the number of values must equal the
  generation's guidance_phases, except that two values on a 3-phase generation are read, as Wan2GP
  does, as high-noise;low-noise: the value of the side that spans two phases is repeated (phases
  1+2 with model_switch_phase 2, phases 2+3 otherwise);
- "1,0.8,0.6": values spread over the steps (of the whole generation, or of one phase when written
  inside a `;` part: "1,0.5;0"). As in Wan2GP, k values over n steps give step i the value
  number floor(i * k / n), so each value covers a run of consecutive steps. Unlike Wan2GP, which
  silently drops values when k > n, more values than steps is an error.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

from wan_engine.errors import InvalidRequest, echo
from wan_engine.phases import StepPlan, steps_per_phase


def lora_multiplier_schedule(
    multipliers: Sequence[str | float],
    num_loras: int,
    plan: Sequence[StepPlan],
    guidance_phases: int,
    model_switch_phase: int = 1,
) -> list[list[float]]:
    """Per LoRA, its multiplier at every step of `plan` ([num_loras][len(plan)]).

    LoRAs without a multiplier get 1.0. Raises InvalidRequest (field lora_multipliers) for a string
    that is not a number list, has the wrong number of phases, or more values than steps.
    """
    if len(multipliers) > num_loras:
        raise InvalidRequest("lora_multipliers", f"{len(multipliers)} multipliers for {num_loras} LoRAs")
    counts = steps_per_phase(plan, guidance_phases)
    texts = [*multipliers, *[1.0] * (num_loras - len(multipliers))]
    return [_expand_multiplier(text, counts, model_switch_phase) for text in texts]


def _expand_multiplier(text: str | float, counts: Sequence[int], model_switch_phase: int) -> list[float]:
    """One multiplier string -> its value at each step; counts = steps in each guidance phase."""
    if not isinstance(text, str):
        return [float(text)] * sum(counts)
    phases = text.split(";")
    if len(phases) == 1:
        return _spread(_numbers(text, text), sum(counts), text, "the generation")
    if len(phases) == 2 and len(counts) == 3:  # high;low on three phases
        phases = [phases[0], *phases] if model_switch_phase == 2 else [*phases, phases[1]]
    if len(phases) != len(counts):
        raise InvalidRequest(
            "lora_multipliers",
            f"{echo(text)} gives {len(phases)} phase values; this generation has {len(counts)} guidance phases",
        )
    values: list[float] = []
    for number, (part, steps) in enumerate(zip(phases, counts), start=1):
        values += _spread(_numbers(part, text), steps, text, f"phase {number}")
    return values


def _numbers(part: str, text: str) -> list[float]:
    try:
        values = [float(value) for value in part.split(",")]
    except ValueError:
        values = []
    if not values or not all(math.isfinite(v) for v in values):
        raise InvalidRequest("lora_multipliers", f"{echo(text)}: {echo(part.strip())} is not a list of numbers")
    return values


def _spread(values: list[float], steps: int, text: str, where: str) -> list[float]:
    """A single value covers every step; k values over n >= k steps give step i value[i*k // n]."""
    if len(values) == 1:
        return values * steps
    if len(values) > steps:
        raise InvalidRequest(
            "lora_multipliers", f"{echo(text)} lists {len(values)} per-step values for the {steps} steps of {where}"
        )
    return [values[i * len(values) // steps] for i in range(steps)]
