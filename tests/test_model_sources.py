"""Every file a model definition needs has a hub source (checked without network), and a missing
file is reported once with its source and the command that downloads it."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from wan_engine.errors import WeightsMissing
from wan_engine.hub import HubFile, parse_hub_url
from wan_engine.registry import TINY_MODELS_URL, ModelRegistry

TINY_REPO = "wan-worker/tiny-models"


@pytest.fixture(scope="module")
def empty_registry(tmp_path_factory: pytest.TempPathFactory) -> ModelRegistry:
    return ModelRegistry(tmp_path_factory.mktemp("empty"))


def test_resolve_urls_parse_into_repo_revision_and_path_and_back() -> None:
    url = "https://huggingface.co/DeepBeepMeep/Wan2.1/resolve/main/umt5-xxl/models_t5_umt5-xxl-enc-bf16.safetensors"
    source = parse_hub_url(url)
    assert source == HubFile("DeepBeepMeep/Wan2.1", "umt5-xxl/models_t5_umt5-xxl-enc-bf16.safetensors", "main")
    assert source.url == url and source.sibling("tokenizer.json").path == "umt5-xxl/tokenizer.json"
    pinned = parse_hub_url("https://huggingface.co/o/r/resolve/0123abcd/x.safetensors")
    assert pinned.revision == "0123abcd"
    assert parse_hub_url("tiny_t2v.safetensors") is None
    assert parse_hub_url("https://example.com/a/b.safetensors") is None


def test_every_shipped_definition_and_preset_has_a_source_for_every_file_in_every_layout(
    empty_registry: ModelRegistry,
) -> None:
    assert len(empty_registry.known_keys) >= 14
    for key in empty_registry.known_keys:
        for layout, spec in empty_registry.layouts(empty_registry.get(key)).items():
            needed = empty_registry.needed_files(spec)
            roles = {f.role.split()[0] for f in needed}
            assert {"dit", "vae", "text", "tokenizer"} <= roles, (key, layout)
            for file in needed:
                assert file.source is not None, f"{key} ({layout}): {file.describe()}"
                assert file.source.url.startswith("https://huggingface.co/") and "quanto" not in file.source.path


def test_the_real_models_offer_the_published_layouts(empty_registry: ModelRegistry) -> None:
    layouts = empty_registry.layouts(empty_registry.get("vace_22_14b"))
    assert list(layouts) == ["wan2gp", "official", "diffusers", "comfy_fp16", "comfy_fp8_scaled"]
    official = {f.role: f for f in empty_registry.needed_files(layouts["official"], with_loras=False)}
    assert official["dit high"].source.url == (
        "https://huggingface.co/Wan-AI/Wan2.2-T2V-A14B/resolve/main/high_noise_model/"
        "diffusion_pytorch_model.safetensors.index.json"
    )
    assert official["dit high"].names == ("Wan2.2-T2V-A14B/high_noise_model/diffusion_pytorch_model.safetensors.index.json",)
    assert official["vae"].names == ("Wan2.2-T2V-A14B/Wan2.1_VAE.pth",)
    assert official["vace module high"].names == ("wan2.1_Vace_14B_module_mbf16.safetensors",)  # inherited as named


def test_shared_files_come_from_wan2gps_own_repo(empty_registry: ModelRegistry) -> None:
    needed = {f.role: f for f in empty_registry.needed_files(empty_registry.get("vace_22_14b"))}
    wan21 = "https://huggingface.co/DeepBeepMeep/Wan2.1/resolve/main/"
    assert needed["vae"].source.url == wan21 + "Wan2.1_VAE.safetensors"
    assert needed["text encoder"].names == ("umt5-xxl/models_t5_umt5-xxl-enc-bf16.safetensors",)
    assert needed["text encoder"].source.url == wan21 + "umt5-xxl/models_t5_umt5-xxl-enc-bf16.safetensors"
    assert needed["tokenizer"].source.url == wan21 + "umt5-xxl/tokenizer.json"


def test_tiny_definitions_come_from_the_tiny_repo_under_their_own_names(empty_registry: ModelRegistry) -> None:
    for key in empty_registry.known_keys:
        if key.startswith("tiny_"):
            for file in empty_registry.needed_files(empty_registry.get(key)):
                assert file.source.repo == TINY_REPO and file.source.path == file.download_name, key
                assert file.source.url == TINY_MODELS_URL + file.download_name


def test_missing_files_are_listed_once_each_with_source_and_download_command(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path)
    with pytest.raises(WeightsMissing) as err:
        registry.files_for(registry.get("vace_22_14b"))
    message = str(err.value)
    module = "wan2.1_Vace_14B_module_mbf16.safetensors"
    assert sum(module in line for line in message.splitlines()) == 1  # shared by both experts: one file
    assert f"https://huggingface.co/DeepBeepMeep/Wan2.1/resolve/main/{module}" in message
    assert f"wan-worker models download vace_22_14b --models-dir {tmp_path}" in message
    assert len(err.value.missing) == len(set(err.value.missing)) == 6  # 2 experts, module, VAE, umT5, tokenizer


def test_a_definition_with_local_names_only_is_valid_and_says_it_has_no_source(tmp_path: Path) -> None:
    defaults = tmp_path / "defaults"
    (defaults / "presets").mkdir(parents=True)
    (defaults / "mine.json").write_text(json.dumps({"model": {"architecture": "tiny_t2v", "URLs": ["my.safetensors"]}}))
    registry = ModelRegistry(tmp_path / "models", defaults)
    dit = registry.needed_files(registry.get("mine"))[0]
    assert (dit.names, dit.source) == (("my.safetensors",), None)
    assert "no source" in dit.describe()


def test_text_encoder_urls_live_in_their_folder_beside_their_tokenizer(tmp_path: Path) -> None:
    defaults = tmp_path / "defaults"
    (defaults / "presets").mkdir(parents=True)
    url = "https://huggingface.co/someone/enc/resolve/v1/umt5/enc-fp16.safetensors"
    definition = {"model": {"architecture": "t2v", "URLs": "t2v", "text_encoder_URLs": [url],
                            "text_encoder_folder": "umt5-fp16"}}  # fmt: skip
    (defaults / "custom.json").write_text(json.dumps(definition))
    (defaults / "t2v.json").write_text((Path(__file__).parent.parent / "defaults" / "t2v.json").read_text())
    registry = ModelRegistry(tmp_path / "models", defaults)
    needed = {f.role: f for f in registry.needed_files(registry.get("custom"))}
    assert needed["text encoder"].names == ("umt5-fp16/enc-fp16.safetensors",)
    assert needed["text encoder"].source == HubFile("someone/enc", "umt5/enc-fp16.safetensors", "v1")
    assert needed["tokenizer"].names == ("umt5-fp16/tokenizer.json",)
    assert needed["tokenizer"].source == HubFile("someone/enc", "umt5/tokenizer.json", "v1")
