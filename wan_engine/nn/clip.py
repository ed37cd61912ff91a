"""The CLIP image encoder of Wan 2.1 image-to-video: the vision tower of open-clip's
xlm-roberta-large-vit-huge-14 (ViT-H/14 at 224 px: 256 patches and a class token of width 1280),
read through its 31st of 32 blocks, which is what Wan 2.1 I2V conditions on (official
`clip.py` `visual(..., use_31_block=True)`; diffusers takes the same `hidden_states[-2]` of
transformers' CLIPVisionModel). The last block, the final norm and the projection head are never
used, so they are not built, and the text tower of the checkpoint is not read.

Parameter names are those of the Wan / Wan2GP checkpoint (`visual.transformer.N.attn.to_qkv`, ...),
without the `visual.` prefix (`wan_key_map`); transformers' CLIPVisionModel files (diffusers'
`image_encoder/`, ComfyUI's `clip_vision_h`), whose q, k and v projections are stored apart and whose
embeddings are flat, load as pieces of the same tensors (`transformers_key_map`; `key_map` takes
either naming). Images are prepared as Wan2GP prepares them
(`clip_pixels`): resized to 224 x 224 with Lanczos, then normalized with CLIP's mean and deviation.
"""
from __future__ import annotations

import re
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from wan_engine.weights import Piece

VIT_H_14 = dict(dim=1280, num_layers=32, num_heads=16, patch_size=14, image_size=224, mlp_ratio=4, eps=1e-5)
TINY_CLIP = dict(dim=32, num_layers=3, num_heads=4, patch_size=14, image_size=28, mlp_ratio=4, eps=1e-5)
# open-clip's (OpenAI's) normalization of pixels in [0, 1]
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class LayerNorm(nn.LayerNorm):
    """A layer norm computed in fp32 and handed on in the input's dtype, as the reference's."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).type_as(x)


class VisionBlock(nn.Module):
    """Pre-norm self-attention (fused q/k/v projection) and a GELU MLP, each added to the stream."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: int, eps: float):
        super().__init__()
        self.num_heads = num_heads
        self.norm1 = LayerNorm(dim, eps=eps)
        self.attn = nn.Module()
        self.attn.to_qkv = nn.Linear(dim, 3 * dim)
        self.attn.proj = nn.Linear(dim, dim)
        self.norm2 = LayerNorm(dim, eps=eps)
        self.mlp = nn.Sequential(nn.Linear(dim, dim * mlp_ratio), nn.GELU(), nn.Linear(dim * mlp_ratio, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, L, dim] -> same."""
        q, k, v = self.attn.to_qkv(self.norm1(x)).unflatten(-1, (3, self.num_heads, -1)).transpose(1, 3).unbind(2)
        attended = F.scaled_dot_product_attention(q, k, v)  # [B, heads, L, head_dim]
        x = x + self.attn.proj(attended.transpose(1, 2).flatten(2))
        return x + self.mlp(self.norm2(x))


class ClipVisionEncoder(nn.Module):
    """Patch embedding, class token, positions, pre-norm and every block but the last."""

    keep_in_fp32 = ("pre_norm", "norm1", "norm2")  # layer norms keep fp32 weights (wan_engine.weights)

    def __init__(self, dim: int, num_layers: int, num_heads: int, patch_size: int, image_size: int, mlp_ratio: int,
                 eps: float):
        super().__init__()
        self.image_size = image_size
        patches = (image_size // patch_size) ** 2
        self.patch_embedding = nn.Conv2d(3, dim, kernel_size=patch_size, stride=patch_size, bias=False)
        self.cls_embedding = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embedding = nn.Parameter(torch.zeros(1, patches + 1, dim))
        self.pre_norm = LayerNorm(dim, eps=eps)
        self.transformer = nn.ModuleList(VisionBlock(dim, num_heads, mlp_ratio, eps) for _ in range(num_layers - 1))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels: [B, 3, S, S] normalized (clip_pixels) -> [B, 1 + patches, dim] image tokens."""
        dtype = self.patch_embedding.weight.dtype
        x = self.patch_embedding(pixels.to(dtype)).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_embedding.to(dtype).expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embedding.to(dtype)
        x = self.pre_norm(x)
        for block in self.transformer:
            x = block(x)
        return x

    @torch.no_grad()
    def encode(self, image: np.ndarray) -> torch.Tensor:
        """uint8 [H, W, 3] -> [1, 1 + patches, dim] image tokens, on the encoder's device."""
        device = self.patch_embedding.weight.device
        return self(clip_pixels(image, self.image_size).to(device))


def clip_pixels(image: np.ndarray, size: int) -> torch.Tensor:
    """uint8 [H, W, 3] -> float32 [1, 3, size, size]: resized with Lanczos (Wan2GP's resize_lanczos;
    the official code resizes bicubically) and normalized with CLIP's mean and deviation."""
    resized = np.asarray(Image.fromarray(image).resize((size, size), resample=Image.Resampling.LANCZOS), np.float32)
    pixels = torch.from_numpy(resized / 255.0).permute(2, 0, 1)[None]
    mean, std = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return (pixels - mean) / std


def wan_key_map(num_layers: int) -> Callable[[str], str | None]:
    """Names of the Wan / Wan2GP CLIP checkpoint (the whole XLM-RoBERTa CLIP: `visual.*`, `textual.*`,
    `log_scale`) -> this encoder's; None drops what it does not build (the text tower, the last
    vision block, the final norm and head)."""
    unused_block = f"visual.transformer.{num_layers - 1}."

    def rename(key: str) -> str | None:
        if not key.startswith("visual.") or key.startswith((unused_block, "visual.post_norm.")) or key == "visual.head":
            return None
        return key.removeprefix("visual.")

    return rename


# transformers' CLIPVisionModel names -> ours, per block (q, k and v are pieces of the fused projection)
_TRANSFORMERS_BLOCK = {"self_attn.out_proj": "attn.proj", "layer_norm1": "norm1", "layer_norm2": "norm2",
                       "mlp.fc1": "mlp.0", "mlp.fc2": "mlp.2"}
_TRANSFORMERS_EMBEDDINGS = {"embeddings.patch_embedding.weight": "patch_embedding.weight",
                            "embeddings.class_embedding": Piece("cls_embedding"),
                            "embeddings.position_embedding.weight": Piece("pos_embedding"),
                            "pre_layrnorm.weight": "pre_norm.weight", "pre_layrnorm.bias": "pre_norm.bias"}
_TRANSFORMERS_LAYER = re.compile(r"encoder\.layers\.(\d+)\.(.+)\.(weight|bias)$")
_WAN_PREFIXES = ("visual.", "textual.", "log_scale")


def transformers_key_map(num_layers: int) -> Callable[[str], str | Piece | None]:
    """Names of a transformers CLIPVisionModel file -> this encoder's: q, k and v as thirds of the fused
    projection, the flat class and position embeddings reshaped; None for the position ids, the last
    block, the post-norm, the projection heads and a text tower. Files written by transformers 4
    (diffusers' `image_encoder/`, ComfyUI's clip_vision_h) prefix the names with `vision_model.`;
    transformers 5 writes them bare."""

    def rename(key: str) -> str | Piece | None:
        if key.startswith(("text_model.", "visual_projection.", "text_projection.", "logit_scale")):
            return None
        key = key.removeprefix("vision_model.")
        if key in _TRANSFORMERS_EMBEDDINGS:
            return _TRANSFORMERS_EMBEDDINGS[key]
        match = _TRANSFORMERS_LAYER.match(key)
        if match is None:
            return None if key.startswith(("embeddings.position_ids", "post_layernorm.")) else key
        if int(match[1]) >= num_layers - 1:
            return None  # the last block: Wan conditions on the penultimate one
        block, part, kind = f"transformer.{match[1]}.", match[2], match[3]
        if part in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
            return Piece(f"{block}attn.to_qkv.{kind}", "qkv".index(part[len("self_attn.")]), 3)
        return f"{block}{_TRANSFORMERS_BLOCK[part]}.{kind}" if part in _TRANSFORMERS_BLOCK else key

    return rename


def key_map(num_layers: int) -> Callable[[str], str | Piece | None]:
    """Either naming of a CLIP file: the Wan checkpoint's (`visual.*`, `textual.*`) or transformers'."""
    wan, transformers = wan_key_map(num_layers), transformers_key_map(num_layers)
    return lambda key: (wan if key.startswith(_WAN_PREFIXES) else transformers)(key)
