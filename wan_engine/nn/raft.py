"""RAFT (Teed and Deng, 2020), the optical-flow network of the flow annotator (Wan2GP's FlowAnnotator
with the `raft-things` weights), and the Middlebury colour wheel that draws its flow.

The network is ours, laid out as the released checkpoint's keys (`fnet.*`, `cnet.*`,
`update_block.*`, after the `module.` prefix of its DataParallel save): a feature encoder with
instance norm and a context encoder with batch norm (64 -> 96 -> 128 channels at 1/8 of the frame),
the all-pairs correlation of the two frames' features in a 4-level pyramid looked up within radius
4 around each pixel's current match, and a separable convolutional GRU that refines the flow 20
times; each estimate is upsampled 8x by a learned convex combination of its 3x3 neighbourhood.
The lookup keeps the released code's order of the 81 offsets (dy before dx), which its weights
were trained with.

`flow_to_image` is the Middlebury colour wheel (Baker et al., ICCV 2007): hue is the direction,
saturation the speed relative to the frame's fastest pixel.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

CORRELATION_LEVELS, CORRELATION_RADIUS = 4, 4
HIDDEN, CONTEXT = 128, 128
ITERATIONS = 20  # Wan2GP's FlowAnnotator


class _Residual(nn.Module):
    """Two 3x3 convolutions with norm and ReLU, a 1x1 projection when the stride is 2."""

    def __init__(self, inputs: int, planes: int, norm: str, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(inputs, planes, 3, padding=1, stride=stride)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1)
        self.norm1, self.norm2 = _norm(norm, planes), _norm(norm, planes)
        self.downsample = None
        if stride != 1:
            self.norm3 = _norm(norm, planes)  # registered twice, as in the released checkpoint
            self.downsample = nn.Sequential(nn.Conv2d(inputs, planes, 1, stride=stride), self.norm3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.norm2(self.conv2(F.relu(self.norm1(self.conv1(x))))))
        return F.relu((x if self.downsample is None else self.downsample(x)) + y)


def _norm(kind: str, channels: int) -> nn.Module:
    return nn.InstanceNorm2d(channels) if kind == "instance" else nn.BatchNorm2d(channels)


class _Encoder(nn.Module):
    """Frames [N, 3, H, W] in [-1, 1] -> features [N, out, H/8, W/8]."""

    def __init__(self, out: int, norm: str):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3)
        self.norm1 = _norm(norm, 64)
        layers, inputs = [], 64
        for planes, stride in ((64, 1), (96, 2), (128, 2)):
            layers.append(nn.Sequential(_Residual(inputs, planes, norm, stride), _Residual(planes, planes, norm)))
            inputs = planes
        self.layer1, self.layer2, self.layer3 = layers
        self.conv2 = nn.Conv2d(128, out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.norm1(self.conv1(x)))
        return self.conv2(self.layer3(self.layer2(self.layer1(x))))


class _MotionEncoder(nn.Module):
    def __init__(self):
        super().__init__()
        planes = CORRELATION_LEVELS * (2 * CORRELATION_RADIUS + 1) ** 2
        self.convc1 = nn.Conv2d(planes, 256, 1)
        self.convc2 = nn.Conv2d(256, 192, 3, padding=1)
        self.convf1 = nn.Conv2d(2, 128, 7, padding=3)
        self.convf2 = nn.Conv2d(128, 64, 3, padding=1)
        self.conv = nn.Conv2d(64 + 192, 128 - 2, 3, padding=1)

    def forward(self, flow: torch.Tensor, correlation: torch.Tensor) -> torch.Tensor:
        cor = F.relu(self.convc2(F.relu(self.convc1(correlation))))
        flo = F.relu(self.convf2(F.relu(self.convf1(flow))))
        return torch.cat([F.relu(self.conv(torch.cat([cor, flo], dim=1))), flow], dim=1)


class _SeparableGRU(nn.Module):
    """A convolutional GRU run twice: with 1x5 kernels, then with 5x1."""

    def __init__(self, hidden: int, inputs: int):
        super().__init__()
        for name, kernel, padding in (("1", (1, 5), (0, 2)), ("2", (5, 1), (2, 0))):
            for gate in "zrq":
                setattr(self, f"conv{gate}{name}", nn.Conv2d(hidden + inputs, hidden, kernel, padding=padding))

    def forward(self, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        for name in "12":
            hx = torch.cat([h, x], dim=1)
            z = torch.sigmoid(getattr(self, f"convz{name}")(hx))
            r = torch.sigmoid(getattr(self, f"convr{name}")(hx))
            q = torch.tanh(getattr(self, f"convq{name}")(torch.cat([r * h, x], dim=1)))
            h = (1 - z) * h + z * q
        return h


class _FlowHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(HIDDEN, 256, 3, padding=1)
        self.conv2 = nn.Conv2d(256, 2, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(F.relu(self.conv1(x)))


class _UpdateBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = _MotionEncoder()
        self.gru = _SeparableGRU(HIDDEN, 128 + HIDDEN)
        self.flow_head = _FlowHead()
        self.mask = nn.Sequential(nn.Conv2d(128, 256, 3, padding=1), nn.ReLU(), nn.Conv2d(256, 64 * 9, 1))

    def forward(self, hidden: torch.Tensor, context: torch.Tensor, correlation: torch.Tensor,
                flow: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        hidden = self.gru(hidden, torch.cat([context, self.encoder(flow, correlation)], dim=1))
        return hidden, 0.25 * self.mask(hidden), self.flow_head(hidden)


class RAFT(nn.Module):
    """Two frames -> the flow from the first to the second, [N, 2, H, W] in pixels (x, y)."""

    def __init__(self):
        super().__init__()
        self.fnet = _Encoder(256, "instance")
        self.cnet = _Encoder(HIDDEN + CONTEXT, "batch")
        self.update_block = _UpdateBlock()

    def forward(self, first: torch.Tensor, second: torch.Tensor, iterations: int = ITERATIONS) -> torch.Tensor:
        """first, second: [N, 3, H, W] in 0..255, H and W multiples of 8 and at least 128
        (annotator_files.FLOW_MIN_SIDE)."""
        first, second = 2 * (first / 255.0) - 1, 2 * (second / 255.0) - 1
        features = self.fnet(torch.cat([first, second])).float()
        pyramid = _correlation_pyramid(*features.chunk(2))
        hidden, context = torch.split(self.cnet(first), [HIDDEN, CONTEXT], dim=1)
        hidden, context = torch.tanh(hidden), torch.relu(context)
        start = _grid(first.shape[0], *features.shape[-2:], features.device)
        window, scales = _look_up_constants(pyramid)
        coords = start.clone()
        for _ in range(iterations):
            flow = coords - start
            correlation = _look_up(pyramid, coords, window, scales)
            hidden, mask, delta = self.update_block(hidden, context, correlation, flow)
            coords = coords + delta
        return _convex_upsample(coords - start, mask)


def _grid(batch: int, height: int, width: int, device: torch.device) -> torch.Tensor:
    """Pixel coordinates [N, 2, H, W], x first."""
    ys, xs = torch.meshgrid(torch.arange(height, device=device), torch.arange(width, device=device), indexing="ij")
    return torch.stack([xs, ys]).float()[None].repeat(batch, 1, 1, 1)


def _correlation_pyramid(first: torch.Tensor, second: torch.Tensor) -> list[torch.Tensor]:
    """The dot products of every feature of `first` with every feature of `second` (scaled by
    1/sqrt(channels)), [N*H*W, 1, H, W], and 3 levels average-pooled by 2."""
    batch, channels, height, width = first.shape
    correlation = first.flatten(2).transpose(1, 2) @ second.flatten(2) / channels ** 0.5
    level = correlation.reshape(batch * height * width, 1, height, width)
    pyramid = [level]
    for _ in range(CORRELATION_LEVELS - 1):
        level = F.avg_pool2d(level, 2, stride=2)
        pyramid.append(level)
    return pyramid


def _look_up_constants(pyramid: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The offsets of the 81 looked-up points around a match ([1, 9, 9, 2], dy before dx, as the
    released code orders them) and, per level, the scale to grid_sample's [-1, 1] (made once per pair,
    not in the refinement loop)."""
    device = pyramid[0].device
    offsets = torch.linspace(-CORRELATION_RADIUS, CORRELATION_RADIUS, 2 * CORRELATION_RADIUS + 1, device=device)
    window = torch.stack(torch.meshgrid(offsets, offsets, indexing="ij"), dim=-1)[None]
    scales = [2 / torch.tensor([level.shape[-1] - 1, level.shape[-2] - 1], device=device) for level in pyramid]
    return window, scales


def _look_up(pyramid: list[torch.Tensor], coords: torch.Tensor, window: torch.Tensor,
             scales: list[torch.Tensor]) -> torch.Tensor:
    """The correlations within CORRELATION_RADIUS of each pixel's match at every level (bilinear,
    zero outside), [N, levels * 81, H, W]."""
    batch, _, height, width = coords.shape
    centres = coords.permute(0, 2, 3, 1).reshape(batch * height * width, 1, 1, 2)
    sampled = []
    for level, (correlation, scale) in enumerate(zip(pyramid, scales)):
        grid = (centres / 2 ** level + window) * scale - 1
        values = F.grid_sample(correlation, grid, align_corners=True)
        sampled.append(values.view(batch, height, width, -1))
    return torch.cat(sampled, dim=-1).permute(0, 3, 1, 2).contiguous().float()


def _convex_upsample(flow: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[N, 2, H, W] -> [N, 2, 8H, 8W]: each fine pixel a softmax-weighted mix of the 3x3 coarse flows
    around it (scaled by 8)."""
    batch, _, height, width = flow.shape
    weights = torch.softmax(mask.view(batch, 1, 9, 8, 8, height, width), dim=2)
    neighbours = F.unfold(8 * flow, [3, 3], padding=1).view(batch, 2, 9, 1, 1, height, width)
    fine = (weights * neighbours).sum(dim=2).permute(0, 1, 4, 2, 5, 3)
    return fine.reshape(batch, 2, 8 * height, 8 * width)


def pad_to_eight(x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
    """x [N, C, H, W] padded (edge pixels repeated, split evenly) to multiples of 8; the padding
    (left, right, top, bottom), to crop the flow back."""
    height, width = x.shape[-2:]
    tall, wide = (-height) % 8, (-width) % 8
    padding = (wide // 2, wide - wide // 2, tall // 2, tall - tall // 2)
    return F.pad(x, padding, mode="replicate"), padding


# ---- the colour wheel ---------------------------------------------------------------------------------

_WHEEL_SEGMENTS = (15, 6, 4, 11, 13, 6)  # red-yellow, yellow-green, green-cyan, cyan-blue, blue-magenta, magenta-red


def colour_wheel() -> np.ndarray:
    """[55, 3] RGB hues around the wheel: in each segment one channel ramps while one stays at 255."""
    rows = []
    # (channel held at 255, channel that ramps, rising?) per segment, red -> yellow -> ... -> red
    for (held, ramping, rising), count in zip(((0, 1, True), (1, 0, False), (1, 2, True), (2, 1, False),
                                               (2, 0, True), (0, 2, False)), _WHEEL_SEGMENTS):
        ramp = np.floor(255 * np.arange(count) / count)
        segment = np.zeros((count, 3))
        segment[:, held] = 255
        segment[:, ramping] = ramp if rising else 255 - ramp
        rows.append(segment)
    return np.concatenate(rows)


def flow_to_image(flow: np.ndarray) -> np.ndarray:
    """flow [H, W, 2] (x, y) -> uint8 RGB [H, W, 3]: direction as hue, speed (over the frame's
    fastest, plus 1e-5) as saturation; white where nothing moves."""
    wheel = colour_wheel()
    speed = np.sqrt((flow ** 2).sum(-1))
    u, v = (flow[..., i] / (speed.max() + 1e-5) for i in (0, 1))
    radius = np.sqrt(u ** 2 + v ** 2)
    position = (np.arctan2(-v, -u) / np.pi + 1) / 2 * (len(wheel) - 1)
    low = np.floor(position).astype(np.int32)
    high = np.where(low + 1 == len(wheel), 0, low + 1)
    weight = (position - low)[..., None]
    colour = ((1 - weight) * wheel[low] + weight * wheel[high]) / 255.0
    inside = (radius <= 1)[..., None]
    colour = np.where(inside, 1 - radius[..., None] * (1 - colour), colour * 0.75)
    return np.floor(255 * colour).astype(np.uint8)
