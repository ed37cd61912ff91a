"""Where the annotators' weights (wan_engine/annotators.py) are and come from, without torch (an
orchestrator checks them before it plans segments that need them).

They are found in the models folder under the names below (Wan2GP's `ckpts/` layout for the contour
and optical-flow networks); when missing they are fetched from the hub if the worker may download
(`--download-missing`), else the annotator fails as WeightsMissing naming the files and their URLs.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from wan_engine.errors import WeightsMissing
from wan_engine.hub import HubFile, fetch

if TYPE_CHECKING:
    from wan_engine.registry import NeededFile

CANNY, DEPTH, FLOW = "canny", "depth", "flow"
KINDS = (CANNY, DEPTH, FLOW)
CONTOUR_FILE = "scribble/netG_A_latest.pth"
CONTOUR_SOURCE = HubFile("DeepBeepMeep/Wan2.1", CONTOUR_FILE)
RAFT_FILE = "flow/raft-things.pth"
# RAFT's correlation pyramid halves 1/8-resolution features 3 times, and its coarsest level needs 2
# cells a side to be sampled: 16 features, 128 pixels.
FLOW_MIN_SIDE = 128
RAFT_SOURCE = HubFile("DeepBeepMeep/Wan2.1", RAFT_FILE)
DEPTH_FOLDER = "depth_anything_v2_large_hf"
DEPTH_REPO = "depth-anything/Depth-Anything-V2-Large-hf"
DEPTH_FILES = ("config.json", "model.safetensors")


@dataclass(frozen=True)
class AnnotatorFile:
    name: str  # relative to the models folder
    source: HubFile


def annotator_files(kind: str) -> tuple[AnnotatorFile, ...]:
    """The files an annotator needs, each with its hub source."""
    if kind == CANNY:
        return (AnnotatorFile(CONTOUR_FILE, CONTOUR_SOURCE),)
    if kind == DEPTH:
        return tuple(AnnotatorFile(f"{DEPTH_FOLDER}/{name}", HubFile(DEPTH_REPO, name)) for name in DEPTH_FILES)
    if kind == FLOW:
        return (AnnotatorFile(RAFT_FILE, RAFT_SOURCE),)
    raise ValueError(f"no annotator {kind!r}; there are {', '.join(KINDS)}")


def annotator_paths(kind: str, models_dir: str | Path, download: bool) -> list[Path]:
    """The local paths of an annotator's files, fetched first where missing and `download` allows."""
    models_dir = Path(models_dir)
    files = annotator_files(kind)
    missing = [file for file in files if not (models_dir / file.name).is_file()]
    if missing and not download:
        listing = ", ".join(f"{file.name} ({file.source.url})" for file in missing)
        raise WeightsMissing(f"the {kind} annotator needs {listing} in {models_dir}; put them there or run the "
                             "worker with --download-missing", [file.name for file in missing])
    for file in missing:
        fetch(file.source, models_dir, file.name)
    return [models_dir / file.name for file in files]


def needed_annotator_files(kind: str, models_dir: str | Path) -> list[NeededFile]:
    """An annotator's files as `wan-worker models download` fetches model files."""
    from wan_engine.registry import NeededFile

    models_dir = Path(models_dir)
    return [NeededFile(f"annotator {kind}", (file.name,), file.source,
                       models_dir / file.name if (models_dir / file.name).is_file() else None)
            for file in annotator_files(kind)]
