"""RAFT, the flow annotator of structure guidance: ours (wan_engine/nn/raft.py) vs torchvision's
raft_large with the same random weights, one frame pair at a time as the annotator runs them.

    python bench/raft.py                                    # 256x256 on the CPU, 20 refinements
    python bench/raft.py --device cuda --width 832 --height 480 --pairs 10

torchvision comes from the wheel scripts/test.sh unpacks into .venv/reference/ (tests/torchvision_reference.py).
Prints one JSON object: median seconds per pair for each, the speed-up over torchvision, and the
largest difference of the two flows relative to the largest flow.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "tests"))
sys.path.insert(0, str(REPO_ROOT / "bench"))

from torchvision_reference import reference_raft, torchvision_modules  # noqa: E402 (test helper)
from vae import seconds  # noqa: E402 (a sibling bench script: median wall time, the calls taking turns)
from wan_engine.nn.raft import RAFT  # noqa: E402
from wan_engine.testing import raft_state  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--pairs", type=int, default=3, help="timed pairs per network (after one warm-up)")
    args = parser.parse_args()

    state = raft_state(seed=0)
    ours = RAFT().eval()
    ours.load_state_dict(state)
    with torchvision_modules() as load:
        reference = reference_raft(state, load("torchvision.models.optical_flow.raft"))
    ours, reference = ours.to(args.device), reference.to(args.device)
    generator = torch.Generator().manual_seed(1)
    first = (torch.rand(1, 3, args.height, args.width, generator=generator) * 255).to(args.device)
    second = torch.roll(first, shifts=(4, -6), dims=(2, 3))
    with torch.inference_mode():
        ours_flow = ours(first, second, iterations=args.iterations)
        reference_flow = reference(2 * first / 255 - 1, 2 * second / 255 - 1, num_flow_updates=args.iterations)[-1]
        timed = seconds({"ours": lambda: ours(first, second, iterations=args.iterations),
                         "torchvision": lambda: reference(2 * first / 255 - 1, 2 * second / 255 - 1,
                                                          num_flow_updates=args.iterations)},
                        args.device, args.pairs)
        ours_s, reference_s = timed["ours"], timed["torchvision"]
    scale = reference_flow.abs().max().item()
    print(json.dumps({
        "device": torch.cuda.get_device_name() if args.device == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
        "frames": [args.height, args.width], "iterations": args.iterations,
        "ours": {"pair_s": round(ours_s, 4)}, "torchvision": {"pair_s": round(reference_s, 4)},
        "speedup": round(reference_s / ours_s, 3),
        "max_relative_difference": (ours_flow - reference_flow).abs().max().item() / scale,
    }, indent=2))


if __name__ == "__main__":
    main()
