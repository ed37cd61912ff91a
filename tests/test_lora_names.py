"""LoRA names as users write them: file stems, URLs, the alias table, parts of a stem."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO_ROOT

from wan_engine.errors import InvalidRequest
from wan_engine.loras import lora_file, lora_file_stem, read_lora_aliases, resolve_lora_name
from wan_engine.registry import ModelRegistry

CAUSVID = "Wan21_CausVid_14B_T2V_lora_rank32_v2"
CAUSVID_URL = f"https://huggingface.co/DeepBeepMeep/Wan2.1/resolve/main/loras_accelerators/{CAUSVID}.safetensors"


def make_loras(folder: Path, *stems: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for stem in stems:
        (folder / f"{stem}.safetensors").write_bytes(b"")  # resolution only looks at names
    return folder


@pytest.fixture
def loras_dir(tmp_path: Path) -> Path:
    return make_loras(tmp_path / "loras", CAUSVID, "DetailEnhancerV1")


def test_a_name_resolves_by_file_stem_case_insensitively_with_or_without_the_extension(loras_dir: Path) -> None:
    assert resolve_lora_name("detailenhancerv1", loras_dir).name == "DetailEnhancerV1.safetensors"
    assert resolve_lora_name("DetailEnhancerV1.safetensors", loras_dir).name == "DetailEnhancerV1.safetensors"


def test_a_url_resolves_by_its_file_name(loras_dir: Path) -> None:
    assert lora_file_stem(CAUSVID_URL) == CAUSVID
    assert resolve_lora_name(CAUSVID_URL, loras_dir).stem == CAUSVID


def test_the_seeds_short_names_resolve_through_the_alias_table(loras_dir: Path) -> None:
    assert resolve_lora_name("CausVid", loras_dir).stem == CAUSVID
    assert resolve_lora_name("causvid", loras_dir).stem == CAUSVID
    assert resolve_lora_name("DetailEnhancerV1", loras_dir).stem == "DetailEnhancerV1"


def test_every_alias_names_its_file_and_a_hub_source() -> None:
    aliases = read_lora_aliases()
    assert {"causvid", "detailenhancerv1", "accvid", "moviigen", "lightx2v"} <= set(aliases)
    for alias in aliases.values():
        assert alias.file.endswith(".safetensors") and alias.source is not None, alias.name


def test_an_alias_whose_file_is_absent_says_how_to_download_it(tmp_path: Path) -> None:
    loras = make_loras(tmp_path / "loras", "DetailEnhancerV1")
    with pytest.raises(InvalidRequest) as err:
        resolve_lora_name("CausVid", loras)
    assert err.value.field == "lora_names"
    assert f"{CAUSVID}.safetensors" in err.value.rule
    assert f"wan-worker models download --lora CausVid --models-dir {tmp_path}" in err.value.rule


def test_a_part_of_one_stem_resolves_to_that_file(tmp_path: Path) -> None:
    loras = make_loras(tmp_path / "loras", "my_style_v3_rank16", "other")
    assert resolve_lora_name("STYLE_v3", loras).name == "my_style_v3_rank16.safetensors"


def test_an_ambiguous_short_name_lists_the_candidates(tmp_path: Path) -> None:
    loras = make_loras(tmp_path / "loras", "style_a_v1", "style_b_v1", "unrelated")
    with pytest.raises(InvalidRequest) as err:
        resolve_lora_name("style", loras)
    assert err.value.field == "lora_names" and "ambiguous" in err.value.rule
    assert "style_a_v1.safetensors" in err.value.rule and "style_b_v1.safetensors" in err.value.rule
    assert "unrelated" not in err.value.rule


def test_an_unknown_name_lists_the_loras_present(loras_dir: Path) -> None:
    with pytest.raises(InvalidRequest) as err:
        resolve_lora_name("NoSuchLora", loras_dir)
    assert err.value.field == "lora_names"
    assert "DetailEnhancerV1" in err.value.rule and CAUSVID in err.value.rule


def test_lora_file_gives_the_download_name_and_source_of_urls_and_aliases(tmp_path: Path) -> None:
    loras = tmp_path / "loras"
    by_alias = lora_file("CausVid", loras)
    assert (by_alias.name, by_alias.source.url, by_alias.present) == (f"loras/{CAUSVID}.safetensors", CAUSVID_URL, None)
    renamed = lora_file("Lightning_T2V_high", loras)  # a generic upstream name gets a distinctive local one
    assert renamed.name == "loras/Wan2.2-T2V-A14B-4steps-lora-250928_high_noise_model.safetensors"
    assert renamed.source.path.endswith("/high_noise_model.safetensors")
    assert lora_file("plain_local", loras).source is None
    make_loras(loras, CAUSVID)
    assert lora_file(CAUSVID_URL, loras).present == loras / f"{CAUSVID}.safetensors"


def test_the_engine_resolves_the_seeds_lora_names(tmp_path: Path) -> None:
    make_loras(tmp_path / "loras", CAUSVID, "DetailEnhancerV1")
    registry = ModelRegistry(tmp_path)
    files = [f for f in registry.needed_files(registry.get("vace_22_14b"), lora_names=["CausVid", "DetailEnhancerV1"])
             if f.role == "lora"]
    assert [f.present.stem for f in files] == [CAUSVID, "DetailEnhancerV1"]


def test_name_resolution_does_not_import_torch() -> None:
    probe = "import sys, wan_engine.loras; assert 'torch' not in sys.modules, 'torch imported'"
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
