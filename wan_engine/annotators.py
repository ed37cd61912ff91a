"""Annotators: the networks that turn a structure video's frames into the control frames VACE was trained
on (Wan2GP's preprocessing/ annotators, which the headless worker runs on its structure videos).

* `canny`: Wan2GP's "canny" is not the Canny filter but a small learned contour network (the
  informative-drawings generator: 7x7 stem, two stride-2 convolutions, residual blocks, two transposed
  convolutions, sigmoid), file `scribble/netG_A_latest.pth` of the hub repo DeepBeepMeep/Wan2.1. Its
  map is inverted and thresholded at 127.5: black lines on white. The network is ours (torch), laid
  out as that checkpoint's keys; its width and depth are read from the checkpoint.
* `depth`: Depth Anything V2 Large, run through transformers' `DepthAnythingForDepthEstimation` from
  the hub repo depth-anything/Depth-Anything-V2-Large-hf (the same weights as Wan2GP's
  `depth/depth_anything_v2_vitl.pth`, in transformers' layout). Each frame is resized so both sides
  are at least 518 (multiples of 14, bicubic), normalized with the ImageNet mean and std, its depth
  brought back to the frame's size (bilinear, corners aligned) and stretched to 0..255 per frame:
  a gray image, near is bright.
* `flow`: RAFT with Wan2GP's `flow/raft-things.pth` (wan_engine/nn/raft.py, ours): pairs of frames ->
  the flow from the first to the second in pixels, each pair padded to multiples of 8 (edges
  repeated) and refined 20 times; drawing it in colour is the caller's (`flow_to_image`), after any
  scaling.

Frames go in and come out as uint8 [N, H, W, 3]. Where the weights are and come from:
wan_engine/annotator_files.py.
"""
from __future__ import annotations

import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from wan_engine.annotator_files import CANNY, DEPTH, FLOW, annotator_paths
from wan_engine.errors import LoadError
from wan_engine.nn.raft import RAFT, pad_to_eight

DEPTH_INPUT_SIZE = 518  # the shorter side the depth network sees (Depth Anything V2's infer_image)
DEPTH_PATCH = 14
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
LINE_THRESHOLD = 127.5


# ---- the contour network ("canny") ----------------------------------------------------------------------

class _Residual(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3), nn.InstanceNorm2d(channels), nn.ReLU(),
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3), nn.InstanceNorm2d(channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv_block(x)


class ContourNet(nn.Module):
    """RGB in [0, 1] -> a line map in [0, 1] (1: no line), [N, 3, H, W] -> [N, 1, H, W]; H and W
    multiples of 4 keep their size. `width`: the stem's channels (64 in the released file), doubled by
    each of the two downsamplings; `blocks` residual blocks at the bottom (3)."""

    def __init__(self, width: int = 64, blocks: int = 3):
        super().__init__()
        wide = width * 4
        self.model0 = nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(3, width, 7), nn.InstanceNorm2d(width), nn.ReLU())
        self.model1 = nn.Sequential(
            nn.Conv2d(width, width * 2, 3, stride=2, padding=1), nn.InstanceNorm2d(width * 2), nn.ReLU(),
            nn.Conv2d(width * 2, wide, 3, stride=2, padding=1), nn.InstanceNorm2d(wide), nn.ReLU(),
        )
        self.model2 = nn.Sequential(*(_Residual(wide) for _ in range(blocks)))
        self.model3 = nn.Sequential(
            nn.ConvTranspose2d(wide, width * 2, 3, stride=2, padding=1, output_padding=1), nn.InstanceNorm2d(width * 2),
            nn.ReLU(),
            nn.ConvTranspose2d(width * 2, width, 3, stride=2, padding=1, output_padding=1), nn.InstanceNorm2d(width),
            nn.ReLU(),
        )
        self.model4 = nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(width, 1, 7), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model4(self.model3(self.model2(self.model1(self.model0(x)))))

    @classmethod
    def from_state(cls, state: dict[str, torch.Tensor]) -> ContourNet:
        """The network a checkpoint holds, its width and block count read from the keys."""
        try:
            width = state["model0.1.weight"].shape[0]
        except KeyError:
            raise LoadError("not a contour-network checkpoint: it has no model0.1.weight") from None
        blocks = len({match[1] for key in state if (match := re.match(r"model2\.(\d+)\.", key))})
        net = cls(width, blocks)
        try:
            net.load_state_dict(state)
        except RuntimeError as error:
            raise LoadError(f"the contour-network checkpoint does not fit the network: {error}") from None
        return net.eval().requires_grad_(False)


def contour_lines(net: ContourNet, frames: np.ndarray, device: torch.device) -> np.ndarray:
    """Black lines on white, uint8 [N, H, W, 3], as Wan2GP's canny annotator draws them."""
    lines = []
    for frame in frames:  # one at a time: instance norm makes a frame's map its own
        x = torch.from_numpy(np.ascontiguousarray(frame)).to(device).permute(2, 0, 1)[None].float().div(255)
        level = (net(x)[0, 0] * 255).clamp(0, 255).to(torch.uint8)  # truncated, as the annotator's cast
        inverted = 255 - level.int()
        lines.append(torch.where(inverted > LINE_THRESHOLD, 255, 0).to(torch.uint8).cpu().numpy())
    return np.repeat(np.stack(lines)[..., None], 3, axis=-1)


# ---- depth --------------------------------------------------------------------------------------------

def depth_input_size(height: int, width: int) -> tuple[int, int]:
    """(height, width) a frame is resized to for the depth network: scaled so both sides are at least
    518, each rounded to a multiple of 14 (up, where rounding would fall below 518)."""
    scale = max(DEPTH_INPUT_SIZE / height, DEPTH_INPUT_SIZE / width)

    def side(length: float) -> int:
        rounded = round(length / DEPTH_PATCH) * DEPTH_PATCH
        return rounded if rounded >= DEPTH_INPUT_SIZE else math.ceil(length / DEPTH_PATCH) * DEPTH_PATCH

    return side(scale * height), side(scale * width)


def depth_maps(model: nn.Module, frames: np.ndarray, device: torch.device) -> np.ndarray:
    """Each frame's relative depth stretched to 0..255, gray uint8 [N, H, W, 3]."""
    mean = torch.tensor(IMAGENET_MEAN, device=device)[:, None, None]
    std = torch.tensor(IMAGENET_STD, device=device)[:, None, None]
    maps = []
    for frame in frames:
        height, width = frame.shape[:2]
        x = torch.from_numpy(np.ascontiguousarray(frame)).to(device).permute(2, 0, 1)[None].float().div(255)
        x = F.interpolate(x, depth_input_size(height, width), mode="bicubic", align_corners=False)
        depth = model(pixel_values=(x - mean) / std).predicted_depth
        depth = F.interpolate(depth[:, None], (height, width), mode="bilinear", align_corners=True)[0, 0]
        low, high = depth.min(), depth.max()
        scaled = (depth - low) / (high - low) if high > low else torch.zeros_like(depth)
        maps.append((scaled * 255).clamp(0, 255).to(torch.uint8).cpu().numpy())
    return np.repeat(np.stack(maps)[..., None], 3, axis=-1)


# ---- optical flow --------------------------------------------------------------------------------------

def flow_fields(net: RAFT, pairs: np.ndarray, device: torch.device) -> np.ndarray:
    """The flow from each pair's first frame to its second, float32 [N, H, W, 2] (x, y) in pixels."""
    fields = []
    for first, second in pairs:
        frames = torch.from_numpy(np.stack([first, second])).to(device).permute(0, 3, 1, 2).float()
        padded, (left, right, top, bottom) = pad_to_eight(frames)
        flow = net(padded[:1], padded[1:])[0]
        flow = flow[:, top: flow.shape[1] - bottom, left: flow.shape[2] - right]
        if not torch.isfinite(flow).all():
            raise RuntimeError(f"RAFT gave a non-finite flow for frames of {tuple(frames.shape[-2:])}")
        fields.append(flow.permute(1, 2, 0).float().cpu().numpy())
    return np.stack(fields)


# ---- loading --------------------------------------------------------------------------------------------

class Annotators:
    """The annotators one worker has loaded, kept in host memory between tasks and moved to the device
    only while they run (so a generation keeps the whole device budget)."""

    def __init__(self, models_dir: str | Path, device: str | torch.device = "cpu", download: bool = False):
        self.models_dir = Path(models_dir)
        self.device = torch.device(device)
        self.download = download
        self._loaded: dict[str, nn.Module] = {}

    @torch.inference_mode()
    def annotate(self, kind: str, frames: np.ndarray) -> np.ndarray:
        """`kind`'s control frames for uint8 [N, H, W, 3] `frames`; for flow, the flow fields float32
        [N, H, W, 2] of uint8 [N, 2, H, W, 3] frame pairs."""
        net = self._network(kind).to(self.device)
        try:
            return _KINDS[kind][1](net, frames, self.device)
        finally:
            net.to("cpu")
            if self.device.type == "cuda":
                torch.cuda.empty_cache()

    def _network(self, kind: str) -> nn.Module:
        if kind not in self._loaded:
            paths = annotator_paths(kind, self.models_dir, self.download)  # an unknown kind fails here
            self._loaded[kind] = _KINDS[kind][0](paths[0])
        return self._loaded[kind]


def _torch_file(path: Path, what: str) -> dict[str, torch.Tensor]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a pickle that is not plain tensors, or not a torch file at all
        raise LoadError(f"{path} is not a {what} checkpoint: {error}") from None


def _load_contour(path: Path) -> ContourNet:
    return ContourNet.from_state(_torch_file(path, "contour-network"))


def _load_raft(path: Path) -> RAFT:
    """RAFT from the released file (keys under DataParallel's `module.`; batch-norm counters optional)."""
    state = {key.removeprefix("module."): value for key, value in _torch_file(path, "RAFT").items()}
    net = RAFT()
    missing, unexpected = net.load_state_dict(state, strict=False)
    missing = [key for key in missing if not key.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise LoadError(f"{path} does not fit RAFT: missing {missing[:4]}, unexpected {unexpected[:4]}")
    return net.eval().requires_grad_(False)


def _load_depth(folder: Path) -> nn.Module:
    from transformers import DepthAnythingForDepthEstimation
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # a worker's log is not a terminal
    try:
        model = DepthAnythingForDepthEstimation.from_pretrained(folder, dtype=torch.float32)
    except (OSError, ValueError) as error:
        raise LoadError(f"{folder} does not hold a Depth Anything model in transformers' layout: {error}") from None
    return model.eval().requires_grad_(False)


# kind -> (load its network from its first file, run it)
_KINDS: dict[str, tuple[Callable[[Path], nn.Module], Callable[[Any, np.ndarray, torch.device], np.ndarray]]] = {
    CANNY: (_load_contour, contour_lines),
    DEPTH: (lambda path: _load_depth(path.parent), depth_maps),
    FLOW: (_load_raft, flow_fields),
}
