"""fp8 mode (wan_engine.fp8) against the exact mode on the same random weights: per-layer error,
whole-segment PSNR, weight bytes at the real 14B shapes, fp8_scaled checkpoints, LoRAs on an fp8 base,
per-request precision. On the CPU the fp8 matmul is the fp32 emulation of the same quantised operands."""
from __future__ import annotations

import copy
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from wan_engine import testing
from wan_engine.engine import Engine
from wan_engine.errors import InvalidRequest, LoadError
from wan_engine.fp8 import (
    FP8,
    FP8_MAX,
    Fp8Linear,
    dequantize_scaled,
    emulated_matmul,
    fp8_layer_names,
    load_fp8_dit,
    meta_fp8_dit,
    quantize_dit,
    quantize_rows,
    scaled_matmul,
)
from wan_engine.lora import applied_loras, load_lora, parse_lora_state_dict
from wan_engine.memory import tensor_bytes
from wan_engine.nn.dit import VACE_14B_LAYERS, VACE_IN_DIM, WAN21_14B, WanDiT
from wan_engine.quality import psnr_db, relative_l2
from wan_engine.request import GenerationRequest
from wan_engine.weights import apply_dtype_policy, load_model, save_state_dict

GIB = 2**30
# e4m3 keeps 3 mantissa bits: rounding one operand costs ~2.65% relative RMS on values spread over
# binades, both operands ~3.75% on uncorrelated data, whatever the scaling. Weights alone meet the
# issue's 3% bar; a layer's output cannot on random data (see docs/engine.md, "GPU").
WEIGHT_BAR = 0.03
OUTPUT_BAR = 0.045
SEGMENT_PSNR_BAR_DB = 35.0


def tiny_vace_dit(seed: int = 0) -> WanDiT:
    model = testing.tiny_dit(vace=True)
    model.load_state_dict(testing.random_state(model, seed))
    return model.eval().requires_grad_(False)


def dit_inputs(seed: int) -> tuple:
    generator = torch.Generator().manual_seed(seed)
    return (
        torch.randn(1, 16, 3, 16, 16, generator=generator),
        torch.tensor([700.0]),
        torch.randn(1, 10, 32, generator=generator),
        torch.randn(1, VACE_IN_DIM, 3, 16, 16, generator=generator),
    )


def test_quantize_rows_scales_each_row_to_the_e4m3_range() -> None:
    x = torch.randn(7, 40, generator=torch.Generator().manual_seed(3)) * torch.logspace(-3, 3, 7)[:, None]
    x[2] = 0.0
    quantized, scale = quantize_rows(x)
    assert quantized.dtype == FP8 and scale.shape == (7, 1)
    assert torch.equal(quantized.float().abs().amax(dim=1)[[0, 1, 3, 4, 5, 6]], torch.full((6,), FP8_MAX))
    assert torch.equal(quantized[2].float(), torch.zeros(40))  # an all-zero row stays zero, no NaN
    assert relative_l2(quantized.float() * scale, x) < WEIGHT_BAR


def test_the_cuda_scaled_mm_call_computes_the_emulated_product() -> None:
    """torch._scaled_mm also runs on the CPU: the exact call made on CUDA (layouts, row-wise scale
    shapes, bias, bf16 out) gives the emulation's numbers."""
    generator = torch.Generator().manual_seed(8)
    layer = Fp8Linear.from_linear(torch.nn.Linear(64, 48).to(torch.bfloat16))
    x8, x_scale = quantize_rows(torch.randn(20, 64, generator=generator).to(torch.bfloat16))
    operands = (x8, x_scale, layer.weight, layer.scale_weight, layer.bias, torch.bfloat16)
    native, emulated = scaled_matmul(*operands), emulated_matmul(*operands)
    assert native.dtype == emulated.dtype == torch.bfloat16
    torch.testing.assert_close(native, emulated, rtol=2**-7, atol=1e-3)


@pytest.mark.parametrize("seed", [0, 1])
def test_each_fp8_linear_of_the_dit_is_close_to_the_exact_layer_on_real_activations(seed: int) -> None:
    exact = tiny_vace_dit(seed)
    fast = quantize_dit(copy.deepcopy(exact))
    names = fp8_layer_names(fast)
    assert len(names) == 8 * (len(exact.blocks) + len(exact.vace_blocks))
    assert not isinstance(fast.blocks[0].cross_attn.k, Fp8Linear) and not isinstance(fast.head.head, Fp8Linear)
    errors: dict[str, float] = {}

    def measure(name: str):
        def hook(module: Fp8Linear, args: tuple, output: torch.Tensor) -> None:
            reference = exact.get_submodule(name)
            errors[name] = relative_l2(output, reference(args[0]))
            # the CPU emulation is exactly the quantised product it stands for
            x8, x_scale = quantize_rows(args[0].reshape(-1, module.in_features))
            emulated = (x8.float() * x_scale) @ (module.weight.float() * module.scale_weight[:, None]).t() + module.bias
            assert torch.equal(output.reshape(emulated.shape), emulated)
            assert relative_l2(module.dequantized_weight(), reference.weight) < WEIGHT_BAR

        return hook

    for name in names:
        fast.get_submodule(name).register_forward_hook(measure(name))
    with torch.no_grad():
        whole = relative_l2(fast(*dit_inputs(seed)), exact(*dit_inputs(seed)))
    assert set(errors) == set(names)
    assert max(errors.values()) < OUTPUT_BAR
    assert whole < max(errors.values())  # independent rounding errors average out over the network


def test_fp8_weights_of_the_14b_vace_expert_fit_20_gib_about_half_of_bf16() -> None:
    def build() -> WanDiT:
        return WanDiT(**WAN21_14B, vace_layers=VACE_14B_LAYERS, vace_in_dim=VACE_IN_DIM)

    fp8_bytes = tensor_bytes([meta_fp8_dit(build)])
    with torch.device("meta"):
        bf16_bytes = tensor_bytes([apply_dtype_policy(build(), torch.bfloat16)])
    assert 32 * GIB < bf16_bytes < 33 * GIB  # 35.0 GB = 32.6 GiB: the "~34 GB"
    assert fp8_bytes <= 20 * GIB  # 20.7 GB = 19.3 GiB
    assert 0.55 < fp8_bytes / bf16_bytes < 0.62  # cross-attention k/v, embeddings and fp32 tables stay wide


def comfy_fp8_scaled(state: dict[str, torch.Tensor], fp8_layers: list[str]) -> dict[str, torch.Tensor]:
    """A state dict as ComfyUI writes `fp8_scaled` checkpoints: block linears in float8_e4m3fn with
    one fp32 `scale_weight` per tensor, a `scaled_fp8` marker, everything else as it was."""
    out = dict(state)
    for layer in fp8_layers:
        weight = state[f"{layer}.weight"]
        scale = weight.abs().max() / FP8_MAX
        out[f"{layer}.weight"] = (weight / scale).to(FP8)
        out[f"{layer}.scale_weight"] = scale.reshape(())
    out["scaled_fp8"] = torch.zeros(2, dtype=FP8)
    return out


def test_an_fp8_scaled_checkpoint_loads_bit_for_bit_and_a_bf16_one_is_quantised(tmp_path: Path) -> None:
    exact = tiny_vace_dit(4)
    state = exact.state_dict()
    layers = fp8_layer_names(exact)
    comfy = comfy_fp8_scaled(state, layers)
    path = save_state_dict(comfy, tmp_path / "fp8_scaled.safetensors")
    written = load_file(str(path))

    def build() -> WanDiT:
        return testing.tiny_dit(vace=True)

    model = load_fp8_dit(build, [path], compute_dtype=torch.float32)
    for layer in layers:
        module = model.get_submodule(layer)
        assert torch.equal(module.weight.view(torch.uint8), written[f"{layer}.weight"].view(torch.uint8))
        assert torch.equal(module.scale_weight, written[f"{layer}.scale_weight"].expand(module.out_features))
        # the bf16-mode rule expands the same file to the same weight this layer multiplies by
        expanded = dequantize_scaled(written[f"{layer}.weight"], written[f"{layer}.scale_weight"], torch.float32)
        assert torch.equal(module.dequantized_weight(), expanded)
    assert torch.equal(model.blocks[1].cross_attn.k.weight, state["blocks.1.cross_attn.k.weight"])
    with torch.no_grad():
        assert relative_l2(model(*dit_inputs(4)), exact(*dit_inputs(4))) < OUTPUT_BAR

    plain = save_state_dict(state, tmp_path / "plain.safetensors")
    loaded = load_fp8_dit(build, [plain], compute_dtype=torch.float32)
    quantized = quantize_dit(load_model(build, [plain], dtype=torch.float32))
    assert all(torch.equal(a.float(), b.float()) for a, b in zip(loaded.state_dict().values(), quantized.state_dict().values()))

    del comfy["blocks.0.ffn.0.weight"]
    broken = save_state_dict(comfy, tmp_path / "broken.safetensors")
    with pytest.raises(LoadError, match=r"missing blocks\.0\.ffn\.0\.weight"):
        load_fp8_dit(build, [broken], compute_dtype=torch.float32)


def test_a_lora_on_an_fp8_base_adds_its_exact_side_branch_and_leaves_no_trace(tiny_models_dir: Path) -> None:
    model = quantize_dit(tiny_vace_dit(5))
    lora = load_lora(tiny_models_dir / "loras" / "tiny_kohya.safetensors")
    inputs = dit_inputs(5)
    layer = model.blocks[0].self_attn.q
    x = torch.randn(3, layer.in_features, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        before, layer_before = model(*inputs), layer(x)
        with applied_loras(model, [lora], [[0.7]]):
            with_lora, layer_with = model(*inputs), layer(x)
        after = model(*inputs)
    update = lora.low_rank["blocks_0_self_attn_q"]
    branch = 0.7 * update.scale * (x @ update.down.t()) @ update.up.t()
    torch.testing.assert_close(layer_with, layer_before + branch, rtol=1e-5, atol=1e-6)
    assert relative_l2(with_lora, before) > 0.01
    assert torch.equal(after, before)

    # full deltas (.diff / .diff_b) on an fp8 layer: the weight delta runs beside the fp8 product
    ffn = model.blocks[1].ffn[0]
    generator = torch.Generator().manual_seed(7)
    delta, bias_delta = torch.randn(ffn.weight.shape, generator=generator) * 0.01, torch.randn(ffn.out_features, generator=generator)
    full = parse_lora_state_dict({"diffusion_model.blocks.1.ffn.0.diff": delta, "diffusion_model.blocks.1.ffn.0.diff_b": bias_delta}, "full")
    h = torch.randn(4, ffn.in_features, generator=generator)
    with torch.no_grad():
        plain = ffn(h)
        with applied_loras(model, [full], [[0.5]]):
            shifted = ffn(h)
        restored = ffn(h)
    torch.testing.assert_close(shifted, plain + 0.5 * (h @ delta.t() + bias_delta), rtol=1e-5, atol=1e-6)
    assert torch.equal(restored, plain) and ffn.weight.dtype == FP8


def segment(engine: Engine, precision: str | None, seed: int) -> np.ndarray:
    request = GenerationRequest(
        model="tiny_vace_2_2", prompt="a lighthouse in a storm", width=64, height=48, video_length=9, seed=seed,
        num_inference_steps=4, precision=precision,
    )  # fmt: skip
    result = engine.generate(request)
    assert result.resolved["precision"] == (precision or engine.precision)
    return result.frames


def test_an_fp8_segment_of_the_tiny_two_expert_model_is_within_35_db_of_the_exact_one(tiny_models_dir: Path) -> None:
    engine = Engine(tiny_models_dir, device="cpu", dtype=torch.float32)
    assert engine.precision == "bf16"
    exact = segment(engine, None, 3)
    fast = segment(engine, "fp8", 3)  # a request's precision reloads the model in that mode
    assert isinstance(engine._loaded.networks.experts.networks["high"].blocks[0].ffn[0], Fp8Linear)
    assert SEGMENT_PSNR_BAR_DB <= psnr_db(fast, exact) < float("inf")
    assert np.array_equal(segment(engine, "bf16", 3), exact)  # back to the exact mode: the exact frames


def test_an_unknown_precision_is_refused_naming_the_field(tiny_models_dir: Path) -> None:
    engine = Engine(tiny_models_dir, device="cpu", dtype=torch.float32)
    with pytest.raises(InvalidRequest, match="precision") as error:
        engine.check(GenerationRequest(model="tiny_t2v", prompt="x", width=32, height=32, video_length=5, precision="fp4"))
    assert error.value.field == "precision"
    with pytest.raises(ValueError, match="precision"):
        Engine(tiny_models_dir, device="cpu", precision="int8")


def test_the_engine_in_fp8_mode_runs_a_model_whose_base_file_is_fp8_scaled(tiny_models_dir: Path, tmp_path: Path) -> None:
    """The fp8 file's weights are taken bit for bit; the frames are within the bar of the exact mode
    run on the same file expanded (dequantize_scaled, what bf16 mode does with such a file)."""
    with torch.device("meta"):
        layers = fp8_layer_names(testing.tiny_dit())
    comfy = comfy_fp8_scaled(load_file(str(tiny_models_dir / "tiny_t2v.safetensors")), layers)
    expanded = {key: dequantize_scaled(comfy[key], comfy[f"{key[: -len('.weight')]}.scale_weight"], torch.float32)
                for key in (f"{layer}.weight" for layer in layers)}  # fmt: skip
    folders = {}
    for name, base in (("fp8_scaled", comfy), ("expanded", {**comfy, **expanded})):
        folders[name] = tmp_path / name
        shutil.copytree(tiny_models_dir, folders[name])
        if name == "expanded":
            base = {k: v for k, v in base.items() if not k.endswith("scale_weight") and k != "scaled_fp8"}
        save_state_dict(base, folders[name] / "tiny_t2v.safetensors")  # the VACE module file stays fp32
    # guidance 1, as in a Wan 2.2 segment: classifier-free guidance at 7.5 scales the fp8 error up
    # (31.7-34.9 dB on this tiny model, docs/engine.md "GPU")
    request = GenerationRequest(model="tiny_vace", prompt="a boat", width=32, height=32, video_length=5,
                                num_inference_steps=2, guidance_scale=1.0, precision="fp8")  # fmt: skip
    engine = Engine(folders["fp8_scaled"], device="cpu", dtype=torch.float32)
    fast = engine.generate(request).frames
    network = engine._loaded.networks.experts.networks["main"]
    assert torch.equal(network.blocks[2].ffn[2].weight.view(torch.uint8), comfy["blocks.2.ffn.2.weight"].view(torch.uint8))
    exact = Engine(folders["expanded"], device="cpu", dtype=torch.float32).generate(replace(request, precision="bf16")).frames
    assert SEGMENT_PSNR_BAR_DB <= psnr_db(fast, exact) < float("inf")


def test_bf16_mode_reads_a_per_row_scaled_fp8_weight_row_by_row(tmp_path: Path) -> None:
    """open_checkpoints folds a scale_weight with one scale per output row onto the rows (as fp8 mode
    takes it), not along the columns, even for a square weight where both would broadcast."""
    from safetensors.torch import save_file

    from wan_engine.tensor_files import open_checkpoints

    weight = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).to(torch.float8_e4m3fn)
    scale = torch.tensor([2.0, 10.0])
    save_file({"layer.weight": weight, "layer.scale_weight": scale}, str(tmp_path / "w.safetensors"))
    with open_checkpoints([tmp_path / "w.safetensors"]) as tensors:
        read = {t.key: t.read() for t in tensors}
    assert list(read) == ["layer.weight"]
    assert torch.equal(read["layer.weight"], torch.tensor([[2.0, 4.0], [30.0, 40.0]]))
