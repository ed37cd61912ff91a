"""The Wan 2.1 video VAE: causal 3D convolutions, x4 time / x8 space compression, 16 latent channels.

Layout and parameter names follow the official `wan/modules/vae.py` (`WanVAE_`), so the released
`Wan2.1_VAE` checkpoints load strictly; `diffusers_to_official` renames the diffusers
`AutoencoderKLWan` layout onto it.

Time is causal: a 3-tap temporal convolution at frame t sees frames t-2, t-1, t (zeros before the
start). Video is therefore processed in chunks, and each causal layer keeps the last frames of its
input from the previous chunk (`CausalCache`): each causal convolution computes exactly what it
would over the whole clip, while only one chunk of activations is alive at a time:
- encode: frame 0 alone, then chunks of 4 frames; each chunk becomes one latent frame
  (F = 4n+1 video frames -> n+1 latent frames);
- decode: one latent frame at a time; the first becomes 1 video frame, every later one 4.
The first frame is special in the resampling layers (as in the reference): the temporal
downsampler passes the first chunk through and afterwards convolves [previous frame, chunk] with
stride 2; the temporal upsampler leaves the first chunk at one frame and afterwards doubles the
frame count with a causal convolution that emits two frames per input frame.

Cost. Both directions are convolutional with fixed-size kernels, so compute grows linearly with
the number of pixels F*H*W: with the Wan 2.1 config about 5.3 MFLOP per video pixel to encode and
8.8 to decode (torch FlopCounterMode), e.g. ~285 TFLOP to decode 81 frames at 832x480. Most of it
sits in the full- and half-resolution stages; decoding costs more (one more residual block per
stage). The exception is the single-head attention in the middle blocks, which attends within
each latent frame: (H/8 * W/8)^2 per latent frame, linear in F, quadratic in frame area (about 1%
of the decode at 720p). Activation memory is that of one chunk (4 frames at full resolution) plus
the cache (at most two frames per causal layer), independent of F; only the output grows with F
(`iter_decode` hands out frames as they come).
"""
from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

# Constructor kwargs of the released Wan 2.1 VAE (also used by Wan 2.2 A14B).
WAN21_VAE = dict(
    base_dim=96,
    z_dim=16,
    dim_mult=(1, 2, 4, 4),
    num_res_blocks=2,
    attn_scales=(),
    temperal_downsample=(False, True, True),
    dropout=0.0,
)
# Same architecture, 8 base channels and one residual block per stage: for tests and the demo.
TINY_VAE = dict(
    base_dim=8,
    z_dim=16,
    dim_mult=(1, 2, 4, 4),
    num_res_blocks=1,
    temperal_downsample=(False, True, True),
)

# Per-channel statistics of the Wan 2.1 latent space: the DiT sees (mu - mean) / std.
LATENTS_MEAN = (
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
    0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
)  # fmt: skip
LATENTS_STD = (
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
)  # fmt: skip


class CausalCache:
    """What each causal layer remembers of the chunks before; lives for one encode or decode call.

    One entry per layer, each at most 2 frames of that layer's input (the reach of a 3-tap causal
    conv), so the cache is bounded by the network, not by the video length.
    """

    def __init__(self) -> None:
        self._frames: dict[nn.Module, Tensor] = {}
        self._started: set[nn.Module] = set()

    def history(self, layer: nn.Module) -> Tensor | None:
        """The frames `layer` kept from earlier chunks, or None before its first chunk."""
        return self._frames.get(layer)

    def keep(self, layer: nn.Module, frames: Tensor) -> None:
        """Remember `frames` for `layer` (a copy, so the chunk they came from can be freed)."""
        self._frames[layer] = frames.clone()

    def first_chunk(self, layer: nn.Module) -> bool:
        """True on the first call for `layer` in this pass, False ever after."""
        if layer in self._started:
            return False
        self._started.add(layer)
        return True


class CausalConv3d(nn.Conv3d):
    """Conv3d that is causal in time: pads 2*p_t frames before the clip and none after.

    Spatial padding is the convolution's own zero padding. With a cache, the padding frames are
    the real frames of the previous chunk (zeros only before the clip's start).
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        kernel_size: int | tuple[int, int, int],
        stride: int | tuple[int, int, int] = 1,
        padding: int | tuple[int, int, int] = 0,
    ) -> None:
        pad_t, pad_h, pad_w = (padding,) * 3 if isinstance(padding, int) else padding
        super().__init__(in_dim, out_dim, kernel_size, stride=stride, padding=(0, pad_h, pad_w))
        self.time_padding = 2 * pad_t

    def forward(self, x: Tensor, cache: CausalCache | None = None) -> Tensor:
        """x: [B, C_in, T, H, W] -> [B, C_out, T', H', W'] (T' = T for stride 1)."""
        if self.time_padding == 0:
            return super().forward(x)
        past = None if cache is None else cache.history(self)
        if cache is not None:
            recent = x if past is None or x.shape[2] >= self.time_padding else torch.cat([past, x], dim=2)
            cache.keep(self, recent[:, :, -self.time_padding :])
        # [zeros before the clip's start, frames of earlier chunks, chunk], built in one copy.
        missing = self.time_padding - (0 if past is None else past.shape[2])
        b, c, _, h, w = x.shape
        zeros = x.new_zeros(b, c, missing, h, w) if missing > 0 else None
        return super().forward(torch.cat([t for t in (zeros, past, x) if t is not None], dim=2))


class ChannelRMSNorm(nn.Module):
    """RMS norm over the channel axis (dim 1) with a learned per-channel gain `gamma`.

    x / ||x||_C * sqrt(C) * gamma; `images` selects the gain's shape for [N, C, H, W] inputs
    (attention) instead of [B, C, T, H, W]. Half-precision inputs are normalised in fp32.
    """

    def __init__(self, dim: int, images: bool = False) -> None:
        super().__init__()
        self.scale = dim**0.5
        self.gamma = nn.Parameter(torch.ones(dim, *((1, 1) if images else (1, 1, 1))))

    def forward(self, x: Tensor) -> Tensor:
        normalized = F.normalize(x.float(), dim=1).to(x.dtype)
        return normalized * self.scale * self.gamma


class ResidualBlock(nn.Module):
    """(RMSNorm, SiLU, causal 3x3x3 conv) twice, plus a 1x1x1 projection shortcut if C changes."""

    def __init__(self, in_dim: int, out_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        # Sequential only so the parameters carry the official names (residual.0/2/3/6).
        self.residual = nn.Sequential(
            ChannelRMSNorm(in_dim),
            nn.SiLU(),
            CausalConv3d(in_dim, out_dim, 3, padding=1),
            ChannelRMSNorm(out_dim),
            nn.SiLU(),
            nn.Dropout(dropout),
            CausalConv3d(out_dim, out_dim, 3, padding=1),
        )
        self.shortcut = CausalConv3d(in_dim, out_dim, 1) if in_dim != out_dim else nn.Identity()

    def forward(self, x: Tensor, cache: CausalCache) -> Tensor:
        """x: [B, in_dim, T, H, W] -> [B, out_dim, T, H, W]."""
        norm1, act1, conv1, norm2, act2, dropout, conv2 = self.residual
        h = conv1(act1(norm1(x)), cache)
        h = conv2(dropout(act2(norm2(h))), cache)
        return h + self.shortcut(x)


class AttentionBlock(nn.Module):
    """Single-head self-attention over the pixels of each frame separately (no mixing in time)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = ChannelRMSNorm(dim, images=True)
        self.to_qkv = nn.Conv2d(dim, dim * 3, 1)
        self.proj = nn.Conv2d(dim, dim, 1)

    def forward(self, x: Tensor, cache: CausalCache | None = None) -> Tensor:
        """x: [B, C, T, H, W] -> same shape. `cache` is unused: nothing crosses frames."""
        b, c, t, h, w = x.shape
        frames = rearrange(x, "b c t h w -> (b t) c h w")
        qkv = self.to_qkv(self.norm(frames))
        q, k, v = rearrange(qkv, "n (three c) h w -> three n 1 (h w) c", three=3)
        out = F.scaled_dot_product_attention(q, k, v)
        out = self.proj(rearrange(out, "n 1 (h w) c -> n c h w", h=h))
        return x + rearrange(out, "(b t) c h w -> b c t h w", b=b)


class Resample(nn.Module):
    """Halve or double H and W (per frame), and T too in the `...3d` modes, Wan's way.

    downsample: zero-pad right/bottom by one, 3x3 conv with stride 2. downsample3d then, from the
      second chunk on, convolves [last frame of the previous chunk, chunk] in time with kernel 3,
      stride 2 (4 frames -> 2 -> 1); the first chunk (one frame) passes through unchanged.
    upsample: nearest-exact x2, 3x3 conv to dim/2 channels. upsample3d first (from the second
      chunk on) doubles T with a causal conv emitting 2*dim channels, read as two frames per input
      frame; the first chunk is left at one frame. Its history starts at zeros: the first latent
      frame is not seen by the temporal conv.
    """

    def __init__(self, dim: int, mode: str) -> None:
        super().__init__()
        self.mode = mode
        if mode in ("upsample2d", "upsample3d"):
            self.resample = nn.Sequential(
                nn.Upsample(scale_factor=(2.0, 2.0), mode="nearest-exact"),
                nn.Conv2d(dim, dim // 2, 3, padding=1),
            )
        elif mode in ("downsample2d", "downsample3d"):
            self.resample = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(dim, dim, 3, stride=2))
        else:
            raise ValueError(f"unknown Resample mode {mode!r}")
        if mode == "upsample3d":
            self.time_conv = CausalConv3d(dim, dim * 2, (3, 1, 1), padding=(1, 0, 0))
        elif mode == "downsample3d":
            self.time_conv = CausalConv3d(dim, dim, (3, 1, 1), stride=(2, 1, 1))

    def forward(self, x: Tensor, cache: CausalCache) -> Tensor:
        """x: [B, C, T, H, W] -> [B, C', T', H*2 or H/2, W*2 or W/2] (see the class docstring)."""
        if self.mode == "upsample3d" and not cache.first_chunk(self):
            pairs = self.time_conv(x, cache)
            x = rearrange(pairs, "b (two c) t h w -> b c (t two) h w", two=2)
        b = x.shape[0]
        x = self.resample(rearrange(x, "b c t h w -> (b t) c h w"))
        x = rearrange(x, "(b t) c h w -> b c t h w", b=b)
        if self.mode == "downsample3d":
            previous = cache.history(self)
            cache.keep(self, x[:, :, -1:])
            if previous is not None:
                x = self.time_conv(torch.cat([previous, x], dim=2))
        return x


def _stage(in_dim: int, out_dim: int, count: int, attention: bool, dropout: float) -> list[nn.Module]:
    """`count` residual blocks (the first maps in_dim -> out_dim), each followed by an attention
    block when the stage's resolution is in attn_scales: one resolution level of encoder or decoder."""
    blocks: list[nn.Module] = []
    for _ in range(count):
        blocks.append(ResidualBlock(in_dim, out_dim, dropout))
        if attention:
            blocks.append(AttentionBlock(out_dim))
        in_dim = out_dim
    return blocks


def _middle(dim: int, dropout: float) -> nn.Sequential:
    """The lowest-resolution stage of encoder and decoder alike: residual, attention, residual."""
    return nn.Sequential(ResidualBlock(dim, dim, dropout), AttentionBlock(dim), ResidualBlock(dim, dim, dropout))


class Head(nn.Sequential):
    """The last layers of encoder and decoder alike: RMSNorm, SiLU, causal 3x3x3 conv to `out_dim`.

    A Sequential so that the parameters keep the official names (head.0.gamma, head.2.*).
    """

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__(ChannelRMSNorm(in_dim), nn.SiLU(), CausalConv3d(in_dim, out_dim, 3, padding=1))

    def forward(self, x: Tensor, cache: CausalCache) -> Tensor:
        """x: [B, in_dim, T, H, W] -> [B, out_dim, T, H, W]."""
        norm, act, conv = self
        return conv(act(norm(x)), cache)


class Encoder3d(nn.Module):
    """Video [B, 3, T, H, W] -> [B, z_dim, T', H/8, W/8] (z_dim here = mean and log-variance)."""

    def __init__(
        self,
        dim: int,
        z_dim: int,
        dim_mult: tuple[int, ...],
        num_res_blocks: int,
        attn_scales: tuple[float, ...],
        temperal_downsample: tuple[bool, ...],
        dropout: float,
    ) -> None:
        super().__init__()
        dims = [dim * m for m in (1, *dim_mult)]
        scale = 1.0  # resolution relative to the input, where attn_scales places attention
        self.conv1 = CausalConv3d(3, dims[0], 3, padding=1)

        blocks: list[nn.Module] = []
        for level, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
            blocks += _stage(in_dim, out_dim, num_res_blocks, scale in attn_scales, dropout)
            if level < len(dim_mult) - 1:
                blocks.append(Resample(out_dim, "downsample3d" if temperal_downsample[level] else "downsample2d"))
                scale /= 2.0
        self.downsamples = nn.Sequential(*blocks)

        top = dims[-1]
        self.middle = _middle(top, dropout)
        self.head = Head(top, z_dim)

    def forward(self, x: Tensor, cache: CausalCache) -> Tensor:
        """x: one chunk [B, 3, 1 or 4, H, W] -> [B, z_dim, 1, H/8, W/8]."""
        x = self.conv1(x, cache)
        for block in (*self.downsamples, *self.middle):
            x = block(x, cache)
        return self.head(x, cache)


class Decoder3d(nn.Module):
    """Latents [B, z_dim, T, h, w] -> video [B, 3, 1 + 4(T-1), 8h, 8w] (unclamped)."""

    def __init__(
        self,
        dim: int,
        z_dim: int,
        dim_mult: tuple[int, ...],
        num_res_blocks: int,
        attn_scales: tuple[float, ...],
        temperal_upsample: tuple[bool, ...],
        dropout: float,
    ) -> None:
        super().__init__()
        dims = [dim * m for m in (dim_mult[-1], *dim_mult[::-1])]
        scale = 1.0 / 2 ** (len(dim_mult) - 2)
        self.conv1 = CausalConv3d(z_dim, dims[0], 3, padding=1)
        self.middle = _middle(dims[0], dropout)

        blocks: list[nn.Module] = []
        for level, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
            if level > 0:
                in_dim //= 2  # the upsampler before this stage halved the channels
            blocks += _stage(in_dim, out_dim, num_res_blocks + 1, scale in attn_scales, dropout)
            if level < len(dim_mult) - 1:
                blocks.append(Resample(out_dim, "upsample3d" if temperal_upsample[level] else "upsample2d"))
                scale *= 2.0
        self.upsamples = nn.Sequential(*blocks)
        self.head = Head(out_dim, 3)

    def forward(self, x: Tensor, cache: CausalCache) -> Tensor:
        """x: one latent frame [B, z_dim, 1, h, w] -> [B, 3, 1 (first) or 4, 8h, 8w]."""
        x = self.conv1(x, cache)
        for block in (*self.middle, *self.upsamples):
            x = block(x, cache)
        return self.head(x, cache)


class WanVAE(nn.Module):
    """Wan 2.1 VAE. `encode` maps [-1, 1] video to normalised latents, `decode` maps them back.

    Parameters: encoder.*, conv1 (1x1x1 on mean/log-variance), conv2 (1x1x1 on latents), decoder.*.
    """

    def __init__(
        self,
        base_dim: int = 96,
        z_dim: int = 16,
        dim_mult: tuple[int, ...] = (1, 2, 4, 4),
        num_res_blocks: int = 2,
        attn_scales: tuple[float, ...] = (),
        temperal_downsample: tuple[bool, ...] = (False, True, True),
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if z_dim != len(LATENTS_MEAN):
            raise ValueError(f"z_dim must be {len(LATENTS_MEAN)} to match the published latent statistics")
        self.z_dim = z_dim
        self.temporal_stride = 2 ** sum(temperal_downsample)
        self.spatial_stride = 2 ** (len(dim_mult) - 1)
        arch = (dim_mult, num_res_blocks, tuple(attn_scales))
        self.encoder = Encoder3d(base_dim, z_dim * 2, *arch, tuple(temperal_downsample), dropout)
        self.conv1 = CausalConv3d(z_dim * 2, z_dim * 2, 1)
        self.conv2 = CausalConv3d(z_dim, z_dim, 1)
        self.decoder = Decoder3d(base_dim, z_dim, *arch, tuple(temperal_downsample[::-1]), dropout)

    @torch.inference_mode()
    def encode(self, video: Tensor) -> Tensor:
        """video [B, 3, F, H, W] in [-1, 1], F = 4n+1, H and W multiples of 8
        -> normalised latents [B, 16, n+1, H/8, W/8], float32: (mu - LATENTS_MEAN) / LATENTS_STD.

        The posterior mean mu is used (no sampling), as the Wan pipelines do.
        """
        b, c, frames, h, w = video.shape
        st, ss = self.temporal_stride, self.spatial_stride
        if c != 3 or (frames - 1) % st or h % ss or w % ss:
            raise ValueError(
                f"video must be [B, 3, {st}n+1, H, W] with H, W multiples of {ss}; got {list(video.shape)}"
            )
        param = self.conv1.weight
        video = video.to(device=param.device, dtype=param.dtype)
        mean, std = self._latent_stats(param.device)
        latents = torch.empty(b, self.z_dim, 1 + (frames - 1) // st, h // ss, w // ss, device=param.device)
        cache = CausalCache()
        starts = range(1, frames, st)
        for i, chunk in enumerate([video[:, :, :1], *(video[:, :, s : s + st] for s in starts)]):
            mu = self.conv1(self.encoder(chunk, cache))[:, : self.z_dim]
            latents[:, :, i : i + 1] = (mu.float() - mean) / std
        return latents

    @torch.inference_mode()
    def iter_decode(self, latents: Tensor) -> Iterator[Tensor]:
        """Normalised latents [B, 16, T, h, w] -> successive video chunks [B, 3, 1 then 4, 8h, 8w],
        clamped to [-1, 1], in the network's dtype. Together they are the 1 + 4(T-1) frames."""
        param = self.conv2.weight
        mean, std = self._latent_stats(param.device)
        z = (latents.to(param.device).float() * std + mean).to(param.dtype)
        cache = CausalCache()
        for t in range(z.shape[2]):
            yield self.decoder(self.conv2(z[:, :, t : t + 1]), cache).clamp_(-1.0, 1.0)

    def decode(self, latents: Tensor) -> Tensor:
        """Normalised latents [B, 16, T, h, w] -> video [B, 3, 1 + 4(T-1), 8h, 8w] in [-1, 1], in the
        network's dtype, written chunk by chunk into one preallocated tensor."""
        b, _, t, h, w = latents.shape
        st, ss = self.temporal_stride, self.spatial_stride
        param = self.conv2.weight
        video = torch.empty(b, 3, 1 + st * (t - 1), h * ss, w * ss, dtype=param.dtype, device=param.device)
        start = 0
        for chunk in self.iter_decode(latents):
            video[:, :, start : start + chunk.shape[2]] = chunk
            start += chunk.shape[2]
        return video

    def _latent_stats(self, device: torch.device) -> tuple[Tensor, Tensor]:
        """LATENTS_MEAN and LATENTS_STD as float32 [1, 16, 1, 1, 1] on `device`."""
        shape = (1, self.z_dim, 1, 1, 1)
        mean = torch.tensor(LATENTS_MEAN, device=device).view(shape)
        std = torch.tensor(LATENTS_STD, device=device).view(shape)
        return mean, std


# Diffusers AutoencoderKLWan -> official names. Each rule matches a diffusers key as
# "<block path>.<leaf>" and gives the official block path; inside residual blocks the layer names
# are renamed too (the leaf of every other block is the same in both layouts).
_DIFFUSERS_RESNET_LAYERS = {
    "norm1": "residual.0",
    "conv1": "residual.2",
    "norm2": "residual.3",
    "conv2": "residual.6",
    "conv_shortcut": "shortcut",
}
_DiffusersRule = tuple[str, Callable[[re.Match[str], int], str]]
_DIFFUSERS_BLOCKS: tuple[_DiffusersRule, ...] = (
    (r"quant_conv", lambda m, s: "conv1"),
    (r"post_quant_conv", lambda m, s: "conv2"),
    (r"(?P<part>encoder|decoder)\.conv_in", lambda m, s: f"{m['part']}.conv1"),
    (r"(?P<part>encoder|decoder)\.mid_block\.resnets\.0", lambda m, s: f"{m['part']}.middle.0"),
    (r"(?P<part>encoder|decoder)\.mid_block\.resnets\.1", lambda m, s: f"{m['part']}.middle.2"),
    (r"(?P<part>encoder|decoder)\.mid_block\.attentions\.0", lambda m, s: f"{m['part']}.middle.1"),
    (r"(?P<part>encoder|decoder)\.norm_out", lambda m, s: f"{m['part']}.head.0"),
    (r"(?P<part>encoder|decoder)\.conv_out", lambda m, s: f"{m['part']}.head.2"),
    (r"encoder\.down_blocks\.(?P<i>\d+)", lambda m, s: f"encoder.downsamples.{m['i']}"),
    # Decoder stage i holds s = num_res_blocks + 2 official blocks: the residual blocks, then the upsampler.
    (
        r"decoder\.up_blocks\.(?P<i>\d+)\.resnets\.(?P<j>\d+)",
        lambda m, s: f"decoder.upsamples.{int(m['i']) * s + int(m['j'])}",
    ),
    (r"decoder\.up_blocks\.(?P<i>\d+)\.upsamplers\.0", lambda m, s: f"decoder.upsamples.{int(m['i']) * s + s - 1}"),
)
_DIFFUSERS_PATTERNS = tuple((re.compile(rf"{block}\.(?P<leaf>.+)"), rename) for block, rename in _DIFFUSERS_BLOCKS)


def diffusers_key_map(num_res_blocks: int = WAN21_VAE["num_res_blocks"]) -> Callable[[str], str | None]:
    """Key map for `wan_engine.weights.load_model` from a diffusers AutoencoderKLWan checkpoint of a
    VAE with `num_res_blocks` (decoder block numbering depends on it). Unknown keys pass through
    unchanged, so the loader reports them as unexpected."""
    stage_size = num_res_blocks + 2

    def to_official(key: str) -> str | None:
        for pattern, rename in _DIFFUSERS_PATTERNS:
            match = pattern.fullmatch(key)
            if match is None:
                continue
            layer, _, rest = match["leaf"].partition(".")
            leaf = f"{_DIFFUSERS_RESNET_LAYERS[layer]}.{rest}" if layer in _DIFFUSERS_RESNET_LAYERS else match["leaf"]
            return f"{rename(match, stage_size)}.{leaf}"
        return key

    return to_official


# The map for the released Wan 2.1 VAE (num_res_blocks = 2).
diffusers_to_official = diffusers_key_map()


def diffusers_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """Constructor arguments of diffusers' AutoencoderKLWan for the VAE an official `config` (e.g.
    WAN21_VAE) describes: the same names, with the tuples as lists."""
    return dict(config, dim_mult=list(config["dim_mult"]), temperal_downsample=list(config["temperal_downsample"]))
