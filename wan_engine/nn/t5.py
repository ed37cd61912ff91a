"""umT5-XXL text encoder (the encoder half of google/umt5-xxl), as Wan uses it.

Same computation and parameter names as the official Wan `T5Encoder` with `shared_pos=False`:
pre-norm blocks, each with its own relative position bias table (bidirectional buckets), T5 RMS
norm (no mean subtraction, no bias), attention without 1/sqrt(d) scaling, and a gated GELU(tanh)
feed-forward; a final RMS norm.

Precision policy (the one place it is decided): the residual stream, the norms, the attention
logits (with the position bias and padding mask added) and the softmax are float32; the
projections and the feed-forward run in the weights' dtype. umT5 activations grow large in the
residual stream: in float16 they overflow (the reference clamps them at +-65504, losing
information), and in bfloat16 repeated rounding of the running sum and of the unscaled logits costs
accuracy. The float32 residual is [B, L, 4096] and the logits [B, H, L, L], small next to the 11 GB
of XXL weights. Run the weights in bfloat16 (or float32); in float16 the feed-forward output itself
can still overflow, as in every T5 v1.1 model.
"""
from __future__ import annotations

import math
import re

import torch
from torch import nn

from wan_engine.tokenizer import TINY_TOKENIZER_VOCAB_SIZE

RESIDUAL_DTYPE = torch.float32
RELATIVE_MAX_DISTANCE = 128  # positions further apart than this share the last bucket

UMT5_XXL = dict(vocab=256384, dim=4096, dim_attn=4096, dim_ffn=10240, num_heads=64, num_layers=24, num_buckets=32)
TINY_UMT5 = dict(
    vocab=TINY_TOKENIZER_VOCAB_SIZE, dim=32, dim_attn=32, dim_ffn=64, num_heads=4, num_layers=2, num_buckets=32
)


def relative_position_buckets(length: int, num_buckets: int, device: torch.device | None = None) -> torch.Tensor:
    """Bidirectional T5 bucket of every (query, key) pair: long [L, L].

    Half of the buckets are for keys after the query, half for keys before (or at) it. Within a
    half, distances below a quarter of `num_buckets` get one bucket each; larger distances share
    logarithmically wider buckets up to RELATIVE_MAX_DISTANCE.
    """
    positions = torch.arange(length, device=device)
    relative = positions[None, :] - positions[:, None]  # key - query
    half = num_buckets // 2
    max_exact = half // 2
    distance = relative.abs()
    # Same float32 operation order as the reference, so bucket edges fall on the same distances.
    log_bucket = max_exact + (
        torch.log(distance.clamp(min=max_exact).float() / max_exact)
        / math.log(RELATIVE_MAX_DISTANCE / max_exact)
        * (half - max_exact)
    ).long()
    log_bucket = log_bucket.clamp(max=half - 1)
    return (relative > 0).long() * half + torch.where(distance < max_exact, distance, log_bucket)


class T5RMSNorm(nn.Module):
    """Root-mean-square norm with a learnt scale; float32 in, weights' dtype out."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, L, C] float32 -> [B, L, C] in the weight dtype."""
        x = x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return (x * self.weight.float()).to(self.weight.dtype)


class T5RelativePositionBias(nn.Module):
    """One learnt scalar per (bucket, head), added to the attention logits."""

    def __init__(self, num_buckets: int, num_heads: int):
        super().__init__()
        self.embedding = nn.Embedding(num_buckets, num_heads)

    def forward(self, buckets: torch.Tensor) -> torch.Tensor:
        """buckets: long [L, L] -> float32 bias [1, num_heads, L, L]."""
        return self.embedding(buckets).permute(2, 0, 1).unsqueeze(0).float()


class T5Attention(nn.Module):
    """Multi-head self-attention, unscaled logits plus an additive float32 bias."""

    def __init__(self, dim: int, dim_attn: int, num_heads: int):
        super().__init__()
        if dim_attn % num_heads:
            raise ValueError(f"dim_attn {dim_attn} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim_attn, bias=False)
        self.k = nn.Linear(dim, dim_attn, bias=False)
        self.v = nn.Linear(dim, dim_attn, bias=False)
        self.o = nn.Linear(dim_attn, dim, bias=False)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """x: [B, L, C]; bias: float32 [B, H, L, L] (position bias + padding mask) -> [B, L, C]."""
        b, length, _ = x.shape
        q, k, v = (proj(x).view(b, length, self.num_heads, -1).transpose(1, 2) for proj in (self.q, self.k, self.v))
        # float32 logits: T5 logits are unscaled (1/sqrt(d) is folded into the init), so they are
        # large and bfloat16 rounding of them would shift the softmax by percents. L x L is small.
        logits = torch.matmul(q.float(), k.float().transpose(-1, -2)) + bias
        weights = logits.softmax(dim=-1).to(v.dtype)
        out = torch.matmul(weights, v).transpose(1, 2).reshape(b, length, -1)
        return self.o(out)


class T5FeedForward(nn.Module):
    """Gated GELU(tanh) feed-forward: fc2(fc1(x) * gelu(gate(x)))."""

    def __init__(self, dim: int, dim_ffn: int):
        super().__init__()
        self.gate = nn.Sequential(nn.Linear(dim, dim_ffn, bias=False), nn.GELU(approximate="tanh"))
        self.fc1 = nn.Linear(dim, dim_ffn, bias=False)
        self.fc2 = nn.Linear(dim_ffn, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, L, C] -> [B, L, C]."""
        return self.fc2(self.fc1(x) * self.gate(x))


class T5Block(nn.Module):
    """Pre-norm self-attention and feed-forward, each added to the float32 residual stream."""

    def __init__(self, dim: int, dim_attn: int, dim_ffn: int, num_heads: int, num_buckets: int, eps: float):
        super().__init__()
        self.norm1 = T5RMSNorm(dim, eps)
        self.attn = T5Attention(dim, dim_attn, num_heads)
        self.norm2 = T5RMSNorm(dim, eps)
        self.ffn = T5FeedForward(dim, dim_ffn)
        self.pos_embedding = T5RelativePositionBias(num_buckets, num_heads)

    def forward(self, x: torch.Tensor, buckets: torch.Tensor, mask_bias: torch.Tensor) -> torch.Tensor:
        """x: float32 [B, L, C]; buckets: long [L, L]; mask_bias: float32 [B, 1, 1, L] -> float32 [B, L, C]."""
        x = x + self.attn(self.norm1(x), self.pos_embedding(buckets) + mask_bias).to(RESIDUAL_DTYPE)
        return x + self.ffn(self.norm2(x)).to(RESIDUAL_DTYPE)


class UMT5Encoder(nn.Module):
    """umT5 encoder: token ids -> contextual embeddings that condition the Wan DiT."""

    # wan_engine.weights keeps these float32 whatever the load dtype: tiny tables added to the logits.
    keep_in_fp32 = ("pos_embedding",)

    def __init__(
        self,
        vocab: int,
        dim: int,
        dim_attn: int,
        dim_ffn: int,
        num_heads: int,
        num_layers: int,
        num_buckets: int = 32,
        eps: float = 1e-6,
    ):
        super().__init__()
        self.num_buckets = num_buckets
        self.token_embedding = nn.Embedding(vocab, dim)
        self.blocks = nn.ModuleList(
            T5Block(dim, dim_attn, dim_ffn, num_heads, num_buckets, eps) for _ in range(num_layers)
        )
        self.norm = T5RMSNorm(dim, eps)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """ids: long [B, L]; mask: [B, L], nonzero on real tokens -> [B, L, dim] in the weights' dtype.

        Padded keys are masked out of attention, and the outputs at padded positions are zero: Wan
        trims each prompt's context to its real length and zero-pads it back to text_len before the
        DiT sees it, so zeros here are exactly what the DiT was trained with.
        """
        x = self.token_embedding(ids).to(RESIDUAL_DTYPE)
        buckets = relative_position_buckets(ids.shape[1], self.num_buckets, device=ids.device)
        mask_bias = torch.zeros(mask.shape, dtype=RESIDUAL_DTYPE, device=ids.device)
        mask_bias = mask_bias.masked_fill(mask == 0, torch.finfo(RESIDUAL_DTYPE).min)[:, None, None, :]
        for block in self.blocks:
            x = block(x, buckets, mask_bias)
        return self.norm(x).masked_fill(mask[..., None] == 0, 0.0)


# transformers `UMT5EncoderModel` / `UMT5Model` parameter names -> official Wan names (regex, replacement).
TRANSFORMERS_TO_OFFICIAL: tuple[tuple[str, str], ...] = (
    (r"^shared\.weight$", "token_embedding.weight"),
    (r"^encoder\.block\.(\d+)\.layer\.0\.layer_norm\.", r"blocks.\1.norm1."),
    (r"^encoder\.block\.(\d+)\.layer\.0\.SelfAttention\.([qkvo])\.", r"blocks.\1.attn.\2."),
    (r"^encoder\.block\.(\d+)\.layer\.0\.SelfAttention\.relative_attention_bias\.", r"blocks.\1.pos_embedding.embedding."),
    (r"^encoder\.block\.(\d+)\.layer\.1\.layer_norm\.", r"blocks.\1.norm2."),
    (r"^encoder\.block\.(\d+)\.layer\.1\.DenseReluDense\.wi_0\.", r"blocks.\1.ffn.gate.0."),
    (r"^encoder\.block\.(\d+)\.layer\.1\.DenseReluDense\.wi_1\.", r"blocks.\1.ffn.fc1."),
    (r"^encoder\.block\.(\d+)\.layer\.1\.DenseReluDense\.wo\.", r"blocks.\1.ffn.fc2."),
    (r"^encoder\.final_layer_norm\.", "norm."),
)
# Dropped: the decoder side of a full UMT5 checkpoint, and `encoder.embed_tokens`, which transformers
# ties to `shared` (files written by save_pretrained carry only `shared.weight`).
_TRANSFORMERS_DROPPED = re.compile(r"^(?:decoder\.|lm_head\.|encoder\.embed_tokens\.)")


def transformers_to_official(key: str) -> str | None:
    """Official name of a transformers umT5 parameter; None for dropped keys; unknown keys unchanged
    (so the loader reports them as unexpected)."""
    if _TRANSFORMERS_DROPPED.match(key):
        return None
    for pattern, replacement in TRANSFORMERS_TO_OFFICIAL:
        renamed, count = re.subn(pattern, replacement, key)
        if count:
            return renamed
    return key
