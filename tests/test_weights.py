"""The safetensors loader: strict names and shapes, key maps, several files, the precision policy."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from wan_engine.errors import LoadError
from wan_engine.nn.dit import TINY_DIT, TINY_VACE_LAYERS, VACE_IN_DIM, WanDiT
from wan_engine.testing import split_vace, tiny_dit
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


# --- The Wan DiT in the official layout -------------------------------------------------------

BLOCK_KEYS = [
    "modulation", "norm3.weight", "norm3.bias", "ffn.0.weight", "ffn.0.bias", "ffn.2.weight", "ffn.2.bias",
    *(f"{attn}.{p}.{t}" for attn in ("self_attn", "cross_attn") for p in "qkvo" for t in ("weight", "bias")),
    *(f"{attn}.norm_{p}.weight" for attn in ("self_attn", "cross_attn") for p in "qk"),
]  # fmt: skip
TOP_KEYS = [
    "patch_embedding.weight", "patch_embedding.bias", "head.head.weight", "head.head.bias", "head.modulation",
    *(f"{m}.{i}.{t}" for m, i in (("text_embedding", 0), ("text_embedding", 2), ("time_embedding", 0),
                                  ("time_embedding", 2), ("time_projection", 1)) for t in ("weight", "bias")),
]  # fmt: skip


def tiny_vace() -> WanDiT:
    return tiny_dit(vace=True)


def seeded_tiny_vace() -> WanDiT:
    torch.manual_seed(0)
    return tiny_vace().eval()


def vace_inputs(t: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """x [1, 16, 2, 4, 4], timestep [1], a 7-token prompt and a VACE control [1, 96, 2, 4, 4]."""
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(1, TINY_DIT["in_dim"], 2, 4, 4, generator=generator)
    context = torch.randn(1, 7, TINY_DIT["text_dim"], generator=generator)
    control = torch.randn(1, VACE_IN_DIM, 2, 4, 4, generator=generator)
    return x, torch.tensor([t]), context, control


def split_base_and_module(model: WanDiT, folder: Path) -> tuple[Path, Path]:
    """The files users have: a base DiT, and a VACE module file holding only the vace_* tensors."""
    base, module = split_vace(model.state_dict())
    return save_state_dict(base, folder / "t2v.safetensors"), save_state_dict(module, folder / "vace_module.safetensors")


def test_dit_state_dict_uses_the_official_names():
    blocks = [f"blocks.{n}.{k}" for n in range(TINY_DIT["num_layers"]) for k in BLOCK_KEYS]
    vace = [f"vace_blocks.{n}.{k}" for n in range(len(TINY_VACE_LAYERS)) for k in BLOCK_KEYS]
    vace += [f"vace_blocks.{n}.after_proj.{t}" for n in range(len(TINY_VACE_LAYERS)) for t in ("weight", "bias")]
    vace += ["vace_blocks.0.before_proj.weight", "vace_blocks.0.before_proj.bias"]
    vace += ["vace_patch_embedding.weight", "vace_patch_embedding.bias"]
    assert sorted(tiny_vace().state_dict()) == sorted(TOP_KEYS + blocks + vace)


def test_base_file_and_vace_module_file_load_together(tmp_path: Path):
    original = seeded_tiny_vace()
    files = split_base_and_module(original, tmp_path)
    loaded = load_model(tiny_vace, files, dtype=torch.float32)
    inputs = vace_inputs(500.0)
    with torch.inference_mode():
        assert torch.equal(loaded(*inputs), original(*inputs))


def test_vace_model_without_its_module_file_names_the_missing_tensors(tmp_path: Path):
    base, _ = split_base_and_module(seeded_tiny_vace(), tmp_path)
    with pytest.raises(LoadError, match=r"missing: .*vace_patch_embedding\.weight"):
        load_model(tiny_vace, [base], dtype=torch.float32)


def test_bf16_load_follows_the_precision_policy(tmp_path: Path):
    files = split_base_and_module(seeded_tiny_vace(), tmp_path)
    model = load_model(tiny_vace, files, dtype=torch.bfloat16)
    dtypes = {name: p.dtype for name, p in model.named_parameters()}
    assert dtypes["blocks.0.self_attn.q.weight"] == torch.bfloat16
    assert dtypes["vace_blocks.1.ffn.0.weight"] == torch.bfloat16
    assert dtypes["patch_embedding.weight"] == torch.bfloat16
    for fp32 in ("blocks.0.modulation", "time_embedding.0.weight", "time_projection.1.weight", "head.head.weight",
                 "blocks.3.norm3.weight"):  # fmt: skip
        assert dtypes[fp32] == torch.float32, fp32


def test_bf16_forward_stays_close_to_fp32(tmp_path: Path):
    original = seeded_tiny_vace()
    files = split_base_and_module(original, tmp_path)
    model = load_model(tiny_vace, files, dtype=torch.bfloat16)
    inputs = vace_inputs(700.0)
    with torch.inference_mode():
        expected = original(*inputs)
        out = model(*inputs)
    assert out.dtype == torch.float32
    assert (out - expected).abs().max() <= 0.01 * expected.abs().max()  # measured ~0.003-0.004
