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
- `VAE_URLs` / `text_encoder_URLs` / `image_encoder_URLs` (optional, the first two Wan2GP's names)
  replace the architecture's VAE / umT5 / CLIP image encoder (Wan 2.1 I2V) file; the text encoder sits in `text_encoder_folder` (default `umt5-xxl`) beside its
  `tokenizer.json`, which comes from the same hub folder.
- `layouts` (optional): {name: {URLs, URLs2, modules, VAE_URLs, text_encoder_URLs, tokenizer_URLs,
  image_encoder_URLs}},
  the same weights as other repos publish them (Wan-AI, diffusers, ComfyUI), or the key of a
  definition whose layouts it reuses. A layout's files are stored as `<repo name>/<path>`; what it
  does not give it inherits. The engine loads the first layout whose files are all present.
- Every other top-level key is a default of the model: the sampling fields for every request, and
  `resolution`, `video_length`, `negative_prompt` for generation rows (wan_engine.schema.model_default).

A preset `defaults/presets/<name>.json` is `{"model": <definition key>, <sampling defaults>...}`:
another name for a definition, whose defaults override the definition's.

An operator's own definitions (Wan2GP's "finetunes": a deployment's private models, such as the
Reigh app's `optimised-t2i`) sit in `<models_dir>/finetunes/<key>.json`, in the same format; one
with the key of a shipped definition replaces it.

Files are looked up by file name (a URL by its last path component) in models_dir. A file given as
a Hugging Face resolve URL (`https://huggingface.co/<repo>/resolve/<revision>/<path>`) has that
source, which `wan-worker models download` fetches; a plain name is a local file only. The VAE, the
text encoder and the tokenizer default to the architecture's files and their sources.
"""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from wan_engine.errors import InvalidRequest, UnknownModel, WeightsMissing
from wan_engine.hub import HubFile, is_index, parse_hub_url, shard_names
from wan_engine.loras import DEFAULT_DEFINITIONS_DIR, LORA_ALIASES_FILE, LORAS_FOLDER, lora_file, read_lora_aliases
from wan_engine.phases import HIGH_NOISE_EXPERT, LOW_NOISE_EXPERT, SINGLE_EXPERT
from wan_engine.schema import WAN21, WAN22

PRESETS_FOLDER = "presets"
FINETUNES_FOLDER = "finetunes"  # in models_dir: the operator's own definitions (Wan2GP's folder name)
TOKENIZER_FILE = "tokenizer.json"  # inside the tokenizer folder (wan_engine.tokenizer reads it)

DEFAULT_LAYOUT = "wan2gp"
# What a layout (an entry of "layouts" in a definition) may give in place of the definition's own files.
LAYOUT_FIELDS = ("URLs", "URLs2", "modules", "VAE_URLs", "text_encoder_URLs", "tokenizer_URLs", "image_encoder_URLs")


@dataclass(frozen=True)
class Architecture:
    """Network configurations of an architecture, as names of constants in wan_engine.nn.* (imported
    only when asked, so reading definitions never builds or imports a network), and the default
    VAE / text-encoder / tokenizer files, which `shared_files_url` (a resolve-URL prefix) holds
    under those same paths."""

    dit: str
    vace_layers: str | None = None
    image_to_video: bool = False  # the DiT takes first / last frame conditioning (wan_engine.i2v)
    defaults: Mapping[str, Any] = field(default_factory=dict)  # sampling defaults under each definition's own
    vae: str = "WAN21_VAE"
    text_encoder: str = "UMT5_XXL"
    image_encoder: str | None = None  # Wan 2.1 I2V's CLIP encoder config (wan_engine.nn.clip), else none
    image_encoder_frames: int = 1  # the frames it encodes: the first, or (FLF2V) the first and the last
    vae_file: str = "Wan2.1_VAE.safetensors"
    text_encoder_file: str = "umt5-xxl/models_t5_umt5-xxl-enc-bf16.safetensors"
    tokenizer_folder: str = "umt5-xxl"
    image_encoder_file: str = "xlm-roberta-large/models_clip_open-clip-xlm-roberta-large-vit-huge-14-bf16.safetensors"
    shared_files_url: str = "https://huggingface.co/DeepBeepMeep/Wan2.1/resolve/main/"  # Wan2GP's own copies


TINY_MODELS_URL = "https://huggingface.co/wan-worker/tiny-models/resolve/main/"  # what wan_engine.testing writes
_TINY_FILES = dict(
    vae="TINY_VAE", text_encoder="TINY_UMT5", vae_file="tiny_vae.safetensors",
    text_encoder_file="tiny_umt5.safetensors", tokenizer_folder="tiny_umt5", shared_files_url=TINY_MODELS_URL,
    image_encoder_file="tiny_clip.safetensors",
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
    "i2v": Architecture("WAN21_14B_I2V", image_to_video=True, image_encoder="VIT_H_14"),
    "flf2v_720p": Architecture("WAN21_14B_FLF2V", image_to_video=True, image_encoder="VIT_H_14", image_encoder_frames=2),
    "tiny_t2v": Architecture("TINY_DIT", **_TINY_FILES),
    "tiny_vace": Architecture("TINY_DIT", "TINY_VACE_LAYERS", **_TINY_FILES),
    "tiny_t2v_2_2": Architecture("TINY_DIT", **_TINY_FILES),
    "tiny_vace_2_2": Architecture("TINY_DIT", "TINY_VACE_LAYERS", **_TINY_FILES),
    "tiny_i2v_2_2": Architecture("TINY_I2V_DIT", image_to_video=True, defaults=I2V_2_2_DEFAULTS, **_TINY_FILES),
    "tiny_i2v": Architecture("TINY_I2V_CLIP_DIT", image_to_video=True, image_encoder="TINY_CLIP", **_TINY_FILES),
    "tiny_flf2v": Architecture("TINY_FLF2V_DIT", image_to_video=True, image_encoder="TINY_CLIP", image_encoder_frames=2,
                               **_TINY_FILES),
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
    image_encoder_file: FileChoice = ()  # Wan 2.1 I2V's CLIP encoder; () for every other model
    defaults: Mapping[str, Any] = field(default_factory=dict)
    preset_defaults: Mapping[str, Any] = field(default_factory=dict)  # what the preset sets over `defaults`
    loras: tuple[str, ...] = ()
    lora_multipliers: tuple[str, ...] = ()
    preset: str | None = None  # the preset name this spec was asked for by, if any
    layout: str = DEFAULT_LAYOUT  # which of the definition's checkpoint layouts these files are

    @property
    def tokenizer_file(self) -> str:
        """The tokenizer file the text encoder needs, relative to models_dir."""
        return f"{self.tokenizer_folder}/{TOKENIZER_FILE}" if self.tokenizer_folder else TOKENIZER_FILE

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
    def image_encoder_config(self) -> dict[str, Any] | None:
        """ClipVisionEncoder constructor kwargs, or None for a model without an image encoder."""
        from wan_engine.nn import clip

        name = ARCHITECTURES[self.architecture].image_encoder
        return None if name is None else dict(getattr(clip, name))

    @property
    def image_encoder_frames(self) -> int:
        """How many frames the image encoder encodes: 1 (the first), or 2 (FLF2V: the first and the last)."""
        return ARCHITECTURES[self.architecture].image_encoder_frames

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
    layout: str = DEFAULT_LAYOUT
    image_encoder: Path | None = None  # Wan 2.1 I2V's CLIP encoder


@dataclass(frozen=True)
class NeededFile:
    """One file a model needs: its role, the alternative names it may have in models_dir (preferred
    first), the source of the one a download fetches, and the alternative found, if any."""

    role: str  # "dit", "dit high", "vace module low", "vae", "text encoder", "tokenizer", "lora"
    names: FileChoice
    source: HubFile | None
    present: Path | None

    @property
    def download_name(self) -> str:
        """The name a download writes: the first alternative with a source."""
        return self.names[0]

    def shards(self, models_dir: Path) -> list[NeededFile]:
        """The shard files of a sharded checkpoint's index once the index is present (else none),
        beside it in models_dir and in its hub folder."""
        if self.present is None or not is_index(self.present):
            return []
        folder = self.present.parent.relative_to(models_dir).as_posix()
        shards = []
        for shard in shard_names(self.present):
            name = shard if folder == "." else f"{folder}/{shard}"
            path = models_dir / name
            source = self.source.sibling(shard) if self.source else None
            shards.append(NeededFile(f"{self.role} shard", (name,), source, path if path.is_file() else None))
        return shards

    def describe(self) -> str:
        """One line for an operator: the name(s) and where the file comes from."""
        names = " or ".join(self.names)
        return f"{names} ({self.role}; from {self.source.url})" if self.source else f"{names} ({self.role}; no source)"


def download_command(keys: Sequence[str], models_dir: Path, layout: str = DEFAULT_LAYOUT) -> str:
    """The exact CLI call that fetches what `keys` need (in `layout`) into models_dir."""
    chosen = "" if layout == DEFAULT_LAYOUT else f" --layout {layout}"
    return f"wan-worker models download {' '.join(keys)}{chosen} --models-dir {models_dir}"


class ModelRegistry:
    """The model definitions and presets of `defaults_dir` and the operator's definitions in
    `models_dir`/finetunes, with files looked up in `models_dir`.

    Every definition is parsed at construction, so a broken one fails at startup (ValueError naming
    the file) rather than when a task asks for it.
    """

    def __init__(self, models_dir: str | Path, defaults_dir: str | Path = DEFAULT_DEFINITIONS_DIR):
        self.models_dir = Path(models_dir)
        self.defaults_dir = Path(defaults_dir)
        self._definitions = _read_json_folder(self.defaults_dir)
        self.lora_aliases = read_lora_aliases(self.defaults_dir)
        self._definitions.pop(Path(LORA_ALIASES_FILE).stem, None)
        self._definitions.update(_read_json_folder(self.models_dir / FINETUNES_FOLDER))
        self.sources: dict[str, HubFile] = {}  # file name in models_dir -> where it comes from
        presets = _read_json_folder(self.defaults_dir / PRESETS_FOLDER)
        self._layouts = {key: self._build_layouts(key) for key in self._definitions}
        self._specs = {key: layouts[DEFAULT_LAYOUT] for key, layouts in self._layouts.items()}
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
            raise UnknownModel("model", f"unknown model {key!r}; known: {', '.join(self.known_keys)} (a deployment's "
                                        f"own model is a Wan2GP definition in {self.models_dir / FINETUNES_FOLDER})")
        return spec

    def layouts(self, spec: ModelSpec) -> dict[str, ModelSpec]:
        """The checkpoint layouts `spec`'s definition offers, DEFAULT_LAYOUT first, each with `spec`'s
        defaults and preset."""
        return {name: replace(layout, defaults=spec.defaults, preset=spec.preset)
                for name, layout in self._layouts[spec.key].items()}  # fmt: skip

    def with_layout(self, spec: ModelSpec, layout: str) -> ModelSpec:
        """`spec` in another of its definition's layouts; InvalidRequest names the ones it has."""
        layouts = self.layouts(spec)
        if layout not in layouts:
            raise InvalidRequest("layout", f"model {spec.key!r} has no layout {layout!r}; it has {', '.join(layouts)}")
        return layouts[layout]

    def files_for(self, spec: ModelSpec) -> ModelFiles:
        """Locate every file of `spec` (the first alternative present), in its layout or, when that is
        incomplete, in the first other layout of its definition that is complete. WeightsMissing lists
        each file absent from `spec`'s layout once, with its source and the command that downloads it."""
        layouts = self.layouts(spec)
        for candidate in [spec, *(other for name, other in layouts.items() if name != spec.layout)]:
            needed = self.needed_files(candidate, with_loras=False)
            if all(f.present is not None for f in needed):
                found = {f.names: f.present for f in needed}
                return ModelFiles(
                    experts={e.name: [found[e.base], *(found[m] for m in e.modules)] for e in candidate.experts},
                    vae=found[candidate.vae_file],
                    text_encoder=found[candidate.text_encoder_file],
                    tokenizer=self.models_dir / candidate.tokenizer_folder,
                    layout=candidate.layout,
                    image_encoder=found[candidate.image_encoder_file] if candidate.image_encoder_file else None,
                )
        missing = [f for f in self.needed_files(spec, with_loras=False) if f.present is None]
        lines = "".join(f"\n  {f.describe()}" for f in missing)
        command = download_command([spec.preset or spec.key], self.models_dir, spec.layout)
        others = [name for name in layouts if name != spec.layout]
        alternatives = f" (or another layout: --layout {' | '.join(others)})" if others else ""
        raise WeightsMissing(
            f"model {spec.key!r} needs files that are not in {self.models_dir}:{lines}\n"
            f"download them with: {command}{alternatives}",
            missing=[f.download_name for f in missing],
        )

    def needed_files(
        self, spec: ModelSpec, *, with_loras: bool = True, lora_names: Sequence[str] | None = None
    ) -> list[NeededFile]:
        """Every file `spec` needs, each once (a module shared by both experts is one file), in load
        order: DiT files per expert, VAE, text encoder, tokenizer, then the LoRAs (`lora_names`, else
        the model's default LoRAs) when `with_loras`."""
        roles: list[tuple[str, FileChoice]] = []
        for expert in spec.experts:
            suffix = "" if len(spec.experts) == 1 else f" {expert.name}"
            roles.append((f"dit{suffix}", expert.base))
            roles += [(f"vace module{suffix}", module) for module in expert.modules]
        roles += [("vae", spec.vae_file), ("text encoder", spec.text_encoder_file),
                  ("tokenizer", (spec.tokenizer_file,))]  # fmt: skip
        if spec.image_encoder_file:
            roles.append(("image encoder", spec.image_encoder_file))
        needed: dict[FileChoice, NeededFile] = {}
        for role, choice in roles:
            if choice not in needed:
                needed[choice] = self._needed(role, choice)
                for shard in needed[choice].shards(self.models_dir):
                    needed[shard.names] = shard
        if with_loras:
            for lora in self.needed_loras(spec.loras if lora_names is None else lora_names):
                needed.setdefault(lora.names, lora)
        return list(needed.values())

    def needed_loras(self, names: Sequence[str]) -> list[NeededFile]:
        """The LoRA files `names` mean (wan_engine.loras), each once, with sources where known."""
        loras_dir = self.models_dir / LORAS_FOLDER
        needed: dict[str, NeededFile] = {}
        for name in names:
            file = lora_file(name, loras_dir, self.lora_aliases)
            needed.setdefault(file.name, NeededFile("lora", (file.name,), file.source, file.present))
        return list(needed.values())

    def _needed(self, role: str, choice: FileChoice) -> NeededFile:
        present = next((self.models_dir / n for n in choice if (self.models_dir / n).is_file()), None)
        with_source = [n for n in choice if n in self.sources]
        ordered = tuple(with_source[:1]) + tuple(n for n in choice if n not in with_source[:1])
        source = self.sources.get(ordered[0])
        return NeededFile(role, ordered, source, present)

    def _build_layouts(self, key: str) -> dict[str, ModelSpec]:
        """The definition's spec in its own files (DEFAULT_LAYOUT), then in each of its "layouts"."""
        layouts = self._layout_table(key)
        if not isinstance(layouts, dict) or DEFAULT_LAYOUT in layouts:
            raise ValueError(f"definition {key}: \"layouts\" must be an object of named layouts (not {DEFAULT_LAYOUT!r})")
        built = {DEFAULT_LAYOUT: self._build(key)}
        for name, files in layouts.items():
            unknown = sorted(set(files) - set(LAYOUT_FIELDS)) if isinstance(files, dict) else ["(not an object)"]
            if unknown:
                raise ValueError(f"definition {key}: layout {name}: unknown fields {unknown}; known: {LAYOUT_FIELDS}")
            built[name] = self._build(key, name)
        return built

    def _layout_table(self, key: str) -> Any:
        """The "layouts" of a definition; the key of another definition reuses that one's layouts."""
        model = self._definitions[key].get("model")
        layouts = model.get("layouts", {}) if isinstance(model, dict) else {}
        return self._model_prop(layouts, "layouts", (key,)) if isinstance(layouts, str) else layouts

    def _build(self, key: str, layout: str = DEFAULT_LAYOUT) -> ModelSpec:
        """A spec of definition `key` in `layout`. The definition's own files are named as Wan2GP names
        them (a URL by its file name); a layout's files keep their place in their hub repo,
        `<repo name>/<path>`, so each published layout sits in models_dir as downloaded."""
        definition = self._definitions[key]
        model = definition.get("model")
        if not isinstance(model, dict):
            raise ValueError(f"definition {key}: no \"model\" object")
        architecture = model.get("architecture")
        if architecture not in ARCHITECTURES:
            known = ", ".join(ARCHITECTURES)
            raise ValueError(f"definition {key}: unknown architecture {architecture!r}; known: {known}")
        arch = ARCHITECTURES[architecture]
        overrides = self._layout_table(key)[layout] if layout != DEFAULT_LAYOUT else {}
        model = {**model, **overrides}

        def published(prop: str) -> bool:  # files the layout gives keep their place in their repo
            return prop in overrides

        modules = self._module_pairs(key, model.get("modules", []), published("modules"))
        if "URLs2" in model:
            experts = (
                ExpertSpec(HIGH_NOISE_EXPERT, self._files(key, model, "URLs", published("URLs")),
                           tuple(m[0] for m in modules)),
                ExpertSpec(LOW_NOISE_EXPERT, self._files(key, model, "URLs2", published("URLs2")),
                           tuple(m[1] for m in modules)),
            )
        else:
            experts = (ExpertSpec(SINGLE_EXPERT, self._files(key, model, "URLs", published("URLs")),
                                  tuple(m[0] for m in modules)),)  # fmt: skip
        loras = model.get("loras", definition.get("loras", []))
        multipliers = model.get("loras_multipliers", definition.get("loras_multipliers", []))
        text_folder = model.get("text_encoder_folder", arch.tokenizer_folder)
        vae_urls, text_urls = model.get("VAE_URLs"), model.get("text_encoder_URLs")
        vae_file = (self._names(key, vae_urls, published("VAE_URLs")) if vae_urls
                    else self._shared_file(key, arch, arch.vae_file))  # fmt: skip
        if text_urls:
            text_encoder_file = self._names(key, text_urls, published("text_encoder_URLs"), text_folder)
            tokenizer = self._tokenizer(key, model, text_urls[0], text_encoder_file[0], published("tokenizer_URLs"))
        else:
            text_encoder_file = self._shared_file(key, arch, arch.text_encoder_file)
            tokenizer = self._shared_file(key, arch, f"{arch.tokenizer_folder}/{TOKENIZER_FILE}")[0]
        image_urls = model.get("image_encoder_URLs")
        image_encoder_file: FileChoice = ()
        if arch.image_encoder is not None:
            image_encoder_file = (self._names(key, image_urls, published("image_encoder_URLs")) if image_urls
                                  else self._shared_file(key, arch, arch.image_encoder_file))  # fmt: skip
        return ModelSpec(
            key=key,
            name=model.get("name", key),
            family=WAN22 if model.get("group") == WAN22 else WAN21,
            architecture=architecture,
            experts=experts,
            vae_file=vae_file,
            text_encoder_file=text_encoder_file,
            tokenizer_folder=tokenizer.rpartition("/")[0],
            image_encoder_file=image_encoder_file,
            defaults={
                **arch.defaults,
                **{k: v for k, v in definition.items() if k not in ("model", "loras", "loras_multipliers")},
            },
            loras=tuple(loras),
            lora_multipliers=tuple(str(m) for m in multipliers),
            layout=layout,
        )

    def _tokenizer(self, key: str, model: Mapping[str, Any], text_url: str, text_name: str, published: bool) -> str:
        """The tokenizer file's name: `tokenizer_URLs`, else beside the text encoder (in Wan2GP's
        text_encoder_folder, and in the same hub folder)."""
        if model.get("tokenizer_URLs"):
            return self._names(key, model["tokenizer_URLs"], published)[0]
        folder = text_name.rpartition("/")[0]
        name = f"{folder}/{TOKENIZER_FILE}" if folder else TOKENIZER_FILE
        source = parse_hub_url(text_url)
        if source is not None:
            self._add_source(key, name, source.sibling(TOKENIZER_FILE))
        return name

    def _names(self, key: str, urls: str | Sequence[str], published: bool, folder: str = "") -> FileChoice:
        """Alternatives for one file, recording the source of each URL. quanto variants only when
        nothing else is offered (this engine does not load them)."""
        named = []
        for url in [urls] if isinstance(urls, str) else urls:
            source = parse_hub_url(url)
            name = f"{source.repo.rsplit('/', 1)[-1]}/{source.path}" if published and source else _local_name(url, folder)
            if source is not None:
                self._add_source(key, name, source)
            named.append(name)
        usable = [n for n in named if "quanto" not in n.lower()]
        return tuple(usable or named)

    def _shared_file(self, key: str, arch: Architecture, name: str) -> FileChoice:
        """One of the architecture's shared files (VAE, text encoder, tokenizer, image encoder), under its own name."""
        source = parse_hub_url(arch.shared_files_url + name)
        if source is not None:
            self._add_source(key, name, source)
        return (name,)

    def _add_source(self, key: str, name: str, source: HubFile) -> None:
        known = self.sources.setdefault(name, source)
        if known != source:
            raise ValueError(f"definition {key}: {name} comes from {source.url}, another definition says {known.url}")

    def _files(self, key: str, model: Mapping[str, Any], prop: str, published: bool) -> FileChoice:
        """A URLs / URLs2 property; the key of another definition names that definition's own files."""
        value, seen = model.get(prop), (key,)
        while isinstance(value, str):
            key, value, seen = value, self._model_prop(value, prop, seen), (*seen, value)
            published = False
        if value is None:
            raise ValueError(f"definition {seen[0]}: no {prop}")
        return self._names(key, value, published)

    def _module_pairs(self, key: str, entries: Sequence[Any], published: bool,
                      seen: tuple[str, ...] = ()) -> list[tuple[FileChoice, FileChoice]]:
        """Module entries as (file for expert 1, file for expert 2) pairs; a definition key names
        that definition's own modules."""
        pairs = []
        for entry in entries:
            if isinstance(entry, str):
                referenced = self._model_prop(entry, "modules", (*seen, key))
                pairs += self._module_pairs(entry, referenced, False, (*seen, key))
            elif isinstance(entry, dict):
                high = self._names(key, entry["URLs"], published)
                pairs.append((high, self._names(key, entry["URLs2"], published) if "URLs2" in entry else high))
            else:
                names = self._names(key, entry, published)
                pairs.append((names, names))
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


def _local_name(url_or_name: str, folder: str = "") -> str:
    """The name in models_dir: a URL's file name inside `folder`; a plain name as written."""
    if "://" not in url_or_name:
        return url_or_name
    return f"{folder}/{_file_name(url_or_name)}" if folder else _file_name(url_or_name)
