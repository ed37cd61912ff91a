"""Model definitions (defaults/*.json, Wan2GP's format) -> what to build, which files to load, and
the sampling defaults each model gives its requests (applied by wan_engine.schema).

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
- Every other top-level key is a sampling default of the model (see wan_engine.schema).

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

from wan_engine.errors import UnknownModel, WeightsMissing
from wan_engine.phases import HIGH_NOISE_EXPERT, LOW_NOISE_EXPERT, SINGLE_EXPERT
from wan_engine.schema import WAN21, WAN22

DEFAULT_DEFINITIONS_DIR = Path(__file__).resolve().parent.parent / "defaults"
PRESETS_FOLDER = "presets"

@dataclass(frozen=True)
class Architecture:
    """Network configurations of an architecture, as names of constants in wan_engine.nn.* (imported
    only when asked, so reading definitions never builds or imports a network), and the default
    VAE / text-encoder files."""

    dit: str
    vace_layers: str | None = None
    vae: str = "WAN21_VAE"
    text_encoder: str = "UMT5_XXL"
    vae_file: str = "Wan2.1_VAE.safetensors"
    text_encoder_file: str = "umt5-xxl/models_t5_umt5-xxl-enc-bf16.safetensors"
    tokenizer_folder: str = "umt5-xxl"


_TINY_FILES = dict(
    vae="TINY_VAE", text_encoder="TINY_UMT5", vae_file="tiny_vae.safetensors",
    text_encoder_file="tiny_umt5.safetensors", tokenizer_folder="tiny_umt5",
)  # fmt: skip
ARCHITECTURES: dict[str, Architecture] = {
    "t2v_1.3B": Architecture("WAN21_1_3B"),
    "t2v": Architecture("WAN21_14B"),
    "vace_1.3B": Architecture("WAN21_1_3B", "VACE_1_3B_LAYERS"),
    "vace_14B": Architecture("WAN21_14B", "VACE_14B_LAYERS"),
    "t2v_2_2": Architecture("WAN22_A14B_EXPERT"),
    "vace_14B_2_2": Architecture("WAN22_A14B_EXPERT", "VACE_14B_LAYERS"),
    "tiny_t2v": Architecture("TINY_DIT", **_TINY_FILES),
    "tiny_vace": Architecture("TINY_DIT", "TINY_VACE_LAYERS", **_TINY_FILES),
    "tiny_t2v_2_2": Architecture("TINY_DIT", **_TINY_FILES),
    "tiny_vace_2_2": Architecture("TINY_DIT", "TINY_VACE_LAYERS", **_TINY_FILES),
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
    preset_defaults: Mapping[str, Any] = field(default_factory=dict)  # what the preset sets over `defaults`
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
            self._presets[name] = replace(base, preset_defaults=overrides, preset=name)

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
            defaults={k: v for k, v in definition.items() if k not in ("model", "loras", "loras_multipliers")},
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
