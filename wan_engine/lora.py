"""LoRAs for the Wan DiT, applied for one generation and removed after it.

File formats (keys are normalised to the official module names of wan_engine.nn.dit):
- kohya / ComfyUI: `<module>.lora_down.weight`, `<module>.lora_up.weight`, optional `<module>.alpha`,
  with the prefix `diffusion_model.` (dotted names) or `lora_unet_` (dots written as underscores:
  `lora_unet_blocks_0_self_attn_q`);
- diffusers / PEFT: `<module>.lora_A.weight`, `<module>.lora_B.weight` (an adapter name such as
  `.default` is dropped), prefixes `transformer.`, `base_model.model.`, and diffusers module names
  (`attn1.to_q`, `ffn.net.0.proj`, `proj_out`, ...) renamed with the DiT's own diffusers key map;
- full deltas: `<module>.diff` (added to the weight) and `<module>.diff_b` or diffusers'
  `lora_B.bias` (added to the bias). `modulation.diff` keys are ignored, as Wan2GP does.

A low-rank pair adds m * (alpha / rank) * up @ down to the weight (scale 1 without alpha); a full
delta adds m * delta. Keys naming layers the model does not have (i2v-only `k_img`, `img_emb`, ...)
are skipped and reported; a LoRA none of whose keys fits the model is an error.

Multipliers (one string per LoRA, Wan2GP syntax):
- "0.8": the same value at every step;
- "1;0" / "0;1;0": one value per guidance phase, `;`-separated; the number of values must equal the
  generation's guidance_phases, except that two values on a 3-phase generation are read, as Wan2GP
  does, as high-noise;low-noise: the value of the side that spans two phases is repeated (phases
  1+2 with model_switch_phase 2, phases 2+3 otherwise);
- "1,0.8,0.6": values spread over the steps (of the whole generation, or of one phase when written
  inside a `;` part: "1,0.5;0"). As in Wan2GP, k values over n steps give step i the value
  number floor(i * k / n), so each value covers a run of consecutive steps. Unlike Wan2GP, which
  silently drops values when k > n, more values than steps is an error.

Application: `applied_loras(models, loras, schedule)` is a context manager that installs, on each
targeted layer, a forward hook adding the low-rank update in the forward path
(y = W x + b + sum_i m_i(step) * s_i * up_i(down_i x)) and, for full deltas, a parametrization
(weight = W + sum_i m_i(step) * delta_i). Nothing is written into the base weights, so on exit
(also after an exception) removing the hooks and parametrizations gives back the very same tensors,
bit for bit, without reloading anything. `set_step(step)` switches every LoRA to its multiplier
for that step at the cost of a few scalar writes.
"""
from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn
from torch.nn.utils import parametrize

from wan_engine.errors import InvalidRequest
from wan_engine.nn.dit import diffusers_to_official
from wan_engine.phases import StepPlan, steps_per_phase


# key suffix -> role; the longest matching suffix wins
_ROLES = {
    "lora_down.weight": "down",
    "lora_A.weight": "down",
    "lora_up.weight": "up",
    "lora_B.weight": "up",
    "alpha": "alpha",
    "diff": "weight_delta",
    "diff_b": "bias_delta",
    "lora_B.bias": "bias_delta",
}
_SUFFIXES = sorted(_ROLES, key=len, reverse=True)
_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "base_model.model.", "transformer.")
_UNDERSCORE_PREFIX = "lora_unet_"
_ADAPTER_NAME = re.compile(r"\.(lora_[AB])\.[^.]+\.(weight|bias)$")  # PEFT: lora_A.<adapter>.weight
_IGNORED = re.compile(r"(^|[._])modulation$")  # Wan2GP drops modulation.diff keys


@dataclass(frozen=True)
class LowRank:
    """One low-rank update: down [rank, in_features], up [out_features, rank]."""

    down: torch.Tensor
    up: torch.Tensor
    alpha: float | None = None

    @property
    def rank(self) -> int:
        return self.down.shape[0]

    @property
    def scale(self) -> float:
        """alpha / rank, the kohya convention; 1 when the file has no alpha."""
        return 1.0 if self.alpha is None else self.alpha / self.rank


@dataclass(frozen=True)
class LoraWeights:
    """A parsed LoRA file. Module names are official DiT names, or kohya underscore names that are
    matched against the model when applied.

    low_rank: module name -> LowRank; deltas: "<module>.weight" / "<module>.bias" -> full delta;
    ignored: keys that carry nothing applicable (unknown suffixes, modulation deltas).
    """

    name: str
    low_rank: dict[str, LowRank]
    deltas: dict[str, torch.Tensor]
    ignored: tuple[str, ...] = ()


def load_lora(path: str | Path) -> LoraWeights:
    """Read a LoRA safetensors file (named after its file stem)."""
    path = Path(path)
    return parse_lora_state_dict(load_file(str(path)), path.stem)


def parse_lora_state_dict(state: Mapping[str, torch.Tensor], name: str) -> LoraWeights:
    """Normalise any supported key layout (see the module docstring) into LoraWeights."""
    parts: dict[str, dict[str, torch.Tensor]] = {}
    deltas: dict[str, torch.Tensor] = {}
    ignored: list[str] = []
    for key, tensor in state.items():
        parsed = _split_key(key)
        if parsed is None:
            ignored.append(key)
            continue
        module, role = parsed
        if role in ("weight_delta", "bias_delta"):
            if _IGNORED.search(module):
                ignored.append(key)
            else:
                deltas[f"{module}.{'weight' if role == 'weight_delta' else 'bias'}"] = tensor
        else:
            parts.setdefault(module, {})[role] = tensor

    low_rank = {}
    for module, found in parts.items():
        if "down" not in found or "up" not in found:
            missing = "up" if "down" in found else "down"
            raise InvalidRequest("lora_names", f"LoRA {name!r}: {module} has no {missing} matrix")
        down, up = found["down"], found["up"]
        if down.ndim != 2 or up.ndim != 2 or up.shape[1] != down.shape[0]:
            raise InvalidRequest(
                "lora_names", f"LoRA {name!r}: {module} has down {list(down.shape)} and up {list(up.shape)}"
            )
        alpha = float(found["alpha"]) if "alpha" in found else None
        low_rank[module] = LowRank(down, up, alpha)
    return LoraWeights(name, low_rank, deltas, tuple(ignored))


def _split_key(key: str) -> tuple[str, str] | None:
    """(normalised module name, role) of a LoRA key, or None when the key has no known role."""
    key = _ADAPTER_NAME.sub(r".\1.\2", key)
    suffix = next((s for s in _SUFFIXES if key.endswith("." + s)), None)
    if suffix is None:
        return None
    module = key[: -len(suffix) - 1]
    if module.startswith(_UNDERSCORE_PREFIX):
        return module[len(_UNDERSCORE_PREFIX) :], _ROLES[suffix]
    stripped = True
    while stripped:
        stripped = False
        for prefix in _PREFIXES:
            if module.startswith(prefix):
                module, stripped = module[len(prefix) :], True
    return _official_module_name(module), _ROLES[suffix]


def _official_module_name(module: str) -> str:
    """Rename a diffusers module name with the DiT checkpoint key map (which works on tensor keys)."""
    renamed = diffusers_to_official(f"{module}.weight")
    return module if renamed is None else renamed[: -len(".weight")]


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
            f"{text!r} gives {len(phases)} phase values; this generation has {len(counts)} guidance phases",
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
        raise InvalidRequest("lora_multipliers", f"{text!r}: {part.strip()!r} is not a list of numbers")
    return values


def _spread(values: list[float], steps: int, text: str, where: str) -> list[float]:
    """A single value covers every step; k values over n >= k steps give step i value[i*k // n]."""
    if len(values) == 1:
        return values * steps
    if len(values) > steps:
        raise InvalidRequest(
            "lora_multipliers", f"{text!r} lists {len(values)} per-step values for the {steps} steps of {where}"
        )
    return [values[i * len(values) // steps] for i in range(steps)]


class _Multipliers:
    """The current multiplier of each LoRA, on the host and (lazily) on each device that uses it."""

    def __init__(self, count: int):
        self.values = [0.0] * count
        self.version = 0  # bumped when set changes the values, so hooks know their cached scales are stale
        self._tensors: dict[torch.device, torch.Tensor] = {}

    def set(self, values: Sequence[float]) -> None:
        values = [float(v) for v in values]
        if values == self.values:  # e.g. a constant multiplier: no copy, cached scales stay valid
            return
        self.values = values
        self.version += 1
        host = torch.tensor(self.values, dtype=torch.float32)
        for tensor in self._tensors.values():
            tensor.copy_(host)

    def on(self, device: torch.device) -> torch.Tensor:
        if device not in self._tensors:
            self._tensors[device] = torch.tensor(self.values, dtype=torch.float32, device=device)
        return self._tensors[device]


class _LowRankHook:
    """Forward hook of one nn.Linear: adds the (concatenated) low-rank updates of its LoRAs.

    All LoRAs on the layer share one down [R, in] and one up [out, R] (R = sum of ranks); per-rank
    scales m_lora * alpha_lora / rank_lora make it two matmuls whatever the number of LoRAs. The
    scales are recomputed only when the multipliers change (once per step), not at every forward.
    """

    def __init__(self, updates: Sequence[tuple[int, LowRank]], like: torch.Tensor, multipliers: _Multipliers):
        self.multipliers = multipliers
        self.loras = sorted({index for index, _ in updates})
        self.down = torch.cat([u.down for _, u in updates]).to(like.device, like.dtype)
        self.up = torch.cat([u.up for _, u in updates], dim=1).to(like.device, like.dtype)
        self.lora_of_rank = torch.tensor([i for i, u in updates for _ in range(u.rank)], device=like.device)
        self.rank_scale = torch.tensor(
            [u.scale for _, u in updates for _ in range(u.rank)], dtype=torch.float32, device=like.device
        )
        self._scale: torch.Tensor | None = None  # [R] in the input's dtype, for _scale_key
        self._scale_key: tuple[int, torch.device, torch.dtype] | None = None

    def __call__(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
        if not any(self.multipliers.values[i] for i in self.loras):
            return None
        x = args[0]
        if self.down.device != x.device or self.down.dtype != x.dtype:  # the layer moved since install
            self.down, self.up = self.down.to(x.device, x.dtype), self.up.to(x.device, x.dtype)
            self.lora_of_rank, self.rank_scale = self.lora_of_rank.to(x.device), self.rank_scale.to(x.device)
        key = (self.multipliers.version, x.device, x.dtype)
        if self._scale is None or self._scale_key != key:
            self._scale = (self.multipliers.on(x.device)[self.lora_of_rank] * self.rank_scale).to(x.dtype)
            self._scale_key = key
        return output + F.linear(F.linear(x, self.down) * self._scale, self.up)


class _DeltaParametrization(nn.Module):
    """tensor -> tensor + sum_i m_i * delta_i; the deltas are buffers, so they follow .to()."""

    def __init__(self, updates: Sequence[tuple[int, torch.Tensor]], like: torch.Tensor, multipliers: _Multipliers):
        super().__init__()
        self.multipliers = multipliers
        self.loras = [index for index, _ in updates]
        stacked = torch.stack([delta.reshape(like.shape) for _, delta in updates])
        self.register_buffer("deltas", stacked.to(like.device, like.dtype), persistent=False)

    def forward(self, original: torch.Tensor) -> torch.Tensor:
        result = original
        for index, delta in zip(self.loras, self.deltas):
            m = self.multipliers.values[index]
            if m:
                result = result + m * delta.to(original.dtype)
        return result


class _WeightDeltaHook:
    """Forward hook adding full weight deltas as a side branch, y + x (sum_i m_i delta_i)^T: for layers
    whose weight cannot take a parametrization in its own dtype (fp8 weights, wan_engine.fp8). The
    summed delta is rebuilt only when the multipliers change."""

    def __init__(self, updates: Sequence[tuple[int, torch.Tensor]], shape: torch.Size, like: torch.Tensor,
                 multipliers: _Multipliers):  # fmt: skip
        self.multipliers = multipliers
        self.loras = [index for index, _ in updates]
        self.deltas = [delta.reshape(shape).to(like.device, like.dtype) for _, delta in updates]
        self._weight: torch.Tensor | None = None
        self._version = -1

    def __call__(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
        values = self.multipliers.values
        if not any(values[i] for i in self.loras):
            return None
        x = args[0]
        if self._weight is None or self._version != self.multipliers.version or self._weight.device != x.device:
            self._weight = sum(values[i] * delta.to(x.device) for i, delta in zip(self.loras, self.deltas)).to(x.dtype)
            self._version = self.multipliers.version
        return output + F.linear(x, self._weight)


def _compute_like(tensor: torch.Tensor, module: nn.Module) -> torch.Tensor:
    """A tensor with the device and the compute dtype of `module`'s `tensor` (an fp8 layer computes
    in its `compute_dtype`), for the LoRA tensors that act on it."""
    dtype = getattr(module, "compute_dtype", tensor.dtype)
    return tensor if tensor.dtype == dtype else torch.empty(0, dtype=dtype, device=tensor.device)


@dataclass
class _Targets:
    """Where each LoRA lands in one model: Linear module name -> updates, parameter -> deltas."""

    low_rank: dict[str, list[tuple[int, LowRank]]] = field(default_factory=dict)
    deltas: dict[tuple[str, str], list[tuple[int, torch.Tensor]]] = field(default_factory=dict)


@dataclass
class ActiveLoras:
    """Handle given by applied_loras. `unmatched[lora name]` lists the LoRA's keys that no layer of
    the model(s) took (worth a log line; often i2v-only layers)."""

    schedule: list[list[float]]
    multipliers: _Multipliers
    unmatched: dict[str, list[str]]
    step: int = 0

    def set_step(self, step: int) -> None:
        """Give every LoRA its multiplier for denoising step `step` (0-based)."""
        if self.schedule and not 0 <= step < len(self.schedule[0]):
            raise IndexError(f"step {step} is outside the {len(self.schedule[0])}-step multiplier schedule")
        self.multipliers.set([row[step] for row in self.schedule])
        self.step = step


@contextmanager
def applied_loras(
    models: nn.Module | Sequence[nn.Module], loras: Sequence[LoraWeights], schedule: Sequence[Sequence[float]]
) -> Iterator[ActiveLoras]:
    """Apply `loras` to every model in `models` (e.g. both experts of Wan 2.2) for the duration of
    the block, with schedule[i][step] the multiplier of LoRA i at each step (see
    lora_multiplier_schedule). Starts at step 0; call set_step before each step.

    Everything is validated before anything is installed: a LoRA that matches no layer, or whose
    tensors do not fit the layer they name, raises InvalidRequest and leaves the models untouched.
    """
    models = [models] if isinstance(models, nn.Module) else list(models)
    if len(schedule) != len(loras):
        raise ValueError(f"{len(schedule)} multiplier rows for {len(loras)} LoRAs")
    targets, unmatched = _match(models, loras)
    active = ActiveLoras([list(row) for row in schedule], _Multipliers(len(loras)), unmatched)
    undo: list = []
    try:
        for model, found in zip(models, targets):
            _install(model, found, active.multipliers, undo)
        if loras and active.schedule[0]:
            active.set_step(0)
        yield active
    finally:
        for remove in reversed(undo):
            remove()


def check_loras_fit(models: nn.Module | Sequence[nn.Module], loras: Sequence[LoraWeights]) -> dict[str, list[str]]:
    """The checks of applied_loras without installing anything (no tensor is copied or moved):
    raises InvalidRequest for a LoRA that matches no layer or does not fit the layer it names;
    returns the unmatched keys per LoRA name, as ActiveLoras.unmatched."""
    models = [models] if isinstance(models, nn.Module) else list(models)
    return _match(models, loras)[1]


def _match(models: Sequence[nn.Module], loras: Sequence[LoraWeights]) -> tuple[list[_Targets], dict[str, list[str]]]:
    """Resolve every LoRA entry against every model, checking shapes; nothing is modified."""
    indexes = [_ModuleIndex(model) for model in models]
    targets = [_Targets() for _ in models]
    unmatched: dict[str, list[str]] = {}
    for lora_index, lora in enumerate(loras):
        used: set[str] = set()
        for index, found in zip(indexes, targets):
            for name, update in lora.low_rank.items():
                module_name = index.find(name)
                module = index.modules.get(module_name) if module_name else None
                if not isinstance(module, nn.Linear):
                    continue
                want = (module.out_features, module.in_features)
                if (update.up.shape[0], update.down.shape[1]) != want:
                    raise InvalidRequest(
                        "lora_names",
                        f"LoRA {lora.name!r}: {name} is {update.up.shape[0]}x{update.down.shape[1]}, "
                        f"the model's {module_name} is {want[0]}x{want[1]} (a LoRA for another model size?)",
                    )
                found.low_rank.setdefault(module_name, []).append((lora_index, update))
                used.add(name)
            for key, delta in lora.deltas.items():
                module_part, param_name = key.rsplit(".", 1)
                module_name = index.find(module_part)
                param = getattr(index.modules[module_name], param_name, None) if module_name else None
                if not isinstance(param, torch.Tensor):
                    continue
                if param.numel() != delta.numel():
                    raise InvalidRequest(
                        "lora_names",
                        f"LoRA {lora.name!r}: {key} has {list(delta.shape)}, the model's "
                        f"{module_name}.{param_name} has {list(param.shape)}",
                    )
                found.deltas.setdefault((module_name, param_name), []).append((lora_index, delta))
                used.add(key)
        names = [*lora.low_rank, *lora.deltas]
        if not used:
            shown = ", ".join(names[:4]) or "no usable keys"
            raise InvalidRequest("lora_names", f"LoRA {lora.name!r} matches no layer of the model ({shown})")
        if len(used) < len(names):
            unmatched[lora.name] = [n for n in names if n not in used]
    return targets, unmatched


def _install(model: nn.Module, found: _Targets, multipliers: _Multipliers, undo: list) -> None:
    modules = dict(model.named_modules())
    for module_name, updates in found.low_rank.items():
        module = modules[module_name]
        handle = module.register_forward_hook(_LowRankHook(updates, _compute_like(module.weight, module), multipliers))
        undo.append(handle.remove)
    for (module_name, param_name), updates in found.deltas.items():
        module = modules[module_name]
        target = getattr(module, param_name)
        like = _compute_like(target, module)
        if like is not target:  # an fp8 weight: the delta runs beside it
            handle = module.register_forward_hook(_WeightDeltaHook(updates, target.shape, like, multipliers))
            undo.append(handle.remove)
            continue
        delta = _DeltaParametrization(updates, target, multipliers)
        parametrize.register_parametrization(module, param_name, delta)
        undo.append(
            lambda module=module, param_name=param_name: parametrize.remove_parametrizations(
                module, param_name, leave_parametrized=False
            )
        )


class _ModuleIndex:
    """Finds a model's module by official name or by its kohya underscore spelling."""

    def __init__(self, model: nn.Module):
        self.modules = dict(model.named_modules())
        self._by_underscores = {name.replace(".", "_"): name for name in self.modules if name}

    def find(self, name: str) -> str | None:
        if name in self.modules and name:
            return name
        return self._by_underscores.get(name.replace(".", "_"))
