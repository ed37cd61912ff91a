"""Image-to-video conditioning (Wan 2.2 I2V A14B): a first frame, a last frame, or both.

The I2V DiT reads, beside the 16 noisy latent channels, 20 conditioning channels that stay fixed
through the denoising (the layout of the official `image2video.py` / first-last-frame code and of
diffusers' `WanImageToVideoPipeline.prepare_latents`):

- a 4-channel temporal mask: the pixel-frame mask (1 on a given frame, 0 elsewhere) with its first
  frame repeated 4 times, so that 1 + 4(T-1) frames become 4T, folded into T latent frames of 4
  channels each (channel c of latent frame t is extended frame 4t + c);
- the 16-channel VAE latent of the conditioning video: the given frames in [-1, 1] at their places
  (frame 0, frame F-1) and zeros, i.e. mid-gray, everywhere else.

DiT input: [noisy latents (16), mask (4), conditioning latents (16)] = 36 channels.

With only a last frame the same construction puts the image at frame F-1 (marked and placed as the
official first-last-frame code does) and leaves frame 0 zero and unmarked; diffusers cannot
express that case.
"""
from __future__ import annotations

import numpy as np
import torch

from wan_engine.vace import SPATIAL_STRIDE, TEMPORAL_STRIDE, video_to_tensor

MASK_CHANNELS = TEMPORAL_STRIDE  # one per pixel frame folded into a latent frame


def conditioning_mask(
    num_frames: int, latent_height: int, latent_width: int, *, first: bool, last: bool
) -> torch.Tensor:
    """The temporal mask [4, T, h, w] (1 = frame given) for 1 + 4(T-1) = num_frames frames."""
    given = torch.zeros(num_frames)
    if first:
        given[0] = 1.0
    if last:
        given[-1] = 1.0
    extended = torch.cat([given[:1].repeat(TEMPORAL_STRIDE), given[1:]])  # 4T pixel-frame entries
    folded = extended.view(-1, MASK_CHANNELS).t()  # [4, T]
    return folded[:, :, None, None].expand(-1, -1, latent_height, latent_width).contiguous()


def conditioning_video(first: np.ndarray | None, last: np.ndarray | None, num_frames: int) -> torch.Tensor:
    """float32 [3, F, H, W] in [-1, 1]: `first` at frame 0, `last` at frame F-1, zeros between.

    first / last: uint8 [H, W, 3] at the generation's size (at least one of them)."""
    given = first if first is not None else last
    if given is None:
        raise ValueError("image-to-video needs a first or a last frame")
    height, width, _ = given.shape
    video = torch.zeros(3, num_frames, height, width)
    for index, image in ((0, first), (-1, last)):
        if image is not None:  # np.array: a copy, so read-only input (a decoded frame) is fine
            video[:, index] = video_to_tensor(np.array(image)[None])[:, 0]
    return video


@torch.no_grad()
def image_condition(
    vae: torch.nn.Module, first: np.ndarray | None, last: np.ndarray | None, num_frames: int
) -> torch.Tensor:
    """The 20 conditioning channels [1, 4 + 16, T, H/8, W/8] (float32, on the VAE's device) that the
    pipeline concatenates after the noisy latents at every DiT call."""
    parameter = next(vae.parameters())
    video = conditioning_video(first, last, num_frames).to(device=parameter.device, dtype=parameter.dtype)
    latents = vae.encode(video[None])  # [1, 16, T, h, w] float32, normalised
    _, _, height, width = video.shape
    mask = conditioning_mask(
        num_frames, height // SPATIAL_STRIDE, width // SPATIAL_STRIDE, first=first is not None, last=last is not None
    )
    return torch.cat([mask[None].to(latents), latents], dim=1)
