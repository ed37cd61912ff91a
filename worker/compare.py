"""Compare videos by eye and by number: Wan 2.1 vs 2.2 outputs, two LoRA settings, two seeds.

`compare` makes, in `out_dir`:
  * side_by_side.mp4: the inputs next to each other, cut to the shortest, scaled to a common height,
    with a band naming each one on top;
  * contact_sheet.png: a few evenly spaced frames of each input, one labelled row per input;
  * compare.json: per input its temporal scores, per pair PSNR and SSIM (the dict it returns).

Frames are paired by index (frame k of every input), not by timestamp: generated clips of one job
share a frame count and fps. Everything streams: one frame per input is in memory at a time.

Metrics, all on frames scaled to one common size (no scaling when the inputs already agree):
  * PSNR (dB) over RGB, per frame, then the mean and the worst frame. Identical frames have
    infinite PSNR; each frame's value is capped at PSNR_CAP_DB so the JSON stays finite.
  * SSIM on BT.709 luma (Wang et al. 2004 settings: Gaussian window sigma 1.5, population
    covariance, data range 255) via scikit-image, per frame, then the mean and the worst frame.
    1.0 means identical.
  * Per input, `mean_abs_frame_diff`: mean |Y[t] - Y[t-1]| in luma levels (0-255): all change
    between consecutive frames, motion included. `flicker`: mean |B[t] - (B[t-1] + B[t+1]) / 2| where
    B is luma averaged over 16x16 blocks: local brightness that reverses from one frame to the next.
    A fade or a steady pan of detail finer than a block scores near 0; brightness pumping, shimmer
    and frame-to-frame jitter score high (large objects crossing blocks add a little).
"""
from __future__ import annotations

import contextlib
import itertools
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from skimage.metrics import structural_similarity

from worker.video import VideoInfo, VideoWriter, iter_frames, probe, save_png

PSNR_CAP_DB = 100.0
CONTACT_SHEET_SAMPLES = 6
CONTACT_SHEET_TILE_HEIGHT = 144
FLICKER_BLOCK = 16  # pixels per side of the blocks whose mean brightness flicker is measured on
LABEL_BAND_HEIGHT = 20  # even, so video heights stay even for yuv420p
LABEL_COLOUR = (240, 240, 240)
BAND_COLOUR = (24, 24, 24)
_LUMA_BT709 = np.array([0.2126, 0.7152, 0.0722], dtype=np.float32)


@dataclass
class _PairScores:
    """Per-frame PSNR and SSIM of one pair of inputs."""

    a: int
    b: int
    psnr: list[float] = field(default_factory=list)
    ssim: list[float] = field(default_factory=list)

    def add(self, frame_a: np.ndarray, frame_b: np.ndarray, luma_a: np.ndarray, luma_b: np.ndarray) -> None:
        mse = float(np.mean((frame_a.astype(np.float32) - frame_b.astype(np.float32)) ** 2))
        self.psnr.append(PSNR_CAP_DB if mse == 0 else min(PSNR_CAP_DB, 10.0 * np.log10(255.0**2 / mse)))
        self.ssim.append(
            float(
                structural_similarity(
                    luma_a, luma_b, data_range=255.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False
                )
            )
        )


@dataclass
class _TemporalScores:
    """Running sums of frame-to-frame luma change and of block-brightness reversals of one input."""

    previous: np.ndarray | None = None
    previous_blocks: np.ndarray | None = None
    before_previous_blocks: np.ndarray | None = None
    change_sum: float = 0.0
    changes: int = 0
    flicker_sum: float = 0.0
    flickers: int = 0

    def add(self, luma: np.ndarray) -> None:
        blocks = _block_means(luma, FLICKER_BLOCK)
        if self.previous is not None and self.previous_blocks is not None:
            self.change_sum += float(np.mean(np.abs(luma - self.previous)))
            self.changes += 1
            if self.before_previous_blocks is not None:
                expected = (self.before_previous_blocks + blocks) / 2
                self.flicker_sum += float(np.mean(np.abs(self.previous_blocks - expected)))
                self.flickers += 1
        self.previous = luma
        self.before_previous_blocks, self.previous_blocks = self.previous_blocks, blocks

    def scores(self) -> dict[str, float | None]:
        return {
            "mean_abs_frame_diff": self.change_sum / self.changes if self.changes else None,
            "flicker": self.flicker_sum / self.flickers if self.flickers else None,
        }


def _block_means(luma: np.ndarray, block: int) -> np.ndarray:
    """Mean of each block x block tile of luma [H, W] (edges that do not fill a tile are dropped)."""
    block = min(block, *luma.shape)
    rows, cols = luma.shape[0] // block, luma.shape[1] // block
    return luma[: rows * block, : cols * block].reshape(rows, block, cols, block).mean(axis=(1, 3))


def compare(
    paths: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    labels: Sequence[str] | None = None,
    samples: int = CONTACT_SHEET_SAMPLES,
) -> dict[str, Any]:
    """Write the side-by-side video, contact sheet and compare.json for `paths`; return the JSON dict."""
    if not paths:
        raise ValueError("compare needs at least one video")
    inputs = [Path(path) for path in paths]
    labels = list(labels) if labels is not None else default_labels(inputs)
    if len(labels) != len(inputs):
        raise ValueError(f"{len(inputs)} videos but {len(labels)} labels")
    infos = [probe(path) for path in inputs]
    length = min(info.frames for info in infos)
    tile_height = _even(min(info.height for info in infos))
    tile_widths = [_even(info.width * tile_height / info.height) for info in infos]
    metric_size = (min(tile_widths), tile_height)
    sample_indices = sorted({int(i) for i in np.linspace(0, length - 1, min(samples, length)).round()})
    sheet_height = _even(min(CONTACT_SHEET_TILE_HEIGHT, tile_height))
    sheet_widths = [_even(width * sheet_height / tile_height) for width in tile_widths]

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    side_by_side_path = out_dir / "side_by_side.mp4"
    band = _label_band(labels, tile_widths, LABEL_BAND_HEIGHT)
    pairs = [_PairScores(a, b) for a, b in itertools.combinations(range(len(inputs)), 2)]
    temporal = [_TemporalScores() for _ in inputs]
    sheet_tiles: list[list[np.ndarray]] = [[] for _ in inputs]

    with VideoWriter(side_by_side_path, infos[0].fps, sum(tile_widths), LABEL_BAND_HEIGHT + tile_height) as writer:
        for index, frames in enumerate(_frames_in_step(inputs, length)):
            tiles = [_resize(frame, (width, tile_height)) for frame, width in zip(frames, tile_widths)]
            writer.write(np.concatenate([band, np.concatenate(tiles, axis=1)], axis=0))
            measured = [_resize(tile, metric_size) for tile in tiles]
            lumas = [frame.astype(np.float32) @ _LUMA_BT709 for frame in measured]
            for scores, luma in zip(temporal, lumas):
                scores.add(luma)
            for pair in pairs:
                pair.add(measured[pair.a], measured[pair.b], lumas[pair.a], lumas[pair.b])
            if index in sample_indices:
                for row, tile, width in zip(sheet_tiles, tiles, sheet_widths):
                    row.append(_resize(tile, (width, sheet_height)))

    sheet_path = save_png(_contact_sheet(sheet_tiles, labels, sample_indices), out_dir / "contact_sheet.png")
    report = {
        "inputs": [_input_entry(*entry) for entry in zip(inputs, labels, infos, temporal)],
        "compared_frames": length,
        "metric_size": f"{metric_size[0]}x{metric_size[1]}",
        "psnr_cap_db": PSNR_CAP_DB,
        "pairs": [_pair_entry(pair, labels) for pair in pairs],
        "contact_sheet_frames": sample_indices,
        "side_by_side": str(side_by_side_path),
        "contact_sheet": str(sheet_path),
        "json": str(out_dir / "compare.json"),
    }
    (out_dir / "compare.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def default_labels(paths: Sequence[Path]) -> list[str]:
    """File names; numbered when two inputs share a name (e.g. out/a/final.mp4, out/b/final.mp4)."""
    names = [path.name for path in paths]
    if len(set(names)) == len(names):
        return names
    return [f"{i + 1}: {name}" for i, name in enumerate(names)]


def _even(value: float) -> int:
    return max(2, int(round(value / 2)) * 2)


def _resize(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Scale uint8 [H, W, 3] to size (W, H); frames already that size are returned as they are."""
    if (frame.shape[1], frame.shape[0]) == size:
        return frame
    return np.asarray(Image.fromarray(frame).resize(size, Image.Resampling.BILINEAR))


def _frames_in_step(paths: Sequence[Path], length: int) -> Iterator[list[np.ndarray]]:
    """Frame k of every input, for k < length; stops (and kills) every decoder when done."""
    with contextlib.ExitStack() as stack:
        streams = [stack.enter_context(contextlib.closing(iter_frames(path))) for path in paths]
        for _ in range(length):
            yield [next(stream) for stream in streams]


def _label_band(labels: Sequence[str], widths: Sequence[int], height: int) -> np.ndarray:
    """uint8 [height, sum(widths), 3]: each label at the left of its column."""
    band = Image.new("RGB", (sum(widths), height), BAND_COLOUR)
    draw = ImageDraw.Draw(band)
    for label, left in zip(labels, itertools.accumulate([0, *widths[:-1]])):
        draw.text((left + 4, 4), label, fill=LABEL_COLOUR)
    return np.asarray(band)


def _contact_sheet(
    rows: Sequence[Sequence[np.ndarray]], labels: Sequence[str], frame_indices: Sequence[int]
) -> np.ndarray:
    """One labelled row of tiles per input, the sampled frame numbers in a header: uint8 [H, W, 3]."""
    row_widths = [sum(tile.shape[1] for tile in row) for row in rows]
    width = max(row_widths)
    header_widths = [tile.shape[1] for tile in rows[row_widths.index(width)]]
    parts = [_label_band([f"frame {i}" for i in frame_indices], header_widths, LABEL_BAND_HEIGHT)]
    for row, label, row_width in zip(rows, labels, row_widths):
        parts.append(_label_band([label], [width], LABEL_BAND_HEIGHT))
        strip = np.concatenate(row, axis=1)
        parts.append(np.pad(strip, ((0, 0), (0, width - row_width), (0, 0))) if row_width < width else strip)
    return np.concatenate(parts, axis=0)


def _input_entry(path: Path, label: str, info: VideoInfo, scores: _TemporalScores) -> dict[str, Any]:
    return {
        "path": str(path),
        "label": label,
        "frames": info.frames,
        "width": info.width,
        "height": info.height,
        "fps": info.fps,
        **scores.scores(),
    }


def _pair_entry(pair: _PairScores, labels: Sequence[str]) -> dict[str, Any]:
    return {
        "a": labels[pair.a],
        "b": labels[pair.b],
        "psnr_db": float(np.mean(pair.psnr)),
        "psnr_db_min": float(np.min(pair.psnr)),
        "ssim": float(np.mean(pair.ssim)),
        "ssim_min": float(np.min(pair.ssim)),
    }
