"""VACE conditioning: turn a control video, its mask and reference images into the context the
VACE blocks of the DiT read.

The layout follows the official Wan VACE code (`wan/vace.py`: vace_encode_frames,
vace_encode_masks, vace_latent) so that released VACE weights see what they were trained on:

- the control video in [-1,1] is split by the binary mask (1 = generate) into the *inactive* part
  `frames * (1 - mask)` (what must be kept) and the *reactive* part `frames * mask` (what guides
  the generated region); each is VAE-encoded, giving 16 + 16 channels;
- the mask itself is folded to latent resolution: each 8x8 pixel block becomes 64 channels, and
  time is resampled to the latent frame count with nearest-exact interpolation;
- reference images are VAE-encoded as single frames, given zero reactive latents and a zero mask,
  and prepended along time (the denoiser generates them too; they are trimmed before decoding).

Context: 16 inactive + 16 reactive + 64 mask = 96 channels, [96, R + T, H/8, W/8] where R is the
number of reference images and T = 1 + (F - 1) // 4 latent frames.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

SPATIAL_STRIDE = 8  # VAE pixels per latent pixel along height and width
TEMPORAL_STRIDE = 4  # VAE frames per latent frame (after the first)


def video_to_tensor(frames: np.ndarray) -> torch.Tensor:
    """uint8 [F,H,W,3] -> float32 [3,F,H,W] in [-1,1]."""
    video = torch.from_numpy(np.ascontiguousarray(frames)).permute(3, 0, 1, 2).float()
    return video / 127.5 - 1.0


def mask_to_tensor(mask: np.ndarray) -> torch.Tensor:
    """uint8 [F,H,W] (255 = generate, 0 = keep) -> float32 [1,F,H,W] in [0,1]."""
    return torch.from_numpy(np.ascontiguousarray(mask)).float().div(255.0).unsqueeze(0)


def reference_to_tensor(image: np.ndarray, height: int, width: int) -> torch.Tensor:
    """uint8 [h,w,3] -> float32 [3,1,height,width] in [-1,1].

    An image of another size is scaled to fit inside the frame (aspect kept, bilinear) and centred
    on a white canvas, as the official VACE preprocessing does.
    """
    picture = video_to_tensor(image[None])[:, 0]  # [3,h,w]
    if picture.shape[-2:] == (height, width):
        return picture.unsqueeze(1)
    scale = min(height / picture.shape[-2], width / picture.shape[-1])
    new_h, new_w = int(picture.shape[-2] * scale), int(picture.shape[-1] * scale)
    resized = F.interpolate(picture[None], size=(new_h, new_w), mode="bilinear", align_corners=False)[0]
    canvas = torch.ones(3, height, width)
    top, left = (height - new_h) // 2, (width - new_w) // 2
    canvas[:, top : top + new_h, left : left + new_w] = resized
    return canvas.unsqueeze(1)


@torch.no_grad()
def encode_frames(vae: torch.nn.Module, frames: torch.Tensor, mask: torch.Tensor, references: Sequence[torch.Tensor]) -> torch.Tensor:
    """Inactive and reactive latents of the control video, references prepended.

    frames [3,F,H,W] in [-1,1], mask [1,F,H,W] in [0,1], references: each [3,1,H,W].
    Returns [32, R + T, H/8, W/8].
    """
    binary = (mask > 0.5).to(frames.dtype)
    # one VAE pass over a batch of two (inactive, reactive): the same numbers as two passes, with
    # half the kernel launches and better-filled kernels
    inactive, reactive = vae.encode(torch.stack([frames * (1 - binary), frames * binary]))
    latents = torch.cat([inactive, reactive], dim=0)
    if not references:
        return latents
    encoded = vae.encode(torch.stack(list(references)))  # [R, 16, 1, H/8, W/8], one batch
    with_zero_reactive = [torch.cat([z, torch.zeros_like(z)], dim=0) for z in encoded]
    return torch.cat([*with_zero_reactive, latents], dim=1)


def fold_mask(mask: torch.Tensor, num_references: int) -> torch.Tensor:
    """The pixel mask at latent resolution: [1,F,H,W] -> [64, R + T, H/8, W/8].

    Channel c = 8*i + j holds pixel (i, j) of each 8x8 block; time goes from F frames to
    T = (F + 3) // 4 latent frames by nearest-exact resampling; R zero frames lead for the references.
    """
    _, frames, height, width = mask.shape
    s = SPATIAL_STRIDE
    latent_h, latent_w = height // s, width // s
    blocks = mask[0].reshape(frames, latent_h, s, latent_w, s).permute(2, 4, 0, 1, 3)
    blocks = blocks.reshape(s * s, frames, latent_h, latent_w)
    latent_frames = (frames + TEMPORAL_STRIDE - 1) // TEMPORAL_STRIDE
    folded = F.interpolate(blocks[None], size=(latent_frames, latent_h, latent_w), mode="nearest-exact")[0]
    if num_references:
        folded = torch.cat([folded.new_zeros(s * s, num_references, latent_h, latent_w), folded], dim=1)
    return folded


@torch.no_grad()
def vace_context(
    vae: torch.nn.Module,
    frames: torch.Tensor | None,
    mask: torch.Tensor | None,
    references: Sequence[torch.Tensor],
    *,
    num_frames: int,
    height: int,
    width: int,
) -> torch.Tensor:
    """One VACE context [96, R + T, H/8, W/8] on the VAE's device and dtype.

    frames [3,F,H,W] in [-1,1] or None (no control video: zeros, i.e. mid-gray, everything to
    generate, as the official pipeline does); mask [1,F,H,W] or None (all ones: generate all).
    """
    parameter = next(vae.parameters())
    device, dtype = parameter.device, parameter.dtype
    if frames is None:
        frames = torch.zeros(3, num_frames, height, width)
    if mask is None:
        mask = torch.ones(1, *frames.shape[1:])
    frames = frames.to(device=device, dtype=dtype)
    mask = mask.to(device=device, dtype=dtype)
    references = [r.to(device=device, dtype=dtype) for r in references]
    latents = encode_frames(vae, frames, mask, references)
    return torch.cat([latents, fold_mask(mask, len(references)).to(latents.dtype)], dim=0)
