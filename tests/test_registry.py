"""Model definitions, presets, file lookup and parameter resolution."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from wan_engine.errors import UnknownModel, WeightsMissing
from wan_engine.nn.dit import VACE_14B_LAYERS, VACE_IN_DIM, WAN21_14B, WAN21_1_3B, WanDiT
from wan_engine.nn.t5 import UMT5_XXL
from wan_engine.nn.vae import TINY_VAE
from wan_engine.registry import ModelRegistry, ModelSpec
from wan_engine.multipliers import lora_multiplier_schedule
from wan_engine.schema import resolve, step_plan
from wan_engine.testing import write_tiny_models

TINY_KEYS = ("tiny_t2v", "tiny_vace", "tiny_t2v_2_2", "tiny_vace_2_2")


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_models(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def registry(tiny_models: Path) -> ModelRegistry:
    return ModelRegistry(models_dir=tiny_models)


def write_defaults(folder: Path, definitions: dict, presets: dict | None = None) -> Path:
    (folder / "presets").mkdir(parents=True)
    for key, definition in definitions.items():
        (folder / f"{key}.json").write_text(json.dumps(definition))
    for name, preset in (presets or {}).items():
        (folder / "presets" / f"{name}.json").write_text(json.dumps(preset))
    return folder


def base_files(spec: ModelSpec) -> list[tuple[str, ...]]:
    return [expert.base for expert in spec.experts]


def test_the_shipped_definitions_and_presets_are_all_known(registry: ModelRegistry) -> None:
    expected = {
        "t2v_1.3B", "t2v", "vace_1.3B", "vace_14B", "t2v_2_2", "vace_14B_cocktail_2_2", *TINY_KEYS,
        "vace_21_14b", "vace_22_14b", "vace_21_13b", "t2v_14B",
    }  # fmt: skip
    assert expected <= set(registry.known_keys)
    assert all(isinstance(registry.get(key), ModelSpec) for key in registry.known_keys)


def test_real_definitions_use_wan2gp_file_names(registry: ModelRegistry) -> None:
    assert base_files(registry.get("t2v")) == [("wan2.1_text2video_14B_mbf16.safetensors",)]
    assert base_files(registry.get("t2v_2_2")) == [
        ("wan2.2_text2video_14B_high_mbf16.safetensors",),
        ("wan2.2_text2video_14B_low_mbf16.safetensors",),
    ]
    assert registry.get("vace_14B").experts[0].modules == (("wan2.1_Vace_14B_module_mbf16.safetensors",),)
    spec = registry.get("t2v_1.3B")
    assert spec.vae_file == ("Wan2.1_VAE.safetensors",)
    assert spec.text_encoder_file == ("umt5-xxl/models_t5_umt5-xxl-enc-bf16.safetensors",)
    assert spec.tokenizer_folder == "umt5-xxl"


def test_urls_naming_another_definition_reuse_its_files(registry: ModelRegistry) -> None:
    assert base_files(registry.get("vace_14B")) == base_files(registry.get("t2v"))
    assert base_files(registry.get("vace_1.3B")) == base_files(registry.get("t2v_1.3B"))
    assert base_files(registry.get("vace_14B_cocktail_2_2")) == base_files(registry.get("t2v_2_2"))


def test_modules_naming_another_definition_reuse_its_modules_on_every_expert(registry: ModelRegistry) -> None:
    vace = registry.get("vace_14B").experts[0].modules
    assert [e.modules for e in registry.get("vace_14B_cocktail_2_2").experts] == [vace, vace]


def test_a_module_pair_gives_each_expert_its_own_module(registry: ModelRegistry) -> None:
    high, low = registry.get("tiny_vace_2_2").experts
    assert (high.name, high.modules) == ("high", (("tiny_vace_2_2_module_high.safetensors",),))
    assert (low.name, low.modules) == ("low", (("tiny_vace_2_2_module_low.safetensors",),))


def test_vace_fun_experts_carry_their_own_vace_blocks_and_the_lightning_baselines_reuse_them(
        registry: ModelRegistry) -> None:
    """Wan2GP's vace_fun_14B_2_2 and the headless VACE baselines (reigh-worker Wan2GP/defaults, April 2026)."""
    fun = registry.get("vace_fun_14B_2_2")
    assert fun.is_vace and fun.is_dual_expert and [e.modules for e in fun.experts] == [(), ()]
    assert base_files(fun) == [("Wan2_2_Fun_VACE_A14B_HIGH_mbf16.safetensors",), ("Wan2_2_Fun_VACE_A14B_LOW_mbf16.safetensors",)]
    assert fun.dit_config == registry.get("vace_14B_cocktail_2_2").dit_config
    for key, phases, switch in (("wan_2_2_vace_lightning_baseline_2_2_2", 3, 2), ("wan_2_2_vace_lightning_baseline_3_3", 2, 1)):
        spec = registry.get(key)
        assert base_files(spec) == base_files(fun) and spec.loras == ()
        assert (spec.defaults["guidance_phases"], spec.defaults["model_switch_phase"], spec.defaults["num_inference_steps"]) == (
            phases, switch, 6)


def test_group_wan2_2_and_urls2_make_a_dual_expert_wan22_model(registry: ModelRegistry) -> None:
    for key in ("t2v_2_2", "vace_14B_cocktail_2_2", "tiny_vace_2_2"):
        spec = registry.get(key)
        assert spec.family == "wan2_2" and spec.is_dual_expert
        assert [e.name for e in spec.experts] == ["high", "low"]
    for key in ("t2v", "vace_1.3B", "tiny_vace"):
        spec = registry.get(key)
        assert spec.family == "wan2_1" and not spec.is_dual_expert and spec.experts[0].name == "main"


def test_network_configs_come_from_the_architecture(registry: ModelRegistry) -> None:
    assert registry.get("t2v_1.3B").dit_config == WAN21_1_3B
    assert registry.get("vace_14B").dit_config == dict(WAN21_14B, vace_layers=VACE_14B_LAYERS, vace_in_dim=VACE_IN_DIM)
    assert registry.get("vace_14B").text_encoder_config == UMT5_XXL and registry.get("t2v").text_len == 512
    tiny = registry.get("tiny_vace_2_2")
    assert tiny.is_vace and tiny.vae_config == TINY_VAE and tiny.text_len == 32
    assert isinstance(WanDiT(**tiny.dit_config), WanDiT)


def test_the_cocktail_carries_its_loras_and_multipliers(registry: ModelRegistry) -> None:
    spec = registry.get("vace_14B_cocktail_2_2")
    assert len(spec.loras) == 4 and spec.loras[0].endswith("Wan21_CausVid_14B_T2V_lora_rank32_v2.safetensors")
    assert spec.lora_multipliers == ("1", "0.2", "0.5", "0.5")


def test_every_shipped_definition_resolves_its_sampling_defaults_and_plans_its_steps(registry: ModelRegistry) -> None:
    for key in registry.known_keys:
        spec = registry.get(key)
        values, _ = resolve(spec, {})
        plan = step_plan(values, spec.is_dual_expert)
        assert len(plan) == values["num_inference_steps"], key
        schedule = lora_multiplier_schedule(values["lora_multipliers"], len(values["lora_names"]), plan,
                                            values["guidance_phases"], values["model_switch_phase"])
        assert [len(steps) for steps in schedule] == [len(plan)] * len(spec.loras), key


def test_wan2gps_three_phase_lightning_vace_runs_cfg_on_the_high_expert_then_the_loras_phase_by_phase(
    registry: ModelRegistry,
) -> None:
    spec = registry.get("vace_14B_lightning_3p_2_2")
    values, sources = resolve(spec, {})
    assert (values["num_inference_steps"], values["guidance_phases"], values["sample_solver"]) == (8, 3, "euler")
    assert sources["switch_threshold2"] == "definition"
    plan = step_plan(values, spec.is_dual_expert)
    assert [(s.phase, s.expert, s.guidance) for s in plan][:1] == [(1, "high", 3.5)]
    assert {(s.phase, s.expert) for s in plan} == {(1, "high"), (2, "high"), (3, "low")}  # model_switch_phase 2
    schedule = lora_multiplier_schedule(values["lora_multipliers"], 2, plan, 3, values["model_switch_phase"])
    by_phase = [[{m for m, s in zip(steps, plan) if s.phase == phase} for phase in (1, 2, 3)] for steps in schedule]
    assert by_phase == [[{0.0}, {1.0}, {0.0}], [{0.0}, {0.0}, {1.0}]]


def test_an_unknown_key_is_unknown_model_listing_the_known_keys(registry: ModelRegistry) -> None:
    with pytest.raises(UnknownModel) as err:
        registry.get("wan3")
    assert err.value.field == "model" and "vace_14B_cocktail_2_2" in str(err.value) and "vace_22_14b" in str(err.value)


@pytest.mark.parametrize(
    "preset,model,steps,guidance",
    [
        ("vace_21_14b", "vace_14B", 25, 7.5),
        ("vace_22_14b", "vace_14B_cocktail_2_2", 10, 1.0),
        ("vace_21_13b", "vace_1.3B", 25, 7.5),
    ],
)
def test_presets_are_their_model_with_the_preset_defaults(
    registry: ModelRegistry, preset: str, model: str, steps: int, guidance: float
) -> None:
    spec = registry.get(preset)
    assert (spec.key, spec.preset) == (model, preset)
    assert spec.experts == registry.get(model).experts
    assert {"num_inference_steps": steps, "guidance_scale": guidance}.items() <= spec.preset_defaults.items()


@pytest.mark.parametrize("key", TINY_KEYS)
def test_the_files_wan_engine_testing_writes_are_found_for_each_tiny_model(
    registry: ModelRegistry, tiny_models: Path, key: str
) -> None:
    spec = registry.get(key)
    files = registry.files_for(spec)
    assert list(files.experts) == [e.name for e in spec.experts]
    assert all(len(paths) == 1 + len(spec.experts[0].modules) for paths in files.experts.values())
    assert all(p.is_file() and p.parent == tiny_models for paths in files.experts.values() for p in paths)
    assert files.vae.is_file() and files.text_encoder.is_file() and (files.tokenizer / "tokenizer.json").is_file()


def test_missing_weights_list_the_expected_names_and_the_folder(tmp_path: Path) -> None:
    registry = ModelRegistry(models_dir=tmp_path)
    with pytest.raises(WeightsMissing) as err:
        registry.files_for(registry.get("vace_14B_cocktail_2_2"))
    message = str(err.value)
    for name in ("wan2.2_text2video_14B_high_mbf16.safetensors", "wan2.2_text2video_14B_low_mbf16.safetensors",
                 "wan2.1_Vace_14B_module_mbf16.safetensors", "Wan2.1_VAE.safetensors", str(tmp_path)):  # fmt: skip
        assert name in message
    assert "quanto" not in message


def test_the_first_alternative_present_is_used(tmp_path: Path, tiny_models: Path) -> None:
    defaults = write_defaults(tmp_path / "defaults", {
        "alt": {"model": {"architecture": "tiny_t2v", "URLs": ["absent.safetensors", "tiny_t2v.safetensors"]}},
    })  # fmt: skip
    registry = ModelRegistry(models_dir=tiny_models, defaults_dir=defaults)
    assert registry.files_for(registry.get("alt")).experts["main"] == [tiny_models / "tiny_t2v.safetensors"]


@pytest.mark.parametrize(
    "definitions,presets,message",
    [
        (
            {
                "a": {"model": {"architecture": "t2v", "URLs": "b"}},
                "b": {"model": {"architecture": "t2v", "URLs": "a"}},
            },
            {},
            "circular",
        ),
        ({"a": {"model": {"architecture": "t2v", "URLs": "nowhere"}}}, {}, "not a definition"),
        ({"a": {"model": {"architecture": "t9v", "URLs": ["x.safetensors"]}}}, {}, "unknown architecture"),
        ({"a": {"model": {"architecture": "t2v", "URLs": ["x.safetensors"]}}}, {"p": {"model": "b"}}, "preset p"),
    ],
)
def test_a_broken_definition_fails_at_startup_naming_it(
    tmp_path: Path, definitions: dict, presets: dict, message: str
) -> None:
    defaults = write_defaults(tmp_path / "defaults", definitions, presets)
    with pytest.raises(ValueError, match=message):
        ModelRegistry(models_dir=tmp_path, defaults_dir=defaults)


def test_the_operators_finetunes_add_definitions_and_replace_shipped_ones(tmp_path: Path) -> None:
    """<models_dir>/finetunes holds a deployment's own Wan2GP definitions: a new key is added, a shipped
    key is replaced (its presets follow the replacement), and a broken file fails at startup naming it."""
    defaults = write_defaults(tmp_path / "defaults", {"base": {"model": {"architecture": "t2v", "URLs": ["a.safetensors"]},
                                                               "flow_shift": 5}},
                              {"fast": {"model": "base", "num_inference_steps": 4}})
    models = tmp_path / "models"
    write_defaults(models / "finetunes", {
        "mine": {"model": {"architecture": "t2v", "URLs": "base"}, "guidance_scale": 2},
        "base": {"model": {"architecture": "t2v", "URLs": ["b.safetensors"]}, "flow_shift": 7},
    }, {})
    registry = ModelRegistry(models_dir=models, defaults_dir=defaults)
    assert registry.get("mine").defaults["guidance_scale"] == 2
    assert base_files(registry.get("mine")) == [("b.safetensors",)]  # the replaced base's files
    assert registry.get("base").defaults["flow_shift"] == 7 and registry.get("fast").defaults["flow_shift"] == 7
    (models / "finetunes" / "broken.json").write_text("{")
    with pytest.raises(ValueError, match="broken.json: not valid JSON"):
        ModelRegistry(models_dir=models, defaults_dir=defaults)
