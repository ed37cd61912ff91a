"""Checkpoint layouts as published (Wan-AI sharded + .pth, diffusers folders, ComfyUI fp16 and
fp8_scaled single files) load to the very tensors of their Wan2GP-layout twin, and download through
the hub with `--layout`."""
from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from hub_server import HubServer
from layouts import LAYOUTS, stored_values, twin_state, write_tiny_layouts
from models_harness import TINY_REPO, json_lines, models
from wan_engine.checkpoints import model_networks, verify_network_files
from wan_engine.engine import Engine
from wan_engine.errors import WeightsMissing
from wan_engine.registry import DEFAULT_LAYOUT, ModelRegistry
from wan_engine.request import GenerationRequest
from wan_engine.weights import load_model

NETWORKS = {"dit high": "high", "dit low": "low", "vae": "vae", "text encoder": "text_encoder"}


@pytest.fixture(scope="module")
def tiny_repo(tiny_models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny models repo with every layout of tiny_t2v_2_2 added."""
    repo = Path(shutil.copytree(tiny_models_dir, tmp_path_factory.mktemp("repo") / "tiny-models"))
    return write_tiny_layouts(tiny_models_dir, repo)


@pytest.fixture
def hub(tiny_repo: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[HubServer]:
    with HubServer({TINY_REPO: tiny_repo}) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        yield server


@pytest.fixture(scope="module")
def layouts_dir(tiny_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models folder holding the published layouts as downloaded (`tiny-models/<path>`) and the
    shared tokenizer, but not the Wan2GP files of tiny_t2v_2_2."""
    folder = tmp_path_factory.mktemp("layouts")
    (folder / "tiny-models").symlink_to(tiny_repo)
    (folder / "tiny_umt5").symlink_to(tiny_repo / "tiny_umt5")
    return folder


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_layout_loads_the_tensors_of_its_wan2gp_twin(layouts_dir: Path, tiny_models_dir: Path, layout: str) -> None:
    registry = ModelRegistry(layouts_dir)
    spec = registry.with_layout(registry.get("tiny_t2v_2_2"), layout)
    files = registry.files_for(spec)
    assert files.layout == layout
    twin = twin_state(tiny_models_dir)
    for network in model_networks(spec, files):
        verify_network_files(network)
        loaded = load_model(network.build, network.files, dtype=torch.float32, key_map=network.key_map).state_dict()
        expected = twin[NETWORKS[network.label]]
        assert sorted(loaded) == sorted(expected), network.label
        for key, tensor in expected.items():
            assert torch.equal(loaded[key], stored_values(layout, NETWORKS[network.label], tensor, key)), (network.label, key)


def test_the_published_files_are_what_each_layout_says(tiny_repo: Path) -> None:
    official = tiny_repo / "official" / "high_noise_model"
    assert sorted(p.name for p in official.iterdir()) == [
        "diffusion_pytorch_model-00001-of-00002.safetensors", "diffusion_pytorch_model-00002-of-00002.safetensors",
        "diffusion_pytorch_model.safetensors.index.json",
    ]  # fmt: skip
    assert any(k.startswith("condition_embedder.") for k in load_file(str(tiny_repo / "diffusers" / "vae" / ".." /
               "transformer" / "diffusion_pytorch_model-00001-of-00002.safetensors")))  # fmt: skip
    fp8 = load_file(str(tiny_repo / "comfy" / "tiny_t2v_2_2_high_noise_fp8_scaled.safetensors"))
    assert "scaled_fp8" in fp8 and fp8["model.diffusion_model.blocks.0.self_attn.q.weight"].dtype == torch.float8_e4m3fn
    assert fp8["model.diffusion_model.blocks.0.self_attn.q.scale_weight"].dtype == torch.float32
    assert "encoder.block.0.layer.0.SelfAttention.q.weight" in load_file(str(tiny_repo / "comfy" / "tiny_umt5_fp16.safetensors"))


def test_an_incomplete_layout_falls_back_to_a_complete_one_and_missing_files_name_the_others(
    layouts_dir: Path, tmp_path: Path
) -> None:
    registry = ModelRegistry(layouts_dir)
    assert registry.files_for(registry.get("tiny_t2v_2_2")).layout == "official"  # the first complete one
    empty = ModelRegistry(tmp_path)
    with pytest.raises(WeightsMissing) as err:
        empty.files_for(empty.get("tiny_vace_2_2"))
    assert "--layout official | diffusers | comfy_fp16 | comfy_fp8_scaled" in str(err.value)
    assert DEFAULT_LAYOUT in empty.layouts(empty.get("vace_22_14b"))


def test_download_of_a_sharded_layout_fetches_index_then_shards_and_runs(
    hub: HubServer, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    folder = tmp_path / "models"
    done = models(capsys, "download", "tiny_vace_2_2", "--layout", "official", "--models-dir", str(folder))
    assert done.returncode == 0, done.stderr
    fetched = [e["file"] for e in json_lines(done.stdout)]
    shard = "tiny-models/official/high_noise_model/diffusion_pytorch_model-00002-of-00002.safetensors"
    index = "tiny-models/official/high_noise_model/diffusion_pytorch_model.safetensors.index.json"
    assert shard in fetched and fetched.index(index) < fetched.index(shard), fetched
    assert "tiny_vace_2_2_module_high.safetensors" in fetched  # the layout keeps the definition's modules
    assert models(capsys, "verify", "tiny_vace_2_2", "--models-dir", str(folder)).returncode == 0

    engine = Engine(folder, device="cpu", dtype=torch.float32)
    request = GenerationRequest(model="tiny_vace_2_2", prompt="a boat", width=32, height=32, video_length=5, seed=1,
                                num_inference_steps=2)  # fmt: skip
    frames = engine.generate(request).frames
    assert frames.shape == (5, 32, 32, 3) and np.ptp(frames) > 0


def test_download_missing_fetches_nothing_when_another_layout_is_complete(hub: HubServer, layouts_dir: Path) -> None:
    engine = Engine(layouts_dir, device="cpu", dtype=torch.float32, download_missing=True)
    request = GenerationRequest(model="tiny_t2v_2_2", prompt="a boat", width=32, height=32, video_length=5, seed=1,
                                num_inference_steps=2)  # fmt: skip
    result = engine.generate(request)
    assert "download" not in result.timings
    assert [r for r in hub.requests if r.repo == TINY_REPO] == []
