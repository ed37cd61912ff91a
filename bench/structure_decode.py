"""Reading a late segment's frames from a long structure video: skipping the frames before them
inside ffmpeg (what worker.travel.guidance does) vs piping every frame from the first (what it did).

    python bench/structure_decode.py                              # 600 frames at 1280x720, the last 81
    python bench/structure_decode.py --frames 1620 --width 1920 --height 1080

Writes a synthetic H.264 video (a drifting gradient with grain, so that decoding costs something) and
prints one JSON object: median seconds to get the last `--segment` frames fitted to 832x480 both
ways, the speed-up, and whether the two gave the same frames.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "bench"))

from vae import seconds  # noqa: E402 (a sibling bench script: median wall time, the calls taking turns)
from worker.travel.guidance import _fit, _frames_at  # noqa: E402
from worker.video import VideoWriter, iter_frames  # noqa: E402

SIZE = (832, 480)


def from_the_start(path: Path, indices: list[int]) -> dict[int, np.ndarray]:
    """Every frame piped out of ffmpeg, the ones wanted kept."""
    wanted, found = set(indices), {}
    for index, frame in enumerate(iter_frames(path)):
        if index in wanted:
            found[index] = _fit(frame, *SIZE)
        if index >= indices[-1]:
            break
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=600)
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=720)
    parser.add_argument("--segment", type=int, default=81, help="frames the late segment needs")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:args.height, 0:args.width]
    base = np.stack([(x * 255 // args.width), (y * 255 // args.height), (x + y) % 256], -1).astype(np.uint8)
    base = np.clip(base + rng.integers(0, 24, base.shape), 0, 255).astype(np.uint8)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "structure.mp4"
        with VideoWriter(path, 16, args.width, args.height) as writer:
            for i in range(args.frames):
                writer.write(np.roll(base, 4 * i, axis=1)[None])
        indices = list(range(args.frames - args.segment, args.frames))
        skipped, piped = _frames_at(path, indices, SIZE, "bench"), from_the_start(path, indices)
        same = sorted(skipped) == sorted(piped) and all(np.array_equal(skipped[i], piped[i]) for i in indices)
        times = seconds({"skipping": lambda: _frames_at(path, indices, SIZE, "bench"),
                         "from_the_start": lambda: from_the_start(path, indices)}, "cpu", args.repeats)
    print(json.dumps({
        "video": f"{args.frames} frames {args.width}x{args.height}", "segment_frames": args.segment,
        "seconds_skipping": round(times["skipping"], 3), "seconds_from_the_start": round(times["from_the_start"], 3),
        "speedup": round(times["from_the_start"] / times["skipping"], 2), "same_frames": same,
    }))


if __name__ == "__main__":
    main()
