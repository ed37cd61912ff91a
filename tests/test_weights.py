"""The safetensors loader: strict names and shapes, key maps, several files, the precision policy."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from wan_engine.errors import LoadError
from wan_engine.weights import load_model, save_state_dict


class Toy(nn.Module):
    """A network with a plain layer, a precision-sensitive table and a persistent buffer."""

    keep_in_fp32 = ("modulation",)

    def __init__(self, width: int = 4):
        super().__init__()
        self.proj = nn.Linear(width, width)
        self.modulation = nn.Parameter(torch.zeros(1, 2, width))
        self.register_buffer("steps", torch.zeros(3, dtype=torch.int64))


def toy_state(width: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {
        "proj.weight": torch.randn(width, width, generator=generator),
        "proj.bias": torch.randn(width, generator=generator),
        "modulation": torch.randn(1, 2, width, generator=generator),
        "steps": torch.arange(3),
    }


def test_loads_every_tensor_by_name(tmp_path: Path):
    state = toy_state()
    file = save_state_dict(state, tmp_path / "toy.safetensors")
    model = load_model(Toy, [file], dtype=torch.float32)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, state[name]), name


def test_casts_parameters_but_keeps_fp32_modules_and_buffers(tmp_path: Path):
    file = save_state_dict(toy_state(), tmp_path / "toy.safetensors")
    model = load_model(Toy, [file], dtype=torch.bfloat16)
    assert model.proj.weight.dtype == torch.bfloat16
    assert model.modulation.dtype == torch.float32
    assert model.steps.dtype == torch.int64


def test_loaded_model_is_for_inference(tmp_path: Path):
    file = save_state_dict(toy_state(), tmp_path / "toy.safetensors")
    model = load_model(Toy, [file], dtype=torch.float32)
    assert not model.training
    assert not any(p.requires_grad for p in model.parameters())


def test_missing_key_is_named(tmp_path: Path):
    state = toy_state()
    del state["proj.bias"]
    file = save_state_dict(state, tmp_path / "toy.safetensors")
    with pytest.raises(LoadError, match=r"1 missing: proj\.bias"):
        load_model(Toy, [file], dtype=torch.float32)


def test_unexpected_key_is_named(tmp_path: Path):
    state = toy_state() | {"proj.extra": torch.zeros(2)}
    file = save_state_dict(state, tmp_path / "toy.safetensors")
    with pytest.raises(LoadError, match=r"1 unexpected: proj\.extra"):
        load_model(Toy, [file], dtype=torch.float32)


def test_wrong_shape_names_both_shapes(tmp_path: Path):
    state = toy_state() | {"proj.bias": torch.zeros(5)}
    file = save_state_dict(state, tmp_path / "toy.safetensors")
    with pytest.raises(LoadError, match=r"wrong shape: proj\.bias: file \[5\], network \[4\]"):
        load_model(Toy, [file], dtype=torch.float32)


def test_key_map_renames_and_drops(tmp_path: Path):
    state = toy_state()
    renamed = {f"model.{k}": v for k, v in state.items()} | {"model.ignored": torch.zeros(1)}
    file = save_state_dict(renamed, tmp_path / "toy.safetensors")

    def key_map(key: str) -> str | None:
        return None if key == "model.ignored" else key.removeprefix("model.")

    model = load_model(Toy, [file], dtype=torch.float32, key_map=key_map)
    assert torch.equal(model.proj.weight, state["proj.weight"])


def test_several_files_make_one_model(tmp_path: Path):
    state = toy_state()
    base = save_state_dict({k: v for k, v in state.items() if k != "modulation"}, tmp_path / "base.safetensors")
    module = save_state_dict({"modulation": state["modulation"]}, tmp_path / "module.safetensors")
    model = load_model(Toy, [base, module], dtype=torch.float32)
    assert torch.equal(model.modulation, state["modulation"])


def test_key_in_two_files_is_an_error(tmp_path: Path):
    state = toy_state()
    base = save_state_dict(state, tmp_path / "base.safetensors")
    module = save_state_dict({"modulation": state["modulation"]}, tmp_path / "module.safetensors")
    with pytest.raises(LoadError, match=r"duplicated: modulation \(again in module\.safetensors\)"):
        load_model(Toy, [base, module], dtype=torch.float32)


def test_non_persistent_buffer_is_refused(tmp_path: Path):
    class WithDerivedBuffer(Toy):
        def __init__(self):
            super().__init__()
            self.register_buffer("table", torch.ones(2), persistent=False)

    file = save_state_dict(toy_state(), tmp_path / "toy.safetensors")
    with pytest.raises(LoadError, match="table"):
        load_model(WithDerivedBuffer, [file], dtype=torch.float32)
