"""Cross-fade stitching vs plain ffmpeg concatenation of the same segments; peak memory vs K.

    python bench/stitch.py                      # K = 2, 4, 8 segments of 81 frames at 832x480
    python bench/stitch.py --counts 2 4 --frames 33 --size 416x240 --repeats 3

Segments (synthetic moving content, H.264 as the worker writes them) are generated once into
--cache and reused. For every K it times, each in its own process:
  * stitch: worker.travel.stitch.stitch with `--overlap` frames cross-faded at every join;
  * concat_copy: ffmpeg's concat demuxer with `-c copy`, the floor (no decoding at all; it keeps the
    overlap frames twice, which a travel video must not);
  * concat_reencode: the concat demuxer re-encoding with the worker's encoder settings, i.e. the
    cheapest way to get a fresh H.264 file out of the segments; the 2x bar is against this one.
Peak memory of the stitch is its Python process's VmHWM (frames held in Python) and, separately, the
largest ffmpeg child it ran (decoders and the encoder, whose size does not depend on K). Memory is
called flat when the Python peak grows, from the smallest to the largest K, by less than a quarter
of one decoded segment (keeping segments in memory would add whole segments per extra K); the few MB
it does grow by are the allocator settling over the first segments, and stop there (K = 8 .. 32 at
416x240 peak within 0.3 MB of each other).

Prints one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from worker.video import CRF, PIXEL_FORMAT, VIDEO_CODEC, VideoWriter, run_ffmpeg

FPS = 16


def synthetic_segment(index: int, frames: int, width: int, height: int) -> np.ndarray:
    """uint8 [frames, height, width, 3]: drifting colour waves and a moving disc, different per segment."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    video = np.empty((frames, height, width, 3), np.uint8)
    for t in range(frames):
        phase = (index * frames + t) / 12.0
        video[t, ..., 0] = 128 + 100 * np.sin(x / 37.0 + phase)
        video[t, ..., 1] = 128 + 100 * np.sin(y / 23.0 - 0.7 * phase + index)
        video[t, ..., 2] = 128 + 100 * np.sin((x + y) / 51.0 + 0.3 * phase)
        cx = width * (0.2 + 0.6 * t / max(frames - 1, 1))
        cy = height * (0.5 + 0.3 * np.sin(phase))
        video[t][(x - cx) ** 2 + (y - cy) ** 2 < (height / 8) ** 2] = (240, 240, 240)
    return video


def segment_paths(cache: Path, count: int, frames: int, width: int, height: int) -> list[Path]:
    """The first `count` cached segments, generating any that are missing."""
    folder = cache / f"{frames}f_{width}x{height}"
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"segment_{i}.mp4" for i in range(count)]
    for index, path in enumerate(paths):
        if not path.exists():
            with VideoWriter(path, FPS, width, height) as writer:
                writer.write(synthetic_segment(index, frames, width, height))
    return paths


def run_child(args: list[str]) -> dict:
    """Run this script in a child mode (a fresh process, so its memory peak is its own); return its JSON."""
    out = subprocess.run([sys.executable, __file__, *args], check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def child_stitch(paths: list[Path], overlap: int, output: Path) -> dict:
    """Stitch in this (fresh) process and report its memory peaks."""
    from worker.travel.stitch import stitch

    result = stitch(paths, [overlap] * (len(paths) - 1), output, FPS)
    with open("/proc/self/status") as status:
        hwm_kb = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
    return {
        "frames": result.frames,
        "python_peak_rss_mb": hwm_kb / 1024,
        "ffmpeg_peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
    }


def child_concat(paths: list[Path], output: Path, reencode: bool) -> dict:
    """ffmpeg's concat demuxer over the segments, stream copy or re-encoded like the worker encodes."""
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as listing:
        listing.writelines(f"file '{path.resolve()}'\n" for path in paths)
    codec = (
        ["-c:v", VIDEO_CODEC, "-crf", str(CRF), "-pix_fmt", PIXEL_FORMAT, "-movflags", "+faststart"]
        if reencode
        else ["-c", "copy"]
    )
    try:
        run_ffmpeg(["-y", "-f", "concat", "-safe", "0", "-i", listing.name, *codec, str(output)], check=True)
    finally:
        os.unlink(listing.name)
    return {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--counts", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--frames", type=int, default=81)
    parser.add_argument("--size", default="832x480")
    parser.add_argument("--overlap", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=1, help="runs per measurement; the median is reported")
    parser.add_argument("--cache", type=Path, default=Path(".bench/stitch_segments"))
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        mode, output, *paths = args.child
        segments = [Path(path) for path in paths]
        start = time.perf_counter()  # interpreter start-up and imports are left out of every mode
        if mode == "stitch":
            report = child_stitch(segments, args.overlap, Path(output))
        else:
            report = child_concat(segments, Path(output), reencode=mode == "concat_reencode")
        print(json.dumps({"seconds": time.perf_counter() - start, **report}))
        return

    width, height = (int(part) for part in args.size.split("x"))
    start = time.perf_counter()
    all_paths = segment_paths(args.cache, max(args.counts), args.frames, width, height)
    generate_seconds = time.perf_counter() - start

    results = []
    with tempfile.TemporaryDirectory() as scratch:
        for count in args.counts:
            paths = [str(path) for path in all_paths[:count]]
            row: dict = {"k": count}
            for mode in ("stitch", "concat_copy", "concat_reencode"):
                runs = [
                    run_child(["--overlap", str(args.overlap), "--child", mode, f"{scratch}/{mode}.mp4", *paths])
                    for _ in range(args.repeats)
                ]
                row[f"{mode}_seconds"] = statistics.median(run["seconds"] for run in runs)
                if mode == "stitch":
                    row["stitch_frames"] = runs[0]["frames"]
                    for key in ("python_peak_rss_mb", "ffmpeg_peak_rss_mb"):
                        row[key] = max(run[key] for run in runs)
            row["ratio_vs_concat_reencode"] = row["stitch_seconds"] / row["concat_reencode_seconds"]
            row["ratio_vs_concat_copy"] = row["stitch_seconds"] / row["concat_copy_seconds"]
            results.append(row)

    python_peaks = [row["python_peak_rss_mb"] for row in results]
    peak_growth_mb = max(python_peaks) - min(python_peaks)
    decoded_segment_mb = args.frames * width * height * 3 / 2**20
    print(
        json.dumps(
            {
                "benchmark": "stitch",
                "cpu_count": os.cpu_count(),
                "segment": {"frames": args.frames, "size": args.size, "fps": FPS, "overlap": args.overlap},
                "repeats": args.repeats,
                "segment_generation_seconds": generate_seconds,
                "results": results,
                "bars": {
                    "within_2x_of_concat_reencode": all(row["ratio_vs_concat_reencode"] <= 2.0 for row in results),
                    "python_peak_rss_growth_mb": peak_growth_mb,
                    "decoded_segment_mb": decoded_segment_mb,
                    "memory_flat_in_k": peak_growth_mb < decoded_segment_mb / 4,
                },
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
