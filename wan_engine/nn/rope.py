"""3D rotary position embedding of the Wan DiT, with real cos/sin tables.

Each head vector of head_dim channels is read as head_dim/2 adjacent pairs (x[2i], x[2i+1]). The
pairs are split between the three axes as the reference does: the height and width axes get
head_dim//6 pairs each, the frame axis the rest (22/21/21 of 64 pairs at head_dim 128). On each axis
pair j of an axis with n pairs turns by angle position * theta**(-j/n).
"""
from __future__ import annotations

import torch

THETA = 10000.0


def axis_pairs(head_dim: int) -> tuple[int, int, int]:
    """Number of channel pairs given to the (frame, height, width) axes."""
    if head_dim % 2:
        raise ValueError(f"RoPE needs an even head dim, got {head_dim}")
    pairs = head_dim // 2
    return pairs - 2 * (pairs // 3), pairs // 3, pairs // 3


def rope_tables(
    grid: tuple[int, int, int], head_dim: int, device: torch.device | str
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of every token's angles, each [F*H*W, head_dim // 2] float32.

    grid: the (F, H, W) token grid after patchifying; tokens are ordered frame-major as the patch
    embedding flattens them. Angles are formed per axis in float64 (positions reach ~1000 rad, where
    float32 loses ~1e-4) on the host, and only the small per-axis tables travel to `device`.
    """
    cos, sin = [], []
    for length, pairs in zip(grid, axis_pairs(head_dim)):
        exponents = torch.arange(pairs, dtype=torch.float64) / pairs
        angles = torch.outer(torch.arange(length, dtype=torch.float64), THETA**-exponents)
        cos.append(angles.cos().to(device, torch.float32))
        sin.append(angles.sin().to(device, torch.float32))
    return _over_grid(cos, grid), _over_grid(sin, grid)


def _over_grid(per_axis: list[torch.Tensor], grid: tuple[int, int, int]) -> torch.Tensor:
    """Per-axis tables [F, n_f], [H, n_h], [W, n_w] -> one row per token [F*H*W, n_f + n_h + n_w]."""
    f, h, w = grid
    return torch.cat(
        [
            per_axis[0][:, None, None, :].expand(f, h, w, -1),
            per_axis[1][None, :, None, :].expand(f, h, w, -1),
            per_axis[2][None, None, :, :].expand(f, h, w, -1),
        ],
        dim=-1,
    ).reshape(f * h * w, -1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each channel pair of x by its token's angle.

    x: [B, L, heads, head_dim]; cos, sin: [L, head_dim // 2] float32 from rope_tables.
    The rotation is computed in float32 and written back in x's dtype.
    """
    real, imag = x.unflatten(-1, (-1, 2)).unbind(-1)  # each [B, L, heads, head_dim // 2]
    cos, sin = cos[:, None, :], sin[:, None, :]  # broadcast over heads
    out = torch.empty_like(x).unflatten(-1, (-1, 2))
    out[..., 0] = torch.addcmul(real * cos, imag, sin, value=-1)
    out[..., 1] = torch.addcmul(imag * cos, real, sin)
    return out.flatten(-2)
