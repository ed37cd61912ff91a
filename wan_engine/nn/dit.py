"""The Wan video diffusion transformer (Wan 2.1 / 2.2 text-to-video, Wan 2.1 and Wan 2.2 A14B
image-to-video) with the VACE control branch.

The image-to-video networks are this same network with a wider input (I2V_IN_DIM): the noisy
latents concatenated with the conditioning latents (wan_engine/i2v.py). Wan 2.1 I2V also reads the
CLIP image tokens (wan_engine/nn/clip.py, `clip_dim`): `img_emb` projects them to the model width,
and every block's cross-attention attends to them with its own key and value projections (`k_img`,
`v_img`, `norm_k_img`) beside the text, the two results summed before the output projection. Wan 2.1
FLF2V reads the tokens of its first and last frame one after the other, with a learned position
embedding added before the projection (`img_emb.emb_pos`, `clip_positions` long). The Wan 2.2 A14B
I2V experts have no image branch.

Parameter names are those of the official checkpoints (`blocks.N.self_attn.q.weight`, ...), so the
files users have load without conversion; `diffusers_to_official` renames the diffusers layout.

Precision policy (one place, used by wan_engine.weights when loading in bf16/fp16):
- the time embedding, the modulation tables, the affine cross-attention norm and the output head
  keep fp32 weights (`WanDiT.keep_in_fp32`); the timestep path is computed entirely in fp32;
- the residual streams (video tokens and VACE control tokens) are carried in fp32 between blocks,
  as in the reference, where adding the fp32 gated outputs promotes them;
- layer norms read the fp32 stream, RMS norms compute in fp32 internally; every matmul and the
  attention run in the weights' dtype, so big activations exist in fp32 only as the residuals.
"""
from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from wan_engine.nn.attention import BACKENDS, attention
from wan_engine.nn.rope import apply_rope, rope_tables

WAN21_1_3B = dict(
    dim=1536, ffn_dim=8960, num_heads=12, num_layers=30, freq_dim=256, in_dim=16, out_dim=16,
    text_len=512, text_dim=4096, patch_size=(1, 2, 2), qk_norm=True, cross_attn_norm=True, eps=1e-6,
)  # fmt: skip
WAN21_14B = dict(WAN21_1_3B, dim=5120, ffn_dim=13824, num_heads=40, num_layers=40)
WAN22_A14B_EXPERT = dict(WAN21_14B)  # each of the two Wan 2.2 A14B experts has the 14B shape
VACE_1_3B_LAYERS = list(range(0, 30, 2))
VACE_14B_LAYERS = list(range(0, 40, 5))
VACE_IN_DIM = 96  # 16 inactive + 16 reactive latent channels + 64 mask channels (8x8 pixels per latent)
I2V_IN_DIM = 36  # 16 noisy latent channels + 4 temporal mask channels + 16 conditioning latent channels
WAN22_A14B_I2V_EXPERT = dict(WAN22_A14B_EXPERT, in_dim=I2V_IN_DIM)
CLIP_DIM = 1280  # width of the CLIP ViT-H/14 image tokens (wan_engine.nn.clip.VIT_H_14)
WAN21_14B_I2V = dict(WAN21_14B, in_dim=I2V_IN_DIM, clip_dim=CLIP_DIM)
WAN21_14B_FLF2V = dict(WAN21_14B_I2V, clip_positions=2 * 257)  # two frames of 1 + 16 x 16 CLIP tokens

RECOMPILE_LIMIT = 64  # graphs per block kind torch.compile may keep (its default, 8, is too few here)

TINY_DIT = dict(
    dim=64, ffn_dim=128, num_heads=4, num_layers=4, freq_dim=32, in_dim=16, out_dim=16, text_len=32,
    text_dim=32, patch_size=(1, 2, 2), qk_norm=True, cross_attn_norm=True, eps=1e-6,
)  # fmt: skip
TINY_VACE_LAYERS = [0, 2]
TINY_I2V_DIT = dict(TINY_DIT, in_dim=I2V_IN_DIM)
TINY_I2V_CLIP_DIT = dict(TINY_I2V_DIT, clip_dim=32)  # the width of wan_engine.nn.clip.TINY_CLIP
TINY_FLF2V_DIT = dict(TINY_I2V_CLIP_DIT, clip_positions=2 * 5)  # two frames of TINY_CLIP's 5 tokens

Rope = tuple[torch.Tensor, torch.Tensor]  # cos, sin: [L, head_dim // 2] fp32


class RMSNorm(nn.Module):
    """RMS norm over the whole projection (all heads together), computed in fp32."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, L, dim] -> same shape and dtype."""
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


class MultiHeadAttention(nn.Module):
    """q/k/v/o projections with q/k RMS norm; used as self-attention (with RoPE) and cross-attention."""

    def __init__(self, dim: int, num_heads: int, qk_norm: bool, eps: float):
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        self.norm_q = RMSNorm(dim, eps) if qk_norm else nn.Identity()
        self.norm_k = RMSNorm(dim, eps) if qk_norm else nn.Identity()
        self.attention_backend = "sdpa"  # wan_engine.nn.attention.BACKENDS; set by WanDiT.set_attention_backend

    def forward(self, x: torch.Tensor, source: torch.Tensor, rope: Rope | None = None) -> torch.Tensor:
        """x: [B, L, dim] queries; source: [B, S, dim] keys/values (x itself for self-attention).

        rope rotates queries and keys (self-attention only). Returns [B, L, dim].
        """
        q = self.norm_q(self.q(x)).unflatten(-1, (self.num_heads, -1))
        k = self.norm_k(self.k(source)).unflatten(-1, (self.num_heads, -1))
        v = self.v(source).unflatten(-1, (self.num_heads, -1))
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        return self.o(attention(q, k, v, self.attention_backend).flatten(-2))


class ImageCrossAttention(MultiHeadAttention):
    """Wan 2.1 I2V's cross-attention: to the text, and with its own key/value projections to the
    CLIP image tokens; the two attentions are summed before the output projection."""

    def __init__(self, dim: int, num_heads: int, qk_norm: bool, eps: float):
        super().__init__(dim, num_heads, qk_norm, eps)
        self.k_img = nn.Linear(dim, dim)
        self.v_img = nn.Linear(dim, dim)
        self.norm_k_img = RMSNorm(dim, eps) if qk_norm else nn.Identity()

    def forward(self, x: torch.Tensor, source: torch.Tensor, rope: Rope | None = None,
                image: torch.Tensor | None = None) -> torch.Tensor:
        """x: [B, L, dim]; source: [B, S, dim] the embedded text; image: [B, N, dim] the projected
        image tokens (required). Returns [B, L, dim]."""
        if image is None:
            raise ValueError("an image-to-video DiT with a CLIP branch needs the image tokens")
        q = self.norm_q(self.q(x)).unflatten(-1, (self.num_heads, -1))
        k = self.norm_k(self.k(source)).unflatten(-1, (self.num_heads, -1))
        v = self.v(source).unflatten(-1, (self.num_heads, -1))
        k_img = self.norm_k_img(self.k_img(image)).unflatten(-1, (self.num_heads, -1))
        v_img = self.v_img(image).unflatten(-1, (self.num_heads, -1))
        attended = attention(q, k, v, self.attention_backend) + attention(q, k_img, v_img, self.attention_backend)
        return self.o(attended.flatten(-2))


class WanBlock(nn.Module):
    """Self-attention, cross-attention to the text, GELU(tanh) feed-forward; 6-way modulation.

    The modulation rows are (shift, scale, gate) for self-attention, then for the feed-forward.
    Norm names follow the checkpoint: norm1 before self-attention, norm3 (affine when
    cross_attn_norm) before cross-attention, norm2 before the feed-forward.
    """

    def __init__(self, dim: int, ffn_dim: int, num_heads: int, qk_norm: bool, cross_attn_norm: bool, eps: float,
                 image_tokens: bool = False):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps, elementwise_affine=False)
        self.self_attn = MultiHeadAttention(dim, num_heads, qk_norm, eps)
        self.norm3 = nn.LayerNorm(dim, eps, elementwise_affine=True) if cross_attn_norm else nn.Identity()
        self.cross_attn = (ImageCrossAttention if image_tokens else MultiHeadAttention)(dim, num_heads, qk_norm, eps)
        self.norm2 = nn.LayerNorm(dim, eps, elementwise_affine=False)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.GELU(approximate="tanh"), nn.Linear(ffn_dim, dim))
        self.modulation = nn.Parameter(torch.randn(1, 6, dim) / dim**0.5)

    def forward(self, x: torch.Tensor, e0: torch.Tensor, context: torch.Tensor, rope: Rope,
                image: torch.Tensor | None = None) -> torch.Tensor:
        """x: [B, L, dim] fp32 residual stream (updated in place and returned);
        e0: [B, 6, dim] fp32 time projection; context: [B, text_len, dim] embedded text;
        image: [B, N, dim] the projected CLIP image tokens (Wan 2.1 I2V only)."""
        dtype = context.dtype
        shift, scale, gate, ffn_shift, ffn_scale, ffn_gate = (self.modulation + e0).unsqueeze(2).unbind(1)

        h = _modulate(self.norm1(x), shift, scale, dtype)
        x.addcmul_(self.self_attn(h, h, rope), gate)

        h = self.norm3(x).to(dtype)
        x.add_(self.cross_attn(h, context) if image is None else self.cross_attn(h, context, image=image))

        h = _modulate(self.norm2(x), ffn_shift, ffn_scale, dtype)
        x.addcmul_(self.ffn(h), ffn_gate)
        return x


class VaceBlock(WanBlock):
    """A WanBlock on the control stream; after_proj turns its output into a hint for the main stream.

    The first VACE block also owns before_proj, which projects the embedded control video and adds
    the embedded noisy video to it.
    """

    def __init__(self, *args, first: bool, **kwargs):
        super().__init__(*args, **kwargs)
        dim = self.modulation.shape[-1]
        self.before_proj = nn.Linear(dim, dim) if first else None
        self.after_proj = nn.Linear(dim, dim)

    def forward(
        self, c: torch.Tensor, tokens: torch.Tensor, e0: torch.Tensor, context: torch.Tensor, rope: Rope
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """c: [B, L, dim] control stream (fp32 after the first block, else the embedded control video);
        tokens: [B, L, dim] the embedded noisy video. Returns (c, hint [B, L, dim])."""
        if self.before_proj is not None:
            c = (self.before_proj(c) + tokens).float()
        c = super().forward(c, e0, context, rope)
        return c, self.after_proj(c.to(context.dtype))


class Head(nn.Module):
    """Final modulated norm and projection to patch pixels (fp32 weights by the precision policy)."""

    def __init__(self, dim: int, out_dim: int, patch_size: Sequence[int], eps: float):
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps, elementwise_affine=False)
        self.head = nn.Linear(dim, math.prod(patch_size) * out_dim)
        self.modulation = nn.Parameter(torch.randn(1, 2, dim) / dim**0.5)

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        """x: [B, L, dim] fp32, e: [B, dim] fp32 time embedding -> [B, L, prod(patch) * out_dim]."""
        shift, scale = (self.modulation + e.unsqueeze(1)).unsqueeze(2).unbind(1)
        return self.head(_modulate(self.norm(x), shift, scale, self.head.weight.dtype))


class WanDiT(nn.Module):
    """Wan DiT; with vace_layers it also carries the VACE blocks (one per listed main block)."""

    keep_in_fp32 = ("time_embedding", "time_projection", "modulation", "norm3", "head", "img_emb")

    def __init__(
        self,
        dim: int,
        ffn_dim: int,
        num_heads: int,
        num_layers: int,
        freq_dim: int = 256,
        in_dim: int = 16,
        out_dim: int = 16,
        text_len: int = 512,
        text_dim: int = 4096,
        patch_size: Sequence[int] = (1, 2, 2),
        qk_norm: bool = True,
        cross_attn_norm: bool = True,
        eps: float = 1e-6,
        vace_layers: Sequence[int] | None = None,
        vace_in_dim: int | None = None,
        clip_dim: int | None = None,
        clip_positions: int | None = None,
    ):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not a multiple of num_heads {num_heads}")
        self.dim, self.num_heads, self.freq_dim, self.out_dim = dim, num_heads, freq_dim, out_dim
        self.text_len = text_len
        self.patch_size = tuple(patch_size)

        self.patch_embedding = nn.Conv3d(in_dim, dim, kernel_size=self.patch_size, stride=self.patch_size)
        self.text_embedding = nn.Sequential(nn.Linear(text_dim, dim), nn.GELU(approximate="tanh"), nn.Linear(dim, dim))
        self.time_embedding = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        block_args = (dim, ffn_dim, num_heads, qk_norm, cross_attn_norm, eps)
        self.blocks = nn.ModuleList(WanBlock(*block_args, image_tokens=clip_dim is not None) for _ in range(num_layers))
        self.head = Head(dim, out_dim, self.patch_size, eps)
        if clip_dim is not None:  # Wan 2.1 I2V: the CLIP image tokens -> the model width
            self.img_emb = nn.Module()
            self.img_emb.proj = nn.Sequential(nn.LayerNorm(clip_dim), nn.Linear(clip_dim, clip_dim), nn.GELU(),
                                              nn.Linear(clip_dim, dim), nn.LayerNorm(dim))
            if clip_positions is not None:  # FLF2V: the two frames' tokens, told apart by position
                self.img_emb.emb_pos = nn.Parameter(torch.zeros(1, clip_positions, clip_dim))

        self.vace_layers = list(vace_layers or [])
        if self.vace_layers:
            if self.vace_layers[0] != 0 or self.vace_layers != sorted(set(self.vace_layers)):
                raise ValueError(f"vace_layers must be increasing and start at 0, got {self.vace_layers}")
            if self.vace_layers[-1] >= num_layers:
                raise ValueError(f"vace_layers {self.vace_layers} name blocks beyond num_layers {num_layers}")
            self.vace_patch_embedding = nn.Conv3d(
                vace_in_dim or in_dim, dim, kernel_size=self.patch_size, stride=self.patch_size
            )
            self.vace_blocks = nn.ModuleList(
                VaceBlock(*block_args, first=i == 0) for i in range(len(self.vace_layers))
            )

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        context: torch.Tensor,
        vace_context: torch.Tensor | Sequence[torch.Tensor] | None = None,
        vace_scale: float | Sequence[float] = 1.0,
        image_context: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predict the flow for a batch of latent videos.

        x: [B, in_dim, F, H, W] noisy latents; t: [B] timesteps in [0, 1000];
        context: [B, L <= text_len, text_dim] text embeddings (zero-padded to text_len here);
        vace_context: [B, vace_in_dim, F, H, W] control latents, or a list of them, each with its
        scale in vace_scale (a float, or a list of one float per context);
        image_context: [B, N, clip_dim] CLIP image tokens, for (and only for) a DiT with `clip_dim`.
        Returns [B, out_dim, F, H, W] fp32.
        """
        dtype = self.patch_embedding.weight.dtype
        grid = tuple(n // p for n, p in zip(x.shape[2:], self.patch_size))
        rope = rope_tables(grid, self.dim // self.num_heads, x.device)

        tokens = _patchify(self.patch_embedding, x.to(dtype))  # [B, L, dim]
        e = self.time_embedding(sinusoidal_embedding(t, self.freq_dim))  # [B, dim] fp32
        e0 = self.time_projection(e).unflatten(1, (6, self.dim))  # [B, 6, dim] fp32
        context = self.text_embedding(self._pad_text(context).to(dtype))  # [B, text_len, dim]
        image = self._image_tokens(image_context, dtype)  # [B, N, dim] or None

        controls = [
            _patchify(self.vace_patch_embedding, c.to(dtype)) for c in self._control_list(vace_context, x)
        ]
        scales = _scale_list(vace_scale, len(controls))
        hint_index = {layer: i for i, layer in enumerate(self.vace_layers)}

        # VACE block j reads only its control stream and the embedded noisy video (never the main
        # stream), so running it right before main block vace_layers[j] needs its hint gives the
        # reference's numbers while one control stream per context is alive instead of every hint.
        x = tokens.to(torch.float32, copy=True)  # the fp32 residual stream; tokens stay for VACE
        for layer, block in enumerate(self.blocks):
            x = block(x, e0, context, rope) if image is None else block(x, e0, context, rope, image)
            if layer in hint_index and controls:
                vace_block = self.vace_blocks[hint_index[layer]]
                for k, scale in enumerate(scales):
                    controls[k], hint = vace_block(controls[k], tokens, e0, context, rope)
                    x.add_(hint, alpha=scale)

        return _unpatchify(self.head(x, e).float(), grid, self.patch_size, self.out_dim)

    def compile_blocks(self, **options: Any) -> WanDiT:
        """Compile each block's forward with torch.compile (one graph shared by all blocks of a kind),
        fusing the norms, modulation, RoPE and residual updates around the matmuls and attention.
        Only `forward` is compiled, so hooks on the blocks themselves (block streaming) stay outside
        the graph. `options` go to torch.compile (e.g. backend). A block kind gets one graph per
        precision, attention backend and first/other VACE block, and a dynamic one once a second size
        is seen: the recompile limit is raised so that a long-lived engine never falls back to eager."""
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
        for block in [*self.blocks, *getattr(self, "vace_blocks", [])]:
            if not hasattr(block.forward, "_torchdynamo_orig_callable"):  # compiled once only
                block.forward = torch.compile(block.forward, **options)
        return self

    def set_attention_backend(self, backend: str) -> WanDiT:
        """Attend through `backend` (wan_engine.nn.attention.BACKENDS) in every block."""
        if backend not in BACKENDS:
            raise ValueError(f"attention backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
        for module in self.modules():
            if isinstance(module, MultiHeadAttention):
                module.attention_backend = backend
        return self

    def _pad_text(self, context: torch.Tensor) -> torch.Tensor:
        """[B, L, text_dim] -> [B, text_len, text_dim], zeros after the prompt as in training."""
        if context.shape[1] > self.text_len:
            raise ValueError(f"context has {context.shape[1]} tokens, more than text_len {self.text_len}")
        return F.pad(context, (0, 0, 0, self.text_len - context.shape[1]))

    def _image_tokens(self, image_context: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
        """The CLIP image tokens projected to the model width (in `dtype`), for a DiT that reads them."""
        has_branch = hasattr(self, "img_emb")
        if has_branch != (image_context is not None):
            raise ValueError("image_context is for (and needed by) a DiT with a CLIP image branch (clip_dim)")
        if image_context is None:
            return None
        tokens = image_context.to(self.img_emb.proj[1].weight.dtype)
        positions = getattr(self.img_emb, "emb_pos", None)
        if positions is not None:
            if tokens.shape[1] != positions.shape[1]:
                raise ValueError(f"image_context has {tokens.shape[1]} tokens; this DiT reads {positions.shape[1]} "
                                 "(the first and last frame's)")
            tokens = tokens + positions.to(tokens.dtype)
        return self.img_emb.proj(tokens).to(dtype)

    def _control_list(
        self, vace_context: torch.Tensor | Sequence[torch.Tensor] | None, x: torch.Tensor
    ) -> list[torch.Tensor]:
        if vace_context is None:
            return []
        if not self.vace_layers:
            raise ValueError("vace_context given to a WanDiT without vace_layers")
        controls = [vace_context] if isinstance(vace_context, torch.Tensor) else list(vace_context)
        for c in controls:
            if c.shape[0] != x.shape[0] or c.shape[2:] != x.shape[2:]:
                raise ValueError(f"vace_context {list(c.shape)} does not match latents {list(x.shape)}")
        return controls


def sinusoidal_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """t: [B] timesteps -> [B, dim] fp32, cos half then sin half, frequencies 10000**(-i/(dim/2)).

    Formed in float64 as the reference does (t * frequency reaches 1000 rad)."""
    half = dim // 2
    frequencies = torch.pow(10000.0, -torch.arange(half, dtype=torch.float64, device=t.device) / half)
    angles = torch.outer(t.to(torch.float64), frequencies)
    return torch.cat([angles.cos(), angles.sin()], dim=1).float()


def _modulate(normed: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """normed * (1 + scale) + shift in fp32, handed on in `dtype`. normed [B, L, dim]; shift/scale [B, 1, dim]."""
    return torch.addcmul(shift, normed, 1 + scale).to(dtype)


def _patchify(embedding: nn.Conv3d, video: torch.Tensor) -> torch.Tensor:
    """[B, C, F, H, W] -> [B, L, dim] tokens, frame-major (the order rope_tables assumes).

    The strided convolution is applied as what it is, one matmul over the flattened patches: the
    same numbers as the Conv3d, without the slow generic 3D convolution paths."""
    b, c, f, h, w = video.shape
    pt, ph, pw = embedding.kernel_size
    patches = video.reshape(b, c, f // pt, pt, h // ph, ph, w // pw, pw).permute(0, 2, 4, 6, 1, 3, 5, 7)
    return F.linear(patches.reshape(b, -1, c * pt * ph * pw), embedding.weight.flatten(1), embedding.bias)


def _unpatchify(x: torch.Tensor, grid: tuple[int, ...], patch_size: tuple[int, ...], channels: int) -> torch.Tensor:
    """[B, L, prod(patch) * C] (channels fastest within a patch) -> [B, C, F, H, W]."""
    f, h, w = grid
    pt, ph, pw = patch_size
    x = x.unflatten(1, (f, h, w)).unflatten(-1, (pt, ph, pw, channels))  # [B, f, h, w, pt, ph, pw, C]
    return x.permute(0, 7, 1, 4, 2, 5, 3, 6).reshape(x.shape[0], channels, f * pt, h * ph, w * pw)


def _scale_list(vace_scale: float | Sequence[float], count: int) -> list[float]:
    scales = [float(vace_scale)] * count if isinstance(vace_scale, (int, float)) else [float(s) for s in vace_scale]
    if len(scales) != count:
        raise ValueError(f"{len(scales)} vace scales for {count} vace contexts")
    return scales


# diffusers WanTransformer3DModel / WanVACETransformer3DModel name -> official name; applied in order,
# each rule at most once. Tensors have the same shapes in both layouts; only the names differ.
DIFFUSERS_RENAMES: tuple[tuple[str, str], ...] = (
    (r"^condition_embedder\.time_embedder\.linear_1\.", "time_embedding.0."),
    (r"^condition_embedder\.time_embedder\.linear_2\.", "time_embedding.2."),
    (r"^condition_embedder\.time_proj\.", "time_projection.1."),
    (r"^condition_embedder\.text_embedder\.linear_1\.", "text_embedding.0."),
    (r"^condition_embedder\.text_embedder\.linear_2\.", "text_embedding.2."),
    (r"^condition_embedder\.image_embedder\.norm1\.", "img_emb.proj.0."),
    (r"^condition_embedder\.image_embedder\.ff\.net\.0\.proj\.", "img_emb.proj.1."),
    (r"^condition_embedder\.image_embedder\.ff\.net\.2\.", "img_emb.proj.3."),
    (r"^condition_embedder\.image_embedder\.norm2\.", "img_emb.proj.4."),
    (r"^condition_embedder\.image_embedder\.pos_embed$", "img_emb.emb_pos"),
    (r"\.attn2\.add_([kv])_proj\.", r".cross_attn.\1_img."),
    (r"\.attn2\.norm_added_k\.", ".cross_attn.norm_k_img."),
    (r"^scale_shift_table$", "head.modulation"),
    (r"^proj_out\.", "head.head."),
    (r"^(vace_blocks\.\d+)\.proj_in\.", r"\1.before_proj."),
    (r"^(vace_blocks\.\d+)\.proj_out\.", r"\1.after_proj."),
    (r"\.scale_shift_table$", ".modulation"),
    (r"\.attn1\.to_out\.0\.", ".self_attn.o."),
    (r"\.attn1\.to_([qkv])\.", r".self_attn.\1."),
    (r"\.attn1\.norm_([qk])\.", r".self_attn.norm_\1."),
    (r"\.attn2\.to_out\.0\.", ".cross_attn.o."),
    (r"\.attn2\.to_([qkv])\.", r".cross_attn.\1."),
    (r"\.attn2\.norm_([qk])\.", r".cross_attn.norm_\1."),
    (r"\.norm2\.", ".norm3."),  # diffusers calls the affine cross-attention norm norm2
    (r"\.ffn\.net\.0\.proj\.", ".ffn.0."),
    (r"\.ffn\.net\.2\.", ".ffn.2."),
)
_DIFFUSERS_RENAMES = tuple((re.compile(pattern), repl) for pattern, repl in DIFFUSERS_RENAMES)


# Official config name -> the diffusers WanTransformer3DModel argument that holds the same number.
DIFFUSERS_CONFIG_NAMES = {
    "in_dim": "in_channels",
    "out_dim": "out_channels",
    "num_heads": "num_attention_heads",
    "num_layers": "num_layers",
    "ffn_dim": "ffn_dim",
    "freq_dim": "freq_dim",
    "text_dim": "text_dim",
    "cross_attn_norm": "cross_attn_norm",
    "eps": "eps",
}


def diffusers_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """Constructor arguments of diffusers' WanTransformer3DModel (and WanVACETransformer3DModel, plus
    its vace_* arguments) for the network an official `config` (e.g. WAN21_14B) describes: the model
    whose checkpoint keys `diffusers_to_official` renames."""
    arguments = {theirs: config[ours] for ours, theirs in DIFFUSERS_CONFIG_NAMES.items()}
    arguments["patch_size"] = tuple(config["patch_size"])
    arguments["attention_head_dim"] = config["dim"] // config["num_heads"]
    if config.get("clip_dim") is not None:  # Wan 2.1 I2V's image branch (FLF2V: with positions)
        arguments.update(image_dim=config["clip_dim"], added_kv_proj_dim=config["dim"])
        if config.get("clip_positions") is not None:
            arguments["pos_embed_seq_len"] = config["clip_positions"]
    return arguments


def diffusers_to_official(key: str) -> str | None:
    """Rename one diffusers DiT checkpoint key to the official layout (unknown keys pass unchanged,
    so the loader reports them as unexpected)."""
    for pattern, repl in _DIFFUSERS_RENAMES:
        key = pattern.sub(repl, key, count=1)
    return key
