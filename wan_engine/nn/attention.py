"""The one place where attention is computed, so the kernel choice lives in one seam.

Wan never needs a mask: self-attention runs over all video tokens of a batch item (every item of a
batch has the same latent size), and cross-attention runs over the text padded to text_len, whose
padding tokens the model was trained to attend to.

On CUDA the backends are tried in the order of CUDA_BACKENDS: cuDNN attention first (on Hopper it
measured about 1.6x faster than the flash backend at Wan's shapes: head dim 128, ~32k tokens), then
flash, then memory-efficient, then the math fallback for shapes or dtypes none of them takes.
Elsewhere (CPU, tests) PyTorch's own choice is used.

Backends (`BACKENDS`, chosen per attention layer by `backend_for`): "sdpa" is the exact one above;
"sage" is SageAttention's 8-bit kernel (`sageattention.sageattn`: int8 Q K^T with per-block scales,
half-precision P V, written in Triton), used by fp8 mode on CUDA when the package is importable.
No pip-installable Hopper fp8 attention kernel (SageAttention 2/3, FlashAttention-3) exists for
our torch; where SageAttention is missing, or off CUDA, fp8 mode attends through "sdpa" (cuDNN).
"""
from __future__ import annotations

import importlib.util

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

CUDA_BACKENDS = [
    SDPBackend.CUDNN_ATTENTION,
    SDPBackend.FLASH_ATTENTION,
    SDPBackend.EFFICIENT_ATTENTION,
    SDPBackend.MATH,
]


BACKENDS = ("sdpa", "sage")


def backend_for(precision: str, device: torch.device) -> str:
    """The attention backend a precision mode uses on `device` (see the module docstring)."""
    if precision == "fp8" and device.type == "cuda" and importlib.util.find_spec("sageattention") is not None:
        return "sage"
    return "sdpa"


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str = "sdpa") -> torch.Tensor:
    """Unmasked scaled dot-product attention.

    q: [B, Lq, heads, head_dim], k and v: [B, Lk, heads, head_dim], all of one dtype.
    Returns [B, Lq, heads, head_dim] in that dtype. The [B, L, heads, head_dim] layout is the one
    the projections produce, so no copy is made before the kernel (it only needs a unit stride on
    head_dim), and the fused kernels write their output back in this layout.
    """
    if backend == "sage" and q.device.type == "cuda":
        return _sage_attention(q, k, v)
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    if q.device.type == "cuda":
        with sdpa_kernel(CUDA_BACKENDS, set_priority=True):
            out = F.scaled_dot_product_attention(q, k, v)
    else:
        out = F.scaled_dot_product_attention(q, k, v)
    return out.transpose(1, 2)


@torch.compiler.disable  # its Triton launcher stays outside compiled blocks (a graph break, not a trace)
def _sage_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    from sageattention import sageattn

    return sageattn(q, k, v, tensor_layout="NHD")
