"""wan_engine.testing: the tiny checkpoints are complete, official-layout, reproducible, and alive."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from wan_engine import testing
from wan_engine.lora import applied_loras, load_lora
from wan_engine.registry import ModelRegistry
from wan_engine.weights import load_model

TINY_MODELS = ["tiny_t2v", "tiny_vace", "tiny_t2v_2_2", "tiny_vace_2_2", "tiny_i2v_2_2"]


def keys(path: Path) -> set[str]:
    with safe_open(str(path), framework="pt") as reader:
        return set(reader.keys())


def test_cli_writes_every_file_the_tiny_definitions_name(tmp_path: Path, capsys: pytest.CaptureFixture):
    testing.main([str(tmp_path)])
    printed = capsys.readouterr().out.strip()  # the folder, then the model keys it can now run
    assert str(tmp_path) in printed and set(TINY_MODELS) <= set(printed.rsplit("runs: ", 1)[1].split(", "))
    registry = ModelRegistry(tmp_path)
    for key in TINY_MODELS:
        registry.files_for(registry.get(key))  # raises WeightsMissing naming any absent file
    assert {p.name for p in (tmp_path / "loras").iterdir()} == {"tiny_kohya.safetensors", "tiny_peft.safetensors"}


def test_files_are_byte_identical_across_runs_and_rewrites_leave_them_untouched(tmp_path: Path, tiny_models_dir: Path):
    testing.write_tiny_models(tmp_path)
    files = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(tiny_models_dir) for p in tiny_models_dir.rglob("*") if p.is_file())
    assert all((tmp_path / f).read_bytes() == (tiny_models_dir / f).read_bytes() for f in files)
    stamps = {f: (tmp_path / f).stat().st_mtime_ns for f in files if f.suffix == ".safetensors"}
    testing.write_tiny_models(tmp_path)
    assert {f: (tmp_path / f).stat().st_mtime_ns for f in stamps} == stamps


def test_vace_modules_hold_only_vace_keys_and_merge_onto_their_base(tiny_models_dir: Path):
    for base, module in [
        ("tiny_t2v", "tiny_vace_module"),
        ("tiny_t2v_2_2_high", "tiny_vace_2_2_module_high"),
        ("tiny_t2v_2_2_low", "tiny_vace_2_2_module_low"),
    ]:
        module_keys = keys(tiny_models_dir / f"{module}.safetensors")
        assert module_keys and all(k.startswith(("vace_patch_embedding.", "vace_blocks.")) for k in module_keys)
        assert not any(k.startswith("vace") for k in keys(tiny_models_dir / f"{base}.safetensors"))
        files = [tiny_models_dir / f"{base}.safetensors", tiny_models_dir / f"{module}.safetensors"]
        load_model(lambda: testing.tiny_dit(vace=True), files, dtype=torch.float32)  # strict: every key, exact shapes


def test_the_two_experts_are_different_networks(tiny_models_dir: Path):
    high = load_model(testing.tiny_dit, [tiny_models_dir / "tiny_t2v_2_2_high.safetensors"], dtype=torch.float32)
    low = load_model(testing.tiny_dit, [tiny_models_dir / "tiny_t2v_2_2_low.safetensors"], dtype=torch.float32)
    assert not torch.equal(high.blocks[0].self_attn.q.weight, low.blocks[0].self_attn.q.weight)


def test_tiny_networks_are_neither_degenerate_nor_saturated(tiny_models_dir: Path):
    generator = torch.Generator().manual_seed(0)
    dit = load_model(testing.tiny_dit, [tiny_models_dir / "tiny_t2v.safetensors"], dtype=torch.float32)
    vae = load_model(testing.tiny_vae, [tiny_models_dir / "tiny_vae.safetensors"], dtype=torch.float32)
    latents = torch.randn(1, 16, 2, 4, 4, generator=generator)
    context = torch.randn(1, 8, 32, generator=generator)
    with torch.no_grad():
        flow = dit(latents, torch.tensor([500.0]), context)
        other_prompt = dit(latents, torch.tensor([500.0]), torch.randn(1, 8, 32, generator=generator))
        video = vae.decode(latents)
    assert 0.3 < flow.std() < 3.0
    assert (flow - other_prompt).std() > 0.05 * flow.std()  # the prompt matters
    assert video.std() > 0.2 and (video.abs() > 0.999).float().mean() < 0.3


@pytest.mark.parametrize("name", ["tiny_kohya", "tiny_peft"])
def test_tiny_loras_apply_to_the_tiny_dit_and_change_its_output(tiny_models_dir: Path, name: str):
    dit = load_model(testing.tiny_dit, [tiny_models_dir / "tiny_t2v.safetensors"], dtype=torch.float32)
    lora = load_lora(tiny_models_dir / "loras" / f"{name}.safetensors")
    generator = torch.Generator().manual_seed(1)
    latents, context = torch.randn(1, 16, 2, 4, 4, generator=generator), torch.randn(1, 8, 32, generator=generator)
    with torch.no_grad():
        plain = dit(latents, torch.tensor([700.0]), context)
        with applied_loras(dit, [lora], [[1.0]]) as active:
            assert not active.unmatched
            changed = dit(latents, torch.tensor([700.0]), context)
    assert (changed - plain).abs().max() > 0.01 * plain.std()
