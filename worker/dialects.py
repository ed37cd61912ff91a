"""The row forms other backends write, read into the fields of wan_engine.schema.

Plain renames (`steps`, `model_name`, `activated_loras`, ...) are aliases in the schema itself. This
module holds what is more than a rename:

* the seed's `GenerationTask` shape, `{"model", "prompt", "parameters": {...}}`, flattened;
* the seed's `vace_version` (a preset) next to `model_name`: both must name the same model;
* headless Wan2GP / Reigh `phase_config` (per-phase guidance, LoRAs and multipliers, solver, shift,
  model switch) -> guidance phases with thresholds placed between the phases' steps, and one
  multiplier string per LoRA ("1;0;0.5");
* `additional_loras` ({URL or name: multiplier}) added to the LoRA list;
* prompts wrapped in `text_before_prompts` / `text_after_prompts` (`base_prompt` is the schema's
  other name of `prompt`; the travel planner falls back to it for a segment without a prompt);
* which keys change nothing (bookkeeping of the backends that write rows), so the rest can be
  reported as ignored (`ignored_params`).

Rules follow the current headless code (banodoco/Reigh-Worker: source/core/params/phase_config_parser.py,
source/core/params/lora.py, source/task_handlers/travel/orchestrator.py).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from wan_engine.errors import UnknownModel, echo
from wan_engine.loras import lora_file_stem
from wan_engine.schedules import timesteps
from wan_engine.schema import SAMPLING_FIELDS, parse_multipliers, typed
from worker.errors import ValidationError
from worker.params import ParamReader, to_float, to_int, validation_errors

GENERATION_TASK_PARAMETERS = "parameters"
PHASE_CONFIG = "phase_config"
ADDITIONAL_LORAS = "additional_loras"
PATH_LORAS = "loras"  # [{"path", "strength"}]: the app's list form of additional_loras
MODEL_FAMILY = "model_family"
PRECISION = "precision"  # a run setting the request carries with its sampling fields
TEXT_BEFORE, TEXT_AFTER = "text_before_prompts", "text_after_prompts"

# Keys that never change what is generated: ids and bookkeeping the backends keep on their rows, UI
# state Reigh stores for itself ("amount_of_motion": "store for UI restoration only").
NO_OP_KEYS = frozenset({
    "task_id", "id", "child_key", "orchestrator_task_id", "orchestrator_task_id_ref", "orchestrator_run_id",
    "run_id", "project_id", "shot_id", "parent_generation_id", "generation_name", "generation_source",
    "tool_type", "created_from", "image_generation_ids", "pair_shot_generation_ids", "main_output_dir_for_run",
    "current_run_base_output_dir", "segment_image_download_dir", "debug", "debug_mode_enabled",
    "skip_cleanup_enabled", "dimension_source", "generation_mode", "advanced_mode", "motion_mode",
    "amount_of_motion", "selected_phase_preset_id", "is_first_segment", "is_last_segment", "child_order",
    "is_single_item", "frame_overlap_with_next", "final_stitched_output_path", "poll_interval_from_orchestrator",
    "poll_timeout_from_orchestrator", "seed_for_upscale",
    # The April 2026 app's bookkeeping (reigh-app create-task/resolvers: shared/taskContracts.ts
    # composeTaskFamilyPayload, shared/lineage.ts, individualTravelSegment.ts, imageGeneration.ts).
    "contract_version", "task_family", "orchestration_contract", "task_view_contract", "family_contract",
    "input_image_generation_ids", "image_variant_ids", "based_on", "create_as_generation", "thumbnail_url",
    "source_variant_id", "is_primary", "timeline_placement", "placement_intent", "add_in_position",
    "child_generation_id", "make_primary_variant", "pair_shot_generation_id", "start_image_generation_id",
    "end_image_generation_id", "start_image_variant_id", "end_image_variant_id",
    "random_seed",  # the app already drew the seed it sends
    # Carried by the app and the April 2026 headless worker (reigh-worker) but never read by its
    # generation: the UI's per-pair motion settings, turbo mode (the app expresses it as the task
    # type wan_2_2_i2v), the segment's copy of continue_from_video_resolved_path, and
    # show_input_images, whose banner the headless segment handler always switches off
    # (source/task_handlers/tasks/task_registry.py: travel_chain_details "show_input_images": False).
    "motion_settings_expanded", "turbo_mode", "continue_from_video_resolved_path_for_guide", "show_input_images",
    # Headless polling and app-reader bookkeeping the April 2026 orchestrator copies onto its segments
    # (travel/orchestrator.py _build_minimal_orchestrator_details); the upscaler's name matters only
    # with an upscale_factor above 1, which is reported itself.
    "poll_interval", "poll_timeout", "poll_timeout_upscale", "original_task_args", "clip_list", "num_joins",
    "upscale_model_name",
    # Wan2GP's distilled-guidance setting for Hunyuan; its Wan models (and so these) have none.
    "embedded_guidance_scale",
    # The headless join orchestrator's bookkeeping on its join_clips_segment rows (join/task_builder.py):
    # their place in the chain and the folders the headless worker writes to (outputs go to the task's
    # folder here).
    "is_first_join", "is_last_join", "skip_generation", "join_output_dir",
})  # fmt: skip
# Switches that change nothing while off; when on they ask for a feature this worker does not have.
OFF_SWITCHES = frozenset({"enhance_prompt", "regenerate_anchors", "use_svi"})
# Headless settings at the values that leave the video as it is (the defaults Reigh and the headless
# orchestrator send; the headless stitch upscales only by a factor > 1); any other value asks for an
# effect this worker does not apply.
# `priority` in params is the headless queue's order for the generation it submits; 0 is its default.
NEUTRAL_VALUES: dict[str, tuple[Any, ...]] = {"cfg_star_switch": (0,), "cfg_zero_step": (-1,), "upscale_factor": (0, 1),
                                              "priority": (0,)}

def flatten_generation_task(params: Mapping[str, Any]) -> dict[str, Any]:
    """The seed's GenerationTask row `{"model", "prompt", "parameters": {...}}` as one flat mapping;
    a key given both inside and outside `parameters` with different values fails naming both."""
    inner = params.get(GENERATION_TASK_PARAMETERS)
    if inner is None:
        return dict(params)
    if not isinstance(inner, Mapping):
        raise ValidationError(GENERATION_TASK_PARAMETERS, "must be an object (the GenerationTask's parameters)")
    flat = {key: value for key, value in params.items() if key != GENERATION_TASK_PARAMETERS}
    for key, value in inner.items():
        if key in flat and flat[key] != value:
            raise ValidationError(f"{GENERATION_TASK_PARAMETERS}.{key}",
                                  f"conflicts with top-level {key}: {echo(value)} != {echo(flat[key])}")
        flat[key] = value
    return flat


def expand_lora_objects(params: Mapping[str, Any], prefix: str = "") -> Mapping[str, Any]:
    """`params` with the Reigh app's object form of `lora_multipliers`, [{"url", "multiplier"}] (its
    individual segments copy their phase config's LoRAs so: reigh-app individualTravelSegment.ts), read
    as lora_names (the URLs) and lora_multipliers. With `lora_names` also given (not empty), both must
    name the same files. Rows without that form come back as they are; `prefix` is where the params
    sit in the row, for errors."""
    objects = lora_objects(params.get("lora_multipliers"))
    if objects is None:
        return params
    if copies_phase_loras(objects, params.get(PHASE_CONFIG)):  # the phase config says it all
        return {key: value for key, value in params.items() if key != "lora_multipliers"}
    field = f"{prefix}lora_multipliers"
    urls = [item.get("url") for item in objects]
    if not all(isinstance(url, str) and url.strip() for url in urls):
        raise ValidationError(field, "each {\"url\", \"multiplier\"} entry needs its LoRA's URL or name")
    names = params.get("lora_names")
    if names and list(names) != urls:
        raise ValidationError(field, f"names LoRAs {urls}, but lora_names names {echo(names)}: give one, or two that agree")
    multipliers = parse_multipliers([item.get("multiplier", 1.0) for item in objects], field)
    return {**params, "lora_names": urls, "lora_multipliers": multipliers}


def lora_objects(value: Any) -> list[Mapping[str, Any]] | None:
    """`value` when it is the app's [{"url", "multiplier"}] form of lora_multipliers, else None."""
    if isinstance(value, list) and value and all(isinstance(item, Mapping) for item in value):
        return value
    return None


def copies_phase_loras(objects: list[Mapping[str, Any]], phase_config: Any) -> bool:
    """Whether each {"url", "multiplier"} is a LoRA of `phase_config` at the multiplier one of its
    phases gives it (the app's copy of the phase config's LoRAs, which asks for nothing more)."""
    if not isinstance(phase_config, Mapping) or not isinstance(phase_config.get("phases"), list):
        return False
    given: dict[str, set[float]] = {}
    for phase in phase_config["phases"]:
        for lora in (phase.get("loras") or []) if isinstance(phase, Mapping) else []:
            if isinstance(lora, Mapping) and isinstance(lora.get("url"), str):
                given.setdefault(lora["url"], set()).add(_number(lora.get("multiplier", 1.0)))
    return all(_number(item.get("multiplier", 1.0)) in given.get(item.get("url"), ()) for item in objects)


def _number(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def model_and_preset(reader: ParamReader, registry: Any) -> tuple[str | None, str | None]:
    """(model, preset) as the row names them. When both are given (the seed's `model_name` with
    `vace_version`), the preset must be a preset of that model: otherwise fail naming both."""
    model, preset = reader.field("model"), reader.field("preset")
    if model and preset:
        preset_model, model_key = (_model_key(registry, reader, name) for name in ("preset", "model"))
        if preset_model != model_key:
            raise ValidationError(
                reader.label("preset"),
                f"{echo(preset)} is a preset of {preset_model!r}, but {reader.label('model')} names {echo(model)}: "
                "give one, or two that agree")
    return model, preset


def _model_key(registry: Any, reader: ParamReader, name: str) -> str:
    """The definition key of the model or preset the row names in field `name`."""
    try:
        return registry.get(reader.field(name)).key
    except UnknownModel as error:
        raise ValidationError(reader.label(name), error.rule) from None


def sampling(reader: ParamReader, overridden: dict[str, str]) -> dict[str, Any]:
    """The sampling, LoRA and precision fields of a row (GenerationRequest keyword arguments), typed; absent ones
    are left out so the model's defaults apply. `phase_config` replaces the row's own values of what
    it sets (Reigh sends both; the headless worker uses phase_config); each replaced key is noted in
    `overridden` (key -> reason) for ignored_params. `additional_loras` extend the LoRA list."""
    values = {name: reader.field(name) for name in (*SAMPLING_FIELDS, PRECISION) if reader.given(name)}
    reader.used.add(PHASE_CONFIG)
    if reader.has(PHASE_CONFIG):
        from_phases = phase_config_values(reader.params[PHASE_CONFIG], reader.prefix + PHASE_CONFIG)
        for name in from_phases:
            if name in values and values[name] != from_phases[name]:
                overridden[reader.schema.keys[name]] = f"replaced by {PHASE_CONFIG}"
        values.update(from_phases)
    reader.used.update((ADDITIONAL_LORAS, PATH_LORAS))
    if reader.has(ADDITIONAL_LORAS):
        values.update(with_additional_loras(values, reader.params[ADDITIONAL_LORAS], reader.prefix + ADDITIONAL_LORAS))
    if reader.has(PATH_LORAS):  # the app's list form of additional_loras
        listed = dict(path_loras(reader.params[PATH_LORAS], reader.prefix + PATH_LORAS))
        values.update(with_additional_loras(values, listed, reader.prefix + PATH_LORAS))
    names, multipliers = values.get("lora_names"), values.get("lora_multipliers", [])
    if names is not None and len(multipliers) > len(names):
        raise ValidationError(reader.label("lora_multipliers"),
                              f"has {len(multipliers)} entries for {len(names)} LoRAs")
    return values


def phase_config_values(config: Any, field: str) -> dict[str, Any]:
    """Our fields from a headless `phase_config`:
    {"num_phases", "steps_per_phase": [..], "flow_shift", "sample_solver", "model_switch_phase",
     "phases": [{"guidance_scale", "loras": [{"url", "multiplier"}]}]}.

    Steps are sum(steps_per_phase); each switch threshold sits halfway between the last timestep of
    one phase and the first of the next on this worker's own grid for that solver, steps and shift,
    so each phase gets exactly its steps. A LoRA gets one multiplier per phase ("0" where a phase
    does not list it). Defaults are the headless ones (solver "euler", shift 5, switch phase 2)."""
    if not isinstance(config, Mapping):
        raise ValidationError(field, "must be an object")
    phases = config.get("phases")
    if not isinstance(phases, list) or not 2 <= len(phases) <= 3 or not all(isinstance(p, Mapping) for p in phases):
        raise ValidationError(f"{field}.phases", "must be a list of 2 or 3 phase objects")
    counts = config.get("steps_per_phase")
    if not isinstance(counts, list) or len(counts) != len(phases):
        raise ValidationError(f"{field}.steps_per_phase", f"must list the steps of each of the {len(phases)} phases")
    counts = [to_int(count, f"{field}.steps_per_phase[{i}]") for i, count in enumerate(counts)]
    if any(count < 0 for count in counts) or sum(counts) < 1:
        raise ValidationError(f"{field}.steps_per_phase", f"must be counts >= 0 with at least one step, got {counts}")
    if "num_phases" in config and to_int(config["num_phases"], f"{field}.num_phases") != len(phases):
        raise ValidationError(f"{field}.num_phases", f"says {config['num_phases']} but {len(phases)} phases are given")
    values: dict[str, Any] = {
        "num_inference_steps": sum(counts),
        "guidance_phases": len(phases),
        "flow_shift": to_float(config.get("flow_shift", 5.0), f"{field}.flow_shift"),
        "sample_solver": config.get("sample_solver", "euler"),
        "model_switch_phase": to_int(config.get("model_switch_phase", 2), f"{field}.model_switch_phase"),
    }
    with validation_errors(f"{field}."):
        values = {name: typed(name, value) for name, value in values.items()}
        grid = timesteps(values["sample_solver"], values["num_inference_steps"], values["flow_shift"]).tolist()
    ends = [sum(counts[: i + 1]) for i in range(len(phases) - 1)]  # first step of phases 2 (and 3)
    for name, end in zip(("switch_threshold", "switch_threshold2"), ends):
        values[name] = 1000.0 if end == 0 else 0.0 if end >= len(grid) else (grid[end - 1] + grid[end]) / 2
    for i, (phase, name) in enumerate(zip(phases, ("guidance_scale", "guidance2_scale", "guidance3_scale"))):
        values[name] = to_float(phase.get("guidance_scale", 1.0), f"{field}.phases[{i}].guidance_scale")
    values["lora_names"], values["lora_multipliers"] = _phase_loras(phases, field)
    return values


def _phase_loras(phases: list[Mapping[str, Any]], field: str) -> tuple[list[str], list[str]]:
    """Unique LoRAs of all phases, in order of appearance, each with "m1;m2[;m3]"."""
    per_lora: dict[str, list[str]] = {}
    for i, phase in enumerate(phases):
        loras = phase.get("loras", [])
        if not isinstance(loras, list):
            raise ValidationError(f"{field}.phases[{i}].loras", "must be a list of {\"url\", \"multiplier\"}")
        for j, lora in enumerate(loras):
            where = f"{field}.phases[{i}].loras[{j}]"
            url = lora.get("url") if isinstance(lora, Mapping) else None
            if not isinstance(url, str):
                raise ValidationError(where, "must be {\"url\": ..., \"multiplier\": ...}")
            if not url.strip():
                continue  # the headless parser skips blank entries
            multiplier = parse_multipliers([lora.get("multiplier", 1.0)], f"{where}.multiplier")[0]
            per_lora.setdefault(url, ["0"] * len(phases))[i] = multiplier
    return list(per_lora), [";".join(values) for values in per_lora.values()]


def segment_overrides(phase_config: Any, segment_loras: Any, phase_field: str, loras_field: str) -> dict[str, Any]:
    """One segment's sampling overrides from Reigh's per-segment settings (a phase config, and LoRAs
    [{"path", "strength"}], either may be null): its own phase config, and its own LoRAs, which win
    over any phase config's (as in Reigh-Worker's segment handler). The fields name them for errors."""
    values: dict[str, Any] = {}
    if phase_config is not None:
        values.update(phase_config_values(phase_config, phase_field))
    if segment_loras is not None:
        chosen = path_loras(segment_loras, loras_field)
        values["lora_names"] = [path for path, _ in chosen]
        values["lora_multipliers"] = parse_multipliers([strength for _, strength in chosen], loras_field)
    return values


def path_loras(loras: Any, field: str) -> list[tuple[str, Any]]:
    """(path, strength) of each LoRA of Reigh's list form [{"path", "strength"}] (strength 1 when
    left out); entries without a path are skipped, as the headless LoRA parser does."""
    if not isinstance(loras, list) or not all(isinstance(lora, Mapping) for lora in loras):
        raise ValidationError(field, "must be a list of {\"path\", \"strength\"}")
    chosen = [lora for lora in loras if lora.get("path")]
    if not all(isinstance(lora["path"], str) for lora in chosen):
        raise ValidationError(field, "each LoRA's path must be a string")
    return [(lora["path"], lora.get("strength", 1.0)) for lora in chosen]


def with_additional_loras(values: Mapping[str, Any], additional: Any, field: str) -> dict[str, list[str]]:
    """lora_names / lora_multipliers with `additional_loras` ({URL or name: multiplier}) appended.
    A LoRA already listed (same file) keeps its multiplier, unless the additional one is a phase
    string ("1;0"), as in the headless LoRA config."""
    if not isinstance(additional, Mapping):
        raise ValidationError(field, "must be an object {URL or name: multiplier}")
    names = list(values.get("lora_names") or [])
    multipliers = list(values.get("lora_multipliers") or [])
    multipliers += ["1"] * (len(names) - len(multipliers))
    stems = [lora_file_stem(name).lower() for name in names]
    for name, multiplier in additional.items():
        text = parse_multipliers([multiplier if multiplier is not None else 1.0], f"{field}.{name}")[0]
        stem = lora_file_stem(name).lower()
        if stem in stems:
            if ";" in text:
                multipliers[stems.index(stem)] = text
            continue
        names.append(name)
        multipliers.append(text)
        stems.append(stem)
    return {"lora_names": names, "lora_multipliers": multipliers}


def check_model_family(reader: ParamReader) -> None:
    """`model_family` as the headless worker reads it: "wan" (or anything it does not know, which it
    infers from the model name) changes nothing here; "ltx" asks for LTX-2, which this worker lacks."""
    family = reader.text(MODEL_FAMILY, None)
    if family == "ltx":
        raise ValidationError(reader.prefix + MODEL_FAMILY, "\"ltx\" (LTX-2) is not supported; this worker runs Wan models")


def compose_prompt(prompt: str, reader: ParamReader) -> str:
    """A prompt with `text_before_prompts` and `text_after_prompts` around it, joined by spaces (blank
    parts left out), as the headless orchestrator builds each segment's prompt."""
    before, after = reader.text(TEXT_BEFORE, "").strip(), reader.text(TEXT_AFTER, "").strip()
    return " ".join(part for part in (before, prompt, after) if part)


def ignored_params(reader: ParamReader, overridden: Mapping[str, str] | None = None) -> dict[str, str]:
    """Keys of the row that change nothing here though they were meant to: never read and not a
    known no-op (nor null, empty, or a neutral adjustment), a switch this worker does not honour
    turned on, or replaced by another key."""
    ignored = {reader.prefix + key: reason for key, reason in (overridden or {}).items()}
    for key in reader.unread():
        value = reader.params[key]
        if (key in NO_OP_KEYS or (key in OFF_SWITCHES and not value) or value in (None, "", [], {})
                or (key in NEUTRAL_VALUES and value in NEUTRAL_VALUES[key])):
            continue  # a no-op, a switch left off, a neutral adjustment, or a key that asks for nothing
        reason = "a switch this worker does not honour" if key in OFF_SWITCHES else "not a parameter this worker uses"
        ignored[reader.prefix + key] = reason
    return ignored
