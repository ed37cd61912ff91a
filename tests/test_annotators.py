"""The structure-guidance annotators (wan_engine/annotators.py): the contour network in Wan2GP's
checkpoint layout, its line drawing, the depth network's input sizes and maps, and where their weights
come from (missing: WeightsMissing naming them; --download-missing: fetched from a local hub server
through the real huggingface_hub client)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from hub_server import HubServer
from wan_engine.annotator_files import CANNY, CONTOUR_FILE, DEPTH, DEPTH_FOLDER, DEPTH_REPO, FLOW, annotator_files
from wan_engine.annotators import Annotators, ContourNet, depth_input_size
from wan_engine.errors import LoadError, WeightsMissing
from wan_engine.testing import random_state

# Wan2GP's released contour network (preprocessing/canny.py ContourInference(3, 1, 3 blocks)): its keys
# and shapes, as netG_A_latest.pth holds them.
RELEASED_SHAPES = {
    "model0.1.weight": (64, 3, 7, 7), "model0.1.bias": (64,),
    "model1.0.weight": (128, 64, 3, 3), "model1.0.bias": (128,),
    "model1.3.weight": (256, 128, 3, 3), "model1.3.bias": (256,),
    **{f"model2.{b}.conv_block.{i}.{p}": (256, 256, 3, 3) if p == "weight" else (256,)
       for b in range(3) for i in (1, 5) for p in ("weight", "bias")},
    "model3.0.weight": (256, 128, 3, 3), "model3.0.bias": (128,),  # transposed: [in, out, k, k]
    "model3.3.weight": (128, 64, 3, 3), "model3.3.bias": (64,),
    "model4.1.weight": (1, 64, 7, 7), "model4.1.bias": (1,),
}


def frames(count: int = 2, size: tuple[int, int] = (32, 24), seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, size[1], size[0], 3), dtype=np.uint8)


def test_the_contour_network_has_the_released_checkpoints_layout_and_reads_its_size_from_it() -> None:
    with torch.device("meta"):
        released = ContourNet()
    assert {key: tuple(value.shape) for key, value in released.state_dict().items()} == RELEASED_SHAPES
    with torch.device("meta"):
        narrow = ContourNet(width=8, blocks=2)
    loaded = ContourNet.from_state(random_state(narrow, 3))
    assert loaded.model0[1].out_channels == 8 and len(loaded.model2) == 2
    with pytest.raises(LoadError, match="model0.1.weight"):
        ContourNet.from_state({"conv.weight": torch.zeros(1)})


def test_lines_are_the_inverted_map_thresholded_at_half_in_three_equal_channels(tiny_models_dir: Path) -> None:
    annotators = Annotators(tiny_models_dir)
    given = frames(3)
    lines = annotators.annotate(CANNY, given)
    assert lines.shape == given.shape and lines.dtype == np.uint8 and set(np.unique(lines)) <= {0, 255}
    assert (lines[..., 0] == lines[..., 1]).all() and (lines[..., 0] == lines[..., 2]).all()
    net = annotators._network(CANNY)
    with torch.no_grad():
        level = net(torch.from_numpy(given).permute(0, 3, 1, 2).float() / 255)[:, 0].numpy()
    inverted = 255 - np.clip(level * 255, 0, 255).astype(np.uint8).astype(int)  # Wan2GP's cast, then 255 - map
    assert (lines[..., 0] == np.where(inverted > 127.5, 255, 0)).all()


def test_the_depth_input_is_at_least_518_on_both_sides_in_multiples_of_14() -> None:
    assert depth_input_size(480, 832) == (518, 896)
    assert depth_input_size(48, 64) == (518, 686)
    assert depth_input_size(720, 1280) == (518, 924)
    assert depth_input_size(1000, 518) == (994, 518)


def test_depth_maps_are_gray_stretched_per_frame_and_follow_the_frame(tiny_models_dir: Path) -> None:
    annotators = Annotators(tiny_models_dir)
    given = frames(2, seed=5)
    maps = annotators.annotate(DEPTH, given)
    assert maps.shape == given.shape and maps.dtype == np.uint8
    assert (maps[..., 0] == maps[..., 2]).all()
    assert [(m.min(), m.max()) for m in maps[..., 0]] == [(0, 255), (0, 255)]
    assert not np.array_equal(maps[0], maps[1])
    assert np.array_equal(annotators.annotate(DEPTH, given[:1]), maps[:1])  # a frame's map is its own


def test_missing_weights_name_their_files_and_urls(tmp_path: Path) -> None:
    with pytest.raises(WeightsMissing) as error:
        Annotators(tmp_path).annotate(CANNY, frames(1))
    assert error.value.missing == (CONTOUR_FILE,)
    assert "https://huggingface.co/DeepBeepMeep/Wan2.1/resolve/main/scribble/netG_A_latest.pth" in str(error.value)
    with pytest.raises(WeightsMissing) as error:
        Annotators(tmp_path).annotate(DEPTH, frames(1))
    assert error.value.missing == (f"{DEPTH_FOLDER}/config.json", f"{DEPTH_FOLDER}/model.safetensors")


def test_with_downloads_allowed_the_weights_are_fetched_from_the_hub(tiny_models_dir: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    repos = {"DeepBeepMeep/Wan2.1": tiny_models_dir, DEPTH_REPO: tiny_models_dir / DEPTH_FOLDER}
    with HubServer(repos) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        annotators = Annotators(tmp_path / "models", download=True)
        expected = Annotators(tiny_models_dir)
        for kind in (CANNY, DEPTH):
            assert np.array_equal(annotators.annotate(kind, frames(1)), expected.annotate(kind, frames(1)))
            for file in annotator_files(kind):
                assert (tmp_path / "models" / file.name).read_bytes() == (tiny_models_dir / file.name).read_bytes()
        assert hub.downloads("scribble/netG_A_latest.pth") == 1


def test_models_download_fetches_the_annotators_named(tiny_models_dir: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture) -> None:
    from models_harness import json_lines, models

    repos = {"DeepBeepMeep/Wan2.1": tiny_models_dir, DEPTH_REPO: tiny_models_dir / DEPTH_FOLDER}
    with HubServer(repos) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        folder = tmp_path / "models"
        done = models(capsys, "download", "--annotator", "canny", "--annotator", "depth", "--annotator", "flow",
                      "--models-dir", str(folder))
    assert done.returncode == 0, done.stderr
    names = [file.name for kind in (CANNY, DEPTH, FLOW) for file in annotator_files(kind)]
    assert sorted(event["file"] for event in json_lines(done.stdout)) == sorted(names)
    assert all((folder / name).read_bytes() == (tiny_models_dir / name).read_bytes() for name in names)
