"""fp8 mode: the DiT's block linears with float8 (e4m3) weights and float8 matmuls.

What is quantised (`FP8_LINEARS`, per block, the VACE blocks included): self-attention q/k/v/o,
cross-attention q and o, and the feed-forward's two linears; together ~99% of a forward's linear
FLOPs. Everything else keeps the engine's compute dtype (bf16): the patch, time and text
embeddings, the modulation tables, the head, VACE's before/after projections, and the
cross-attention key/value over the text (computed from 512 text tokens: cheap, and the text is
what a prompt's wording rides on).

Numerics of one fp8 linear, y = x W^T + b:
- weights: per output channel, s_w[o] = max|W[o, :]| / 448 and W8 = e4m3(W / s_w) (e4m3's largest
  finite value is 448);
- activations: per token, dynamically at each call, s_x[t] = max|x[t, :]| / 448, x8 = e4m3(x / s_x);
- y[t, o] = s_x[t] * s_w[o] * sum_k x8[t, k] W8[o, k] + b[o], accumulated in fp32, written in bf16.
On CUDA the product is `torch._scaled_mm` with row-wise scales (cuBLASLt's fp8 GEMM, compute
capability 8.9 and later: Ada, Hopper); elsewhere (CPU tests, older GPUs) the same quantised operands
are dequantised to fp32 and multiplied, which is the same function up to summation order (a test
runs the CUDA call itself, which torch also implements on the CPU, against it).

Checkpoints: ComfyUI's `fp8_scaled` files store a block linear as `<layer>.weight` in float8_e4m3fn
plus `<layer>.scale_weight` (one fp32 scale per tensor) and mark themselves with a `scaled_fp8`
key. `load_fp8_dit` takes their fp8 weights as they are (the per-tensor scale becomes every row's
scale: no requantisation, bit for bit) and quantises bf16/fp32 checkpoints on the target device,
layer by layer. `dequantize_scaled` is the same scale rule for bf16 mode, where such a file's
tensors are expanded to the compute dtype.

LoRAs: Fp8Linear is an nn.Linear, so wan_engine.lora's forward hooks add their low-rank branch in
the compute dtype on top of the fp8 product, and remove exactly as on bf16 layers.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from wan_engine.errors import LoadError
from wan_engine.request import PRECISIONS
from wan_engine.tensor_files import COMFY_EXTRAS, SCALE_SUFFIX, dequantize_scaled, open_checkpoints
from wan_engine.weights import KeyMap, apply_dtype_policy

FP8 = torch.float8_e4m3fn
FP8_MAX = torch.finfo(FP8).max  # 448
# Where a block's fp8 linears sit (relative names); cross_attn.k / .v stay in the compute dtype.
FP8_LINEARS = ("self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o", "cross_attn.q", "cross_attn.o", "ffn.0", "ffn.2")
_BLOCK_LINEAR = re.compile(r"^(?:vace_)?blocks\.\d+\.(?:" + "|".join(re.escape(n) for n in FP8_LINEARS) + r")$")
_SCALE_FLOOR = 1e-12  # an all-zero row or token gets this scale instead of 0 (no division by zero)


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Row-wise e4m3 quantisation of a 2D tensor: (x8 [M, K] float8_e4m3fn, scales [M, 1] fp32)
    with x ~= x8 * scales. Used for weights (rows = output channels) and activations (rows = tokens)."""
    x = x.float()
    scale = x.abs().amax(dim=-1, keepdim=True).clamp_min(_SCALE_FLOOR) / FP8_MAX
    return (x / scale).clamp_(-FP8_MAX, FP8_MAX).to(FP8), scale


class Fp8Linear(nn.Linear):
    """nn.Linear with an e4m3 weight and per-output-channel scales (`scale_weight` [out] fp32);
    the bias stays in the compute dtype, which is also the output dtype."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, compute_dtype: torch.dtype,
                 device: torch.device | str | None = None):  # fmt: skip
        nn.Module.__init__(self)
        self.in_features, self.out_features = in_features, out_features
        self.compute_dtype = compute_dtype
        self.weight = nn.Parameter(torch.empty(out_features, in_features, dtype=FP8, device=device), requires_grad=False)
        self.scale_weight = nn.Parameter(torch.ones(out_features, device=device), requires_grad=False)
        bias_tensor = torch.zeros(out_features, dtype=compute_dtype, device=device) if bias else None
        self.bias = nn.Parameter(bias_tensor, requires_grad=False) if bias else None

    @classmethod
    def from_linear(cls, linear: nn.Linear, device: torch.device | str | None = None) -> Fp8Linear:
        """Quantise `linear` (its weight moved to `device` first, so a GPU does the work)."""
        weight = linear.weight.detach().to(device)
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None,
                    compute_dtype=linear.weight.dtype, device="meta")  # fmt: skip
        quantized, scale = quantize_rows(weight)
        layer.weight = nn.Parameter(quantized, requires_grad=False)
        layer.scale_weight = nn.Parameter(scale.flatten(), requires_grad=False)
        if linear.bias is not None:
            layer.bias = nn.Parameter(linear.bias.detach().to(weight.device), requires_grad=False)
        return layer

    def dequantized_weight(self) -> torch.Tensor:
        """The weight this layer multiplies by, in fp32 (for tests and error measurements)."""
        return dequantize_scaled(self.weight, self.scale_weight, torch.float32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., in] (compute dtype) -> [..., out] in the compute dtype."""
        x8, x_scale = quantize_rows(x.reshape(-1, self.in_features))
        native = native_fp8(x.device) and self.in_features % 16 == 0 and self.out_features % 16 == 0
        matmul = scaled_matmul if native else emulated_matmul
        out = matmul(x8, x_scale, self.weight, self.scale_weight, self.bias, self.compute_dtype)
        return out.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, fp8 e4m3 weight, row scales"


_NATIVE_FP8: dict[torch.device, bool] = {}


@torch.compiler.assume_constant_result  # a compiled block reads it once, as a constant
def native_fp8(device: torch.device) -> bool:
    """Whether `device` multiplies fp8 natively (CUDA compute capability >= 8.9: Ada, Hopper and
    later); elsewhere fp8 mode runs through the fp32 emulation."""
    if device not in _NATIVE_FP8:
        _NATIVE_FP8[device] = device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 9)
    return _NATIVE_FP8[device]


def scaled_matmul(x8: torch.Tensor, x_scale: torch.Tensor, w8: torch.Tensor, w_scale: torch.Tensor,
                  bias: torch.Tensor | None, out_dtype: torch.dtype) -> torch.Tensor:  # fmt: skip
    """(x8 * x_scale) @ (w8 * w_scale[:, None])^T + bias through torch._scaled_mm with row-wise scales
    (cuBLASLt's fp8 GEMM; it wants x8 row-major, the weight column-major, widths multiples of 16)."""
    return torch._scaled_mm(x8, w8.t(), scale_a=x_scale, scale_b=w_scale.view(1, -1), bias=bias, out_dtype=out_dtype)


def emulated_matmul(x8: torch.Tensor, x_scale: torch.Tensor, w8: torch.Tensor, w_scale: torch.Tensor,
                    bias: torch.Tensor | None, out_dtype: torch.dtype) -> torch.Tensor:  # fmt: skip
    """The same product with the quantised operands dequantised to fp32 (any device, any out dtype)."""
    product = (x8.float() * x_scale) @ dequantize_scaled(w8, w_scale, torch.float32).t()
    return (product if bias is None else product + bias.float()).to(out_dtype)


def fp8_layer_names(model: nn.Module) -> list[str]:
    """The names of the nn.Linear layers of `model` that fp8 mode quantises."""
    return [name for name, module in model.named_modules() if _BLOCK_LINEAR.match(name) and isinstance(module, nn.Linear)]


def quantize_dit(model: nn.Module, device: torch.device | str | None = None) -> nn.Module:
    """Replace the block linears (FP8_LINEARS) of a loaded DiT with Fp8Linear, in place, one layer
    at a time on `device` (default: where each layer is), so peak memory is one bf16 layer."""
    for name in fp8_layer_names(model):
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        linear = getattr(parent, child)
        if not isinstance(linear, Fp8Linear):
            parent.register_module(child, Fp8Linear.from_linear(linear, device or linear.weight.device))
    return model


def meta_fp8_dit(build: Callable[[], nn.Module], compute_dtype: torch.dtype = torch.bfloat16) -> nn.Module:
    """The network as fp8 mode holds it, on the meta device: its dtype policy applied and empty
    Fp8Linear layers (loading starts from it; byte counts and memory plans read it)."""
    with torch.device("meta"):
        model = apply_dtype_policy(build(), compute_dtype)
        for name in fp8_layer_names(model):
            parent_name, _, child = name.rpartition(".")
            linear = model.get_submodule(name)
            parent = model.get_submodule(parent_name)
            parent.register_module(child, Fp8Linear(linear.in_features, linear.out_features, linear.bias is not None,
                                                    compute_dtype=compute_dtype, device="meta"))  # fmt: skip
    return model


def load_fp8_dit(
    build: Callable[[], nn.Module],
    files: Sequence[str | Path],
    *,
    compute_dtype: torch.dtype,
    device: torch.device | str = "cpu",
    quantize_on: torch.device | str | None = None,
    key_map: KeyMap | None = None,
) -> nn.Module:
    """Load a DiT in fp8 mode from bf16/fp32 or ComfyUI fp8_scaled safetensors files.

    Block linears: an fp8 file weight is kept bit for bit with its scale_weight as every row's scale;
    any other weight is quantised (on `quantize_on`, default `device`). Other tensors take the
    network's dtype policy (fp8 ones are dequantised first). Every network tensor must come exactly
    once with its shape, as in wan_engine.weights.load_model; LoadError names what does not fit.
    """
    model = meta_fp8_dit(build, compute_dtype)
    expected = model.state_dict(keep_vars=True)
    fp8_weights = {f"{name}.weight" for name in fp8_layer_names(model)}
    device = torch.device(device)
    quantize_on = torch.device(quantize_on) if quantize_on is not None else device

    raw: dict[str, torch.Tensor] = {}
    scales: dict[str, torch.Tensor] = {}
    with open_checkpoints(files, fold_fp8_scales=False) as tensors:  # safetensors, shard indexes, .pth
        for stored in tensors:
            name = key_map(stored.key) if key_map is not None else stored.key
            if name is None or COMFY_EXTRAS.search(name):
                continue
            if name.endswith(SCALE_SUFFIX):
                scales[name[: -len(SCALE_SUFFIX)] + ".weight"] = stored.read()
                continue
            if name in raw:
                raise LoadError(f"{name} appears twice (again in {stored.file.name})")
            raw[name] = stored.read()

    state: dict[str, torch.Tensor] = {}
    problems: list[str] = []
    for name, tensor in raw.items():
        if name not in expected:
            problems.append(f"unexpected {name}")
            continue
        want = expected[name]
        if name in fp8_weights:
            if tuple(tensor.shape) != tuple(want.shape):
                problems.append(f"wrong shape {name}: file {list(tensor.shape)}, network {list(want.shape)}")
                continue
            state[name], state[name[: -len(".weight")] + ".scale_weight"] = _fp8_weight(tensor, scales.get(name), quantize_on)
            continue
        if tensor.dtype == FP8:
            tensor = dequantize_scaled(tensor, scales.get(name), want.dtype)
        if tuple(tensor.shape) != tuple(want.shape):
            problems.append(f"wrong shape {name}: file {list(tensor.shape)}, network {list(want.shape)}")
            continue
        state[name] = tensor.to(device=device, dtype=want.dtype)
    problems += [f"missing {name}" for name in expected if name not in state]
    if problems:
        shown = "; ".join(problems[:8]) + (f" (+{len(problems) - 8} more)" if len(problems) > 8 else "")
        names = ", ".join(Path(p).name for p in files)
        raise LoadError(f"checkpoint {names} does not fit {type(model).__name__} in fp8 mode: {shown}")
    state = {name: tensor.to(device) for name, tensor in state.items()}
    model.load_state_dict(state, strict=True, assign=True)
    return model.requires_grad_(False).eval()


def _fp8_weight(tensor: torch.Tensor, scale: torch.Tensor | None, on: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(e4m3 weight, per-row fp32 scales) of one block linear from its file tensor."""
    if tensor.dtype == FP8:
        rows = tensor.shape[0]
        scale = torch.ones(()) if scale is None else scale.float()
        return tensor, (scale.expand(rows) if scale.numel() == 1 else scale.reshape(rows)).clone()
    if scale is not None:
        raise LoadError("a scale_weight belongs to an fp8 weight; this weight is " + str(tensor.dtype))
    quantized, row_scale = quantize_rows(tensor.to(on))
    return quantized, row_scale.flatten()
