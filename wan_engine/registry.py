"""Model definitions (defaults/*.json, Wan2GP's format) -> what to build, which files to load, and
the sampling parameters of a request.

A definition file `defaults/<key>.json`:

    {"model": {"name", "architecture", "URLs", "URLs2", "modules", "group", "loras", "loras_multipliers"},
     "num_inference_steps", "guidance_scale", "guidance2_scale", "flow_shift", "switch_threshold", ...}

- `URLs`: the DiT file, given as a list of alternatives (Wan2GP lists the bf16 file and its
  quantized variants; quanto files are skipped since this engine does not load them), or as the key
  of another definition whose `URLs` it reuses. `URLs2`, when present, is the second (low-noise)
  expert of a Wan 2.2 A14B model, same forms; it makes the model dual-expert.
- `modules`: files merged into the DiT (VACE). Each entry is a list of alternatives (one module for
  every expert), a {"URLs": [...], "URLs2": [...]} pair (one module per expert), or the key of
  another definition whose modules it reuses.
- `group: "wan2_2"` puts the model in the Wan 2.2 family (else Wan 2.1); `architecture` picks the
  network configuration from ARCHITECTURES below.
- `loras` / `loras_multipliers` (inside "model" as in Wan2GP, or at the top level) are the LoRAs
  the model runs with unless a request names its own.
- Every other top-level key is a sampling default of the model.

A preset `defaults/presets/<name>.json` is `{"model": <definition key>, <sampling defaults>...}`:
another name for a definition, whose defaults override the definition's.

Files are looked up by file name (a URL by its last path component) in models_dir.
"""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from wan_engine.errors import InvalidRequest, UnknownModel, WeightsMissing
from wan_engine.phases import HIGH_NOISE_EXPERT, LOW_NOISE_EXPERT, SINGLE_EXPERT, PhaseSettings
from wan_engine.sampling import make_sampler

DEFAULT_DEFINITIONS_DIR = Path(__file__).resolve().parent.parent / "defaults"
PRESETS_FOLDER = "presets"

WAN21 = "wan2_1"
WAN22 = "wan2_2"

# What a request may leave out, with its type; explicit > definition (or preset) > family.
SAMPLING_FIELDS: dict[str, type] = {
    "num_inference_steps": int,
    "guidance_scale": float,
    "guidance2_scale": float,
    "guidance3_scale": float,
    "guidance_phases": int,
    "switch_threshold": float,
    "switch_threshold2": float,
    "model_switch_phase": int,
    "flow_shift": float,
    "sample_solver": str,
}
FAMILY_DEFAULTS: dict[str, dict[str, Any]] = {
    WAN21: dict(
        num_inference_steps=25, guidance_scale=7.5, guidance2_scale=7.5, guidance3_scale=7.5, guidance_phases=1,
        switch_threshold=0.0, switch_threshold2=0.0, model_switch_phase=1, flow_shift=5.0, sample_solver="unipc",
    ),
    WAN22: dict(
        num_inference_steps=10, guidance_scale=1.0, guidance2_scale=1.0, guidance3_scale=1.0, guidance_phases=2,
        switch_threshold=875.0, switch_threshold2=0.0, model_switch_phase=1, flow_shift=2.0, sample_solver="unipc",
    ),
}  # fmt: skip
REQUEST, DEFINITION, FAMILY = "request", "definition", "family"


@dataclass(frozen=True)
class Architecture:
    """Network configurations of an architecture, as names of constants in wan_engine.nn.* (imported
    only when asked, so reading definitions never builds or imports a network), and the default
    VAE / text-encoder files."""

    dit: str
    vace_layers: str | None = None
    image_to_video: bool = False  # the DiT takes first / last frame conditioning (wan_engine.i2v)
    defaults: Mapping[str, Any] = field(default_factory=dict)  # sampling defaults under each definition's own
    vae: str = "WAN21_VAE"
    text_encoder: str = "UMT5_XXL"
    vae_file: str = "Wan2.1_VAE.safetensors"
    text_encoder_file: str = "umt5-xxl/models_t5_umt5-xxl-enc-bf16.safetensors"
    tokenizer_folder: str = "umt5-xxl"


_TINY_FILES = dict(
    vae="TINY_VAE", text_encoder="TINY_UMT5", vae_file="tiny_vae.safetensors",
    text_encoder_file="tiny_umt5.safetensors", tokenizer_folder="tiny_umt5",
)  # fmt: skip
# Wan 2.2 I2V A14B: the official boundary 0.900 (image2video config) and Wan2GP's i2v_2_2 defaults.
I2V_2_2_DEFAULTS = dict(
    guidance_phases=2, switch_threshold=900.0, guidance_scale=3.5, guidance2_scale=3.5, flow_shift=5.0
)  # fmt: skip
ARCHITECTURES: dict[str, Architecture] = {
    "t2v_1.3B": Architecture("WAN21_1_3B"),
    "t2v": Architecture("WAN21_14B"),
    "vace_1.3B": Architecture("WAN21_1_3B", "VACE_1_3B_LAYERS"),
    "vace_14B": Architecture("WAN21_14B", "VACE_14B_LAYERS"),
    "t2v_2_2": Architecture("WAN22_A14B_EXPERT"),
    "vace_14B_2_2": Architecture("WAN22_A14B_EXPERT", "VACE_14B_LAYERS"),
    "i2v_2_2": Architecture("WAN22_A14B_I2V_EXPERT", image_to_video=True, defaults=I2V_2_2_DEFAULTS),
    "tiny_t2v": Architecture("TINY_DIT", **_TINY_FILES),
    "tiny_vace": Architecture("TINY_DIT", "TINY_VACE_LAYERS", **_TINY_FILES),
    "tiny_t2v_2_2": Architecture("TINY_DIT", **_TINY_FILES),
    "tiny_vace_2_2": Architecture("TINY_DIT", "TINY_VACE_LAYERS", **_TINY_FILES),
    "tiny_i2v_2_2": Architecture("TINY_I2V_DIT", image_to_video=True, defaults=I2V_2_2_DEFAULTS, **_TINY_FILES),
}

FileChoice = tuple[str, ...]  # alternative file names (relative to models_dir), preferred first


@dataclass(frozen=True)
class ExpertSpec:
    """One DiT of the model: its base file and the module files merged onto it, in load order."""

    name: str  # "main", "high" or "low"
    base: FileChoice
    modules: tuple[FileChoice, ...] = ()


@dataclass(frozen=True)
class ModelSpec:
    """Everything the engine needs to build and run a model; see the module docstring."""

    key: str
    name: str
    family: str  # "wan2_1" | "wan2_2"
    architecture: str
    experts: tuple[ExpertSpec, ...]
    vae_file: FileChoice
    text_encoder_file: FileChoice
    tokenizer_folder: str
    defaults: Mapping[str, Any] = field(default_factory=dict)
    loras: tuple[str, ...] = ()
    lora_multipliers: tuple[str, ...] = ()
    preset: str | None = None  # the preset name this spec was asked for by, if any

    @property
    def is_dual_expert(self) -> bool:
        return len(self.experts) == 2

    @property
    def is_vace(self) -> bool:
        return ARCHITECTURES[self.architecture].vace_layers is not None

    @property
    def is_image_to_video(self) -> bool:
        """The model generates from a first and/or last frame (image_start / image_end)."""
        return ARCHITECTURES[self.architecture].image_to_video

    @property
    def dit_config(self) -> dict[str, Any]:
        """WanDiT constructor kwargs (with vace_layers and vace_in_dim for VACE models)."""
        from wan_engine.nn import dit

        arch = ARCHITECTURES[self.architecture]
        config = dict(getattr(dit, arch.dit))
        if arch.vace_layers is not None:
            config.update(vace_layers=list(getattr(dit, arch.vace_layers)), vace_in_dim=dit.VACE_IN_DIM)
        return config

    @property
    def vae_config(self) -> dict[str, Any]:
        """WanVAE constructor kwargs."""
        from wan_engine.nn import vae

        return dict(getattr(vae, ARCHITECTURES[self.architecture].vae))

    @property
    def text_encoder_config(self) -> dict[str, Any]:
        """UMT5Encoder constructor kwargs."""
        from wan_engine.nn import t5

        return dict(getattr(t5, ARCHITECTURES[self.architecture].text_encoder))

    @property
    def text_len(self) -> int:
        """Prompt length in tokens (what the tokenizer pads to and the DiT expects)."""
        return int(self.dit_config.get("text_len", 512))


@dataclass(frozen=True)
class ModelFiles:
    """The files of a spec as found in models_dir. experts[name] = [base, *modules], in load order."""

    experts: dict[str, list[Path]]
    vae: Path
    text_encoder: Path
    tokenizer: Path  # a folder


class ModelRegistry:
    """The model definitions and presets of `defaults_dir`, with files looked up in `models_dir`.

    Every definition is parsed at construction, so a broken one fails at startup (ValueError naming
    the file) rather than when a task asks for it.
    """

    def __init__(self, models_dir: str | Path, defaults_dir: str | Path = DEFAULT_DEFINITIONS_DIR):
        self.models_dir = Path(models_dir)
        self.defaults_dir = Path(defaults_dir)
        self._definitions = _read_json_folder(self.defaults_dir)
        presets = _read_json_folder(self.defaults_dir / PRESETS_FOLDER)
        self._specs = {key: self._build(key) for key in self._definitions}
        self._presets: dict[str, ModelSpec] = {}
        for name, preset in presets.items():
            target = preset.get("model")
            if target not in self._specs:
                raise ValueError(f"preset {name}: model {target!r} is not a definition in {self.defaults_dir}")
            base = self._specs[target]
            overrides = {k: v for k, v in preset.items() if k != "model"}
            self._presets[name] = replace(base, defaults={**base.defaults, **overrides}, preset=name)

    @property
    def known_keys(self) -> list[str]:
        """Definition keys, then preset names."""
        return sorted(self._specs) + sorted(self._presets)

    def get(self, key: str) -> ModelSpec:
        """The spec of a definition key or preset name; UnknownModel lists the known ones."""
        spec = self._specs.get(key) or self._presets.get(key)
        if spec is None:
            raise UnknownModel("model", f"unknown model {key!r}; known: {', '.join(self.known_keys)}")
        return spec

    def files_for(self, spec: ModelSpec) -> ModelFiles:
        """Locate every file of `spec` (the first alternative present); WeightsMissing lists the
        expected names of those absent and the folder searched."""
        missing: list[str] = []

        def locate(choice: FileChoice) -> Path:
            for name in choice:
                if (self.models_dir / name).is_file():
                    return self.models_dir / name
            missing.append(" or ".join(choice))
            return self.models_dir / choice[0]

        experts = {e.name: [locate(e.base), *(locate(m) for m in e.modules)] for e in spec.experts}
        files = ModelFiles(experts, locate(spec.vae_file), locate(spec.text_encoder_file),
                           self.models_dir / spec.tokenizer_folder)  # fmt: skip
        if not files.tokenizer.is_dir():
            missing.append(f"{spec.tokenizer_folder}/ (tokenizer folder)")
        if missing:
            raise WeightsMissing(
                f"model {spec.key!r} needs files that are not in {self.models_dir}: {'; '.join(missing)}"
            )
        return files

    def _build(self, key: str) -> ModelSpec:
        definition = self._definitions[key]
        model = definition.get("model")
        if not isinstance(model, dict):
            raise ValueError(f"definition {key}: no \"model\" object")
        architecture = model.get("architecture")
        if architecture not in ARCHITECTURES:
            known = ", ".join(ARCHITECTURES)
            raise ValueError(f"definition {key}: unknown architecture {architecture!r}; known: {known}")
        arch = ARCHITECTURES[architecture]
        modules = self._modules(key)
        if "URLs2" in model:
            experts = (
                ExpertSpec(HIGH_NOISE_EXPERT, self._files(key, "URLs"), tuple(m[0] for m in modules)),
                ExpertSpec(LOW_NOISE_EXPERT, self._files(key, "URLs2"), tuple(m[1] for m in modules)),
            )
        else:
            experts = (ExpertSpec(SINGLE_EXPERT, self._files(key, "URLs"), tuple(m[0] for m in modules)),)
        loras = model.get("loras", definition.get("loras", []))
        multipliers = model.get("loras_multipliers", definition.get("loras_multipliers", []))
        return ModelSpec(
            key=key,
            name=model.get("name", key),
            family=WAN22 if model.get("group") == WAN22 else WAN21,
            architecture=architecture,
            experts=experts,
            vae_file=_choice(model.get("VAE_URLs") or [arch.vae_file]),
            text_encoder_file=_choice(model.get("text_encoder_URLs") or [arch.text_encoder_file]),
            tokenizer_folder=model.get("text_encoder_folder", arch.tokenizer_folder),
            defaults={
                **arch.defaults,
                **{k: v for k, v in definition.items() if k not in ("model", "loras", "loras_multipliers")},
            },
            loras=tuple(loras),
            lora_multipliers=tuple(str(m) for m in multipliers),
        )

    def _files(self, key: str, prop: str, seen: tuple[str, ...] = ()) -> FileChoice:
        """A URLs / URLs2 property, following references to other definitions."""
        value = self._model_prop(key, prop, seen)
        if isinstance(value, str):
            return self._files(value, prop, (*seen, key))
        return _choice(value)

    def _modules(self, key: str, seen: tuple[str, ...] = ()) -> list[tuple[FileChoice, FileChoice]]:
        """The module entries of a definition as (file for expert 1, file for expert 2) pairs."""
        pairs = []
        for entry in self._definitions[key]["model"].get("modules", []):
            if isinstance(entry, str):
                self._model_prop(entry, "modules", (*seen, key))
                pairs += self._modules(entry, (*seen, key))
            elif isinstance(entry, dict):
                pairs.append((_choice(entry["URLs"]), _choice(entry.get("URLs2", entry["URLs"]))))
            else:
                pairs.append((_choice(entry), _choice(entry)))
        return pairs

    def _model_prop(self, key: str, prop: str, seen: tuple[str, ...]) -> Any:
        where = f"definition {seen[0] if seen else key}"
        if key in seen:
            raise ValueError(f"{where}: circular {prop} reference through {' -> '.join((*seen, key))}")
        if key not in self._definitions:
            raise ValueError(f"{where}: {prop} refers to {key!r}, which is not a definition")
        value = self._definitions[key]["model"].get(prop)
        if value is None:
            raise ValueError(f"{where}: {key} has no {prop}")
        return value


def _read_json_folder(folder: Path) -> dict[str, dict[str, Any]]:
    contents = {}
    for path in sorted(folder.glob("*.json")):
        try:
            contents[path.stem] = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: not valid JSON ({error})") from None
    return contents


def _file_name(url_or_name: str) -> str:
    """A URL stands for its last path component; a plain name (possibly with a folder) for itself."""
    return urlsplit(url_or_name).path.rsplit("/", 1)[-1] if "://" in url_or_name else url_or_name


def _choice(urls: str | Sequence[str]) -> FileChoice:
    """Alternatives for one file; quantized (quanto) variants only when nothing else is offered."""
    names = [_file_name(u) for u in ([urls] if isinstance(urls, str) else urls)]
    usable = [n for n in names if "quanto" not in n.lower()]
    return tuple(usable or names)


def resolve_parameters(spec: ModelSpec, request: Any) -> tuple[dict[str, Any], dict[str, str]]:
    """Sampling parameters and LoRAs for `request` (a GenerationRequest or a mapping of its fields;
    None means "not given"): explicit value > model definition (or preset) > family defaults.

    Returns (values, sources) where sources[field] is "request", "definition" or "family". Also
    validates the result, and the geometry (width, height, video_length) when the request has it;
    InvalidRequest names the offending field.
    """
    given = request.get if isinstance(request, Mapping) else lambda name: getattr(request, name, None)
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for name, kind in SAMPLING_FIELDS.items():
        if given(name) is not None:
            raw, sources[name] = given(name), REQUEST
        elif name in spec.defaults:
            raw, sources[name] = spec.defaults[name], DEFINITION
        else:
            raw, sources[name] = FAMILY_DEFAULTS[spec.family][name], FAMILY
        values[name] = _coerce(name, raw, kind)
    values["sample_solver"] = values["sample_solver"] or "unipc"  # Wan2GP's default for ""

    if given("lora_names") is not None:
        values["lora_names"], sources["lora_names"] = [str(n) for n in given("lora_names")], REQUEST
        definition_multipliers: list[str] = []
    else:
        values["lora_names"], sources["lora_names"] = list(spec.loras), DEFINITION if spec.loras else FAMILY
        definition_multipliers = list(spec.lora_multipliers)
    if given("lora_multipliers") is not None:
        values["lora_multipliers"], sources["lora_multipliers"] = [str(m) for m in given("lora_multipliers")], REQUEST
    else:
        values["lora_multipliers"] = definition_multipliers
        sources["lora_multipliers"] = DEFINITION if definition_multipliers else FAMILY

    _validate(values, spec)
    if all(given(name) is not None for name in ("width", "height", "video_length")):
        validate_geometry(int(given("width")), int(given("height")), int(given("video_length")))
    return values, sources


def validate_geometry(width: int, height: int, video_length: int) -> None:
    """Wan needs sizes that patchify exactly (multiples of 16 pixels) and 4n+1 frames (the VAE
    compresses 4 frames per latent after the first)."""
    if width <= 0 or height <= 0 or width % 16 or height % 16:
        raise InvalidRequest("resolution", f"{width}x{height}: width and height must be positive multiples of 16")
    if video_length < 1 or (video_length - 1) % 4:
        raise InvalidRequest("video_length", f"{video_length} frames: must be 4n+1 (1, 5, ..., 81)")


def _coerce(name: str, raw: Any, kind: type) -> Any:
    if kind is str:
        if not isinstance(raw, str):
            raise InvalidRequest(name, f"must be a string, got {raw!r}")
        return raw
    if isinstance(raw, bool) or not isinstance(raw, (int, float)):
        raise InvalidRequest(name, f"must be a number, got {raw!r}")
    if kind is int:
        if raw != int(raw):
            raise InvalidRequest(name, f"must be an integer, got {raw!r}")
        return int(raw)
    return float(raw)


def _validate(values: Mapping[str, Any], spec: ModelSpec) -> None:
    """The sampler's own checks (solver name, step count, shift), then the phase settings'."""
    make_sampler(values["sample_solver"], values["num_inference_steps"], values["flow_shift"])
    PhaseSettings.from_values(values).validate(spec.is_dual_expert)
