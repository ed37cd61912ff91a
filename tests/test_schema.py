"""The parameter schema (wan_engine.schema): one table of fields with types, bounds, aliases and
default sources; reading rows by any name of a field; defaults request > preset > definition >
family; the torch-free check of a whole request."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from wan_engine.errors import InvalidRequest
from wan_engine.registry import ModelRegistry
from wan_engine.request import GenerationRequest
from wan_engine.schema import (
    FAMILY_DEFAULTS,
    FIELDS,
    Limits,
    markdown_table,
    parse_float,
    parse_int,
    read,
    validate,
)
from wan_engine.schema import resolve as resolve_parameters
from wan_engine.testing import write_tiny_models


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> ModelRegistry:
    return ModelRegistry(models_dir=write_tiny_models(tmp_path_factory.mktemp("models")))


# ---- defaults and their sources --------------------------------------------------------------------------

def test_explicit_values_beat_the_definition_which_beats_the_family(registry: ModelRegistry) -> None:
    spec = registry.get("t2v_2_2")
    values, sources = resolve_parameters(spec, {"guidance_scale": 6.0, "num_inference_steps": None})
    assert (values["guidance_scale"], sources["guidance_scale"]) == (6.0, "request")
    assert (values["guidance2_scale"], sources["guidance2_scale"]) == (3.0, "definition")
    assert (values["flow_shift"], sources["flow_shift"]) == (12.0, "definition")
    assert (values["num_inference_steps"], sources["num_inference_steps"]) == (10, "family")
    assert (values["guidance3_scale"], sources["guidance3_scale"]) == (1.0, "family")


@pytest.mark.parametrize("key,family", [("t2v_1.3B", "wan2_1"), ("vace_14B", "wan2_1")])
def test_wan21_family_defaults_fill_what_the_definition_leaves_out(
    registry: ModelRegistry, key: str, family: str
) -> None:
    values, sources = resolve_parameters(registry.get(key), {})
    assert values["num_inference_steps"] == 25 and values["guidance_scale"] == 7.5
    assert {name: values[name] for name in FAMILY_DEFAULTS[family]} == FAMILY_DEFAULTS[family]
    assert set(sources.values()) == {"family"}


def test_wan22_family_defaults_are_ten_steps_guidance_one_shift_two(registry: ModelRegistry) -> None:
    values, sources = resolve_parameters(registry.get("tiny_vace_2_2"), {})
    assert (values["guidance_scale"], values["guidance2_scale"], values["flow_shift"]) == (1.0, 1.0, 2.0)
    assert sources["flow_shift"] == "family" and values["switch_threshold"] == 875.0
    assert FAMILY_DEFAULTS["wan2_2"]["num_inference_steps"] == 10
    assert (values["num_inference_steps"], sources["num_inference_steps"]) == (4, "definition")


def test_a_generation_request_resolves_like_its_fields(registry: ModelRegistry) -> None:
    request = GenerationRequest(
        model="vace_22_14b", prompt="a cat", width=832, height=480, video_length=81, flow_shift=3.0,
        sample_solver="euler", lora_names=["CausVid"], lora_multipliers=["1;0"],
    )  # fmt: skip
    values, sources = resolve_parameters(registry.get(request.model), vars(request))
    assert (values["flow_shift"], values["sample_solver"]) == (3.0, "euler")
    assert (values["lora_names"], values["lora_multipliers"]) == (["CausVid"], ["1;0"])
    assert sources["lora_names"] == sources["lora_multipliers"] == sources["flow_shift"] == "request"
    assert sources["num_inference_steps"] == "preset"


def test_definition_loras_apply_unless_the_request_names_its_own(registry: ModelRegistry) -> None:
    spec = registry.get("vace_14B_cocktail_2_2")
    values, sources = resolve_parameters(spec, {})
    assert values["lora_names"] == list(spec.loras) and values["lora_multipliers"] == ["1", "0.2", "0.5", "0.5"]
    assert sources["lora_names"] == "definition"
    values, _ = resolve_parameters(spec, {"lora_names": ["DetailEnhancerV1"]})
    assert (values["lora_names"], values["lora_multipliers"]) == (["DetailEnhancerV1"], [])
    values, sources = resolve_parameters(spec, {"lora_multipliers": ["1", "0", "0", "0"]})
    assert values["lora_names"] == list(spec.loras) and sources["lora_multipliers"] == "request"


def test_an_empty_solver_name_means_unipc(registry: ModelRegistry) -> None:
    assert resolve_parameters(registry.get("t2v"), {"sample_solver": ""})[0]["sample_solver"] == "unipc"


@pytest.mark.parametrize(
    "key,fields,field",
    [
        ("t2v", {"width": 830, "height": 480, "video_length": 81}, "resolution"),
        ("t2v", {"width": 832, "height": 488, "video_length": 81}, "resolution"),
        ("t2v", {"width": 832, "height": 480, "video_length": 80}, "video_length"),
        ("t2v", {"width": 832, "height": 480, "video_length": 0}, "video_length"),
        ("t2v_2_2", {"guidance_phases": 1}, "guidance_phases"),
        ("t2v_2_2", {"guidance_phases": 3, "model_switch_phase": 4}, "model_switch_phase"),
        ("t2v", {"sample_solver": "ddim"}, "sample_solver"),
        ("t2v", {"num_inference_steps": 2.5}, "num_inference_steps"),
        ("t2v", {"num_inference_steps": 0}, "num_inference_steps"),
        ("t2v", {"guidance_scale": "high"}, "guidance_scale"),
        ("t2v", {"flow_shift": 0}, "flow_shift"),
        ("t2v", {"guidance_phases": 3, "switch_threshold": 500, "switch_threshold2": 700}, "switch_threshold2"),
    ],
)
def test_bad_values_are_invalid_requests_naming_the_field(
    registry: ModelRegistry, tmp_path: Path, key: str, fields: dict, field: str
) -> None:
    with pytest.raises(InvalidRequest) as err:
        validate(registry, {"model": key, **fields}, tmp_path)
    assert err.value.field == field


def test_a_good_geometry_passes(registry: ModelRegistry, tmp_path: Path) -> None:
    checked = validate(registry, {"model": "t2v", "width": 832, "height": 480, "video_length": 81}, tmp_path)
    assert checked.values["num_inference_steps"] == 25 and len(checked.plan) == 25


@pytest.mark.parametrize("preset,steps,guidance", [("vace_21_14b", 25, 7.5), ("vace_22_14b", 10, 1.0)])
def test_a_presets_values_come_before_its_definitions_and_say_so(registry: ModelRegistry, preset: str, steps: int,
                                                                 guidance: float) -> None:
    values, sources = resolve_parameters(registry.get(preset), {"guidance_scale": 3.0})
    assert values["num_inference_steps"] == steps and sources["num_inference_steps"] == "preset"
    assert (values["guidance_scale"], sources["guidance_scale"]) == (3.0, "request")
    assert sources["guidance_phases"] in ("definition", "family")


def test_model_switch_phase_3_keeps_the_high_noise_expert_for_every_step_as_in_wan2gp(registry: ModelRegistry,
                                                                                      tmp_path: Path) -> None:
    fields = {"model": "tiny_vace_2_2", "guidance_phases": 3, "switch_threshold": 900, "switch_threshold2": 500,
              "num_inference_steps": 6}
    assert {s.expert for s in validate(registry, {**fields, "model_switch_phase": 3}, tmp_path).plan} == {"high"}
    switched = validate(registry, {**fields, "model_switch_phase": 2}, tmp_path).plan
    assert [s.expert for s in switched if s.phase == 3] == ["low"] * sum(s.phase == 3 for s in switched) != []


def test_below_three_phases_any_switch_phase_reads_as_1_and_the_source_says_so(registry: ModelRegistry) -> None:
    values, sources = resolve_parameters(registry.get("tiny_vace_2_2"), {"model_switch_phase": 3})
    assert values["model_switch_phase"] == 1 and "read as 1" in sources["model_switch_phase"]


def test_a_bad_definition_value_fails_naming_the_field_and_where_it_came_from(tmp_path: Path) -> None:
    (tmp_path / "presets").mkdir()
    (tmp_path / "m.json").write_text('{"model": {"architecture": "tiny_t2v", "URLs": ["x.safetensors"]}, '
                                     '"num_inference_steps": "many"}')
    with pytest.raises(InvalidRequest) as err:
        resolve_parameters(ModelRegistry(tmp_path, tmp_path).get("m"), {})
    assert err.value.field.startswith("num_inference_steps (from the definition of m")


# ---- reading rows by any name of a field -----------------------------------------------------------------

def test_every_name_of_a_field_reads_into_it_and_the_key_used_is_kept() -> None:
    reading = read({"steps": "6", "model_name": "vace_14B", "vace_version": "vace_21_14b", "activated_loras": "a",
                    "loras_multipliers": "1;0 0.5", "seed_base": 7, "parsed_resolution_wh": "902x508"})
    assert reading.values == {"num_inference_steps": 6, "model": "vace_14B", "preset": "vace_21_14b",
                              "lora_names": ["a"], "lora_multipliers": ["1;0", "0.5"], "seed": 7,
                              "resolution": (902, 508)}
    assert reading.keys["num_inference_steps"] == "steps" and reading.label("num_inference_steps") == \
        "steps (num_inference_steps)"
    assert {"steps", "model_name", "seed_base"} <= reading.used


def test_two_names_of_one_field_with_different_values_fail_naming_both() -> None:
    with pytest.raises(InvalidRequest) as err:
        read({"num_inference_steps": 10, "steps": 20})
    assert "num_inference_steps" in str(err.value) and "steps" in str(err.value)
    assert read({"num_inference_steps": 10, "steps": "10"}).values["num_inference_steps"] == 10  # same value: fine


@pytest.mark.parametrize("params,label", [
    ({"steps": 5000}, "steps (num_inference_steps)"),
    ({"steps": "ten"}, "steps (num_inference_steps)"),
    ({"guidance_scale": float("inf")}, "guidance_scale"),
    ({"seed_base": -5}, "seed_base (seed)"),
    ({"loras_multipliers": {"a": 1}}, "loras_multipliers (lora_multipliers)"),
    ({"sample_solver": "ddim"}, "sample_solver"),
])
def test_a_wrong_type_or_range_names_the_field_and_the_alias_it_came_by(params: dict, label: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        read(params)
    assert err.value.field == label


@pytest.mark.parametrize("text", ["1_000", "\uff19", "\u0669", "1e3", "nan", "inf", " ", "0x10", "9" * 50])
def test_an_integer_is_only_a_plain_ascii_decimal(text: str) -> None:
    with pytest.raises(InvalidRequest):
        parse_int(text, "n")


@pytest.mark.parametrize("text", ["1_0.5", "\uff12.5", "nan", "-inf", "1e309", "2,5"])
def test_a_number_is_only_a_plain_ascii_decimal_and_finite(text: str) -> None:
    with pytest.raises(InvalidRequest):
        parse_float(text, "x")


def test_plain_digit_strings_and_integral_floats_are_numbers() -> None:
    assert (parse_int("9", "n"), parse_int(" -3 ", "n"), parse_int(81.0, "n")) == (9, -3, 81)
    assert (parse_float("2.5", "x"), parse_float("1e-3", "x"), parse_float(7, "x")) == (2.5, 0.001, 7.0)
    with pytest.raises(InvalidRequest):
        parse_float(10**400, "x")  # an int too big for a float: a clear error, not OverflowError


@pytest.mark.parametrize("params", [{"guidance_scale": "x" * 1_000_000}, {"model_name": "m" * 1_000_000},
                                    {"video_guide": "/" * 1_000_000}, {"lora_names": ["a", "b" * 1_000_000]}])
def test_an_echoed_value_is_cut_short(params: dict) -> None:
    with pytest.raises(InvalidRequest) as err:
        read(params)
    assert len(str(err.value)) < 300


def test_every_field_with_bounds_has_a_kind_that_has_bounds() -> None:
    for spec in FIELDS.values():
        assert (spec.minimum is None) == (spec.maximum is None), spec.name
        if spec.minimum is not None:
            assert spec.kind in ("int", "float"), spec.name
        assert not set(spec.aliases) & set(FIELDS) - {"prompt", "negative_prompt", "video_length"}, spec.name


# ---- the whole request, torch-free ----------------------------------------------------------------------

def test_validate_finds_lora_files_by_name_and_expands_their_multipliers(registry: ModelRegistry,
                                                                         tmp_path: Path) -> None:
    (tmp_path / "loras").mkdir()
    (tmp_path / "loras" / "Wan21_CausVid_14B_T2V_lora_rank32_v2.safetensors").write_bytes(b"")
    request = GenerationRequest(model="tiny_vace_2_2", prompt="p", width=32, height=32, video_length=5,
                                lora_names=["CausVid"], lora_multipliers=["1;0"])  # the seed's short name
    checked = validate(registry, request, tmp_path)
    assert checked.lora_files == [tmp_path / "loras" / "Wan21_CausVid_14B_T2V_lora_rank32_v2.safetensors"]
    assert checked.lora_schedule == [[1.0 if s.phase == 1 else 0.0 for s in checked.plan]]


def test_limits_bound_the_prompt_and_width_x_height_x_frames(registry: ModelRegistry, tmp_path: Path) -> None:
    limits = Limits(max_prompt_chars=10, max_pixel_frames=32 * 32 * 5)
    base = {"model": "tiny_t2v", "width": 32, "height": 32, "video_length": 5}
    validate(registry, {**base, "prompt": "p" * 10}, tmp_path, limits)
    with pytest.raises(InvalidRequest) as err:
        validate(registry, {**base, "prompt": "p" * 11}, tmp_path, limits)
    assert err.value.field == "prompt" and "max_prompt_chars" in err.value.rule
    with pytest.raises(InvalidRequest) as err:
        validate(registry, {**base, "video_length": 9}, tmp_path, limits)
    assert err.value.field == "video_length" and "max_pixel_frames" in err.value.rule


def test_reading_and_validating_never_import_torch(tmp_path: Path) -> None:
    """What the orchestrator and the param readers use: the schema, the registry, the travel planner
    and the generation handlers' modules; torch (and CUDA with it) stays out of the process."""
    code = (
        "import sys\n"
        "from wan_engine.registry import ModelRegistry\n"
        "from wan_engine.schema import read, validate\n"
        "import worker.params, worker.travel.plan, worker.handlers.generate, worker.handlers.travel_orchestrator\n"
        "registry = ModelRegistry(sys.argv[1])\n"
        "given = read({'model_name': 'tiny_vace_2_2', 'steps': '3', 'prompt': 'p'}).values\n"
        "validate(registry, {**given, 'width': 32, 'height': 32, 'video_length': 5}, sys.argv[1])\n"
        "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))\n"
    )
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True)


def test_the_table_in_docs_params_md_is_the_schema() -> None:
    """docs/params.md shows the fields as `python -m wan_engine.schema` writes them."""
    doc = (Path(__file__).resolve().parent.parent / "docs" / "params.md").read_text()
    table = doc.split("<!-- schema-table:", 1)[1].split("-->", 1)[1].split("<!-- /schema-table -->", 1)[0]
    assert table.strip() == markdown_table().strip()
    assert all(f"`{name}`" in table for name in FIELDS)
