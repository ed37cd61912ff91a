"""Header-only checkpoint verification: a wrong, truncated or mismatched file is named with its first bad
key before anything is loaded (what `wan-worker models verify` and the engine run)."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from wan_engine.checkpoints import verify_model_files
from wan_engine.errors import LoadError
from wan_engine.registry import ModelRegistry
from wan_engine.tensor_files import open_checkpoints
from worker.cli import build_parser
from worker.config import load_config


@pytest.fixture
def models(tiny_models_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_models_dir, tmp_path / "models"))


def verify(models: Path, key: str) -> None:
    registry = ModelRegistry(models)
    spec = registry.get(key)
    verify_model_files(spec, registry.files_for(spec))


def rewrite(path: Path, change) -> None:
    state = load_file(str(path))
    change(state)
    save_file(state, str(path))


def test_every_tiny_model_written_by_wan_engine_testing_verifies(tiny_models_dir: Path) -> None:
    for key in ("tiny_t2v", "tiny_vace", "tiny_t2v_2_2", "tiny_vace_2_2"):
        verify(tiny_models_dir, key)


def test_a_truncated_file_is_named(models: Path) -> None:
    path = models / "tiny_t2v_2_2_low.safetensors"
    path.write_bytes(path.read_bytes()[:-1000])
    with pytest.raises(LoadError, match="truncated or corrupt") as err:
        verify(models, "tiny_vace_2_2")
    assert str(path) in str(err.value)


def test_a_wrong_shape_names_the_file_key_and_both_shapes(models: Path) -> None:
    path = models / "tiny_vace_2_2_module_high.safetensors"
    key = "vace_blocks.0.after_proj.weight"
    rewrite(path, lambda state: state.update({key: state[key][:, :-1].contiguous()}))
    with pytest.raises(LoadError) as err:
        verify(models, "tiny_vace_2_2")
    message = str(err.value)
    assert str(path) in message and key in message and "dit high" in message and "the network needs" in message


def test_a_missing_key_is_named(models: Path) -> None:
    rewrite(models / "tiny_vae.safetensors", lambda state: state.pop("decoder.head.2.bias"))
    with pytest.raises(LoadError, match=r"vae files .* lack key decoder\.head\.2\.bias"):
        verify(models, "tiny_t2v")


def test_another_networks_file_is_refused_at_its_first_key(models: Path) -> None:
    shutil.copy(models / "tiny_vae.safetensors", models / "tiny_vace_module.safetensors")
    with pytest.raises(LoadError, match=r"tiny_vace_module\.safetensors: key .* is not a tensor of the dit network"):
        verify(models, "tiny_vace")


def test_an_integer_tensor_where_the_network_needs_floats_is_refused(models: Path) -> None:
    key = "blocks.0.norm3.weight"
    rewrite(models / "tiny_t2v.safetensors", lambda state: state.update({key: torch.zeros_like(state[key], dtype=torch.int32)}))
    with pytest.raises(LoadError, match=rf"key {key} has dtype I32"):
        verify(models, "tiny_t2v")


def test_models_verify_reports_each_model_and_fails_on_a_bad_one(models: Path, capsys: pytest.CaptureFixture) -> None:
    save_file({}, str(models / "tiny_t2v.safetensors"))  # a valid file without a tensor
    args = build_parser().parse_args(["models", "verify", "tiny_t2v_2_2", "tiny_t2v", "--models-dir", str(models)])
    assert args.subcommand.resolve()(args, load_config(args)) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == '{"model": "tiny_t2v_2_2", "ok": true, "layout": "wan2gp"}'
    assert '"ok": false' in lines[1] and "lack key" in lines[1]


class _Payload:
    """Unpickling this would run code: it touches a marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_pth_file_is_read_as_tensors_only_never_running_pickled_code(tmp_path: Path) -> None:
    marker = tmp_path / "code-ran"
    path = tmp_path / "models_t5_umt5-xxl-enc-bf16.pth"
    torch.save({"token_embedding.weight": torch.zeros(2, 2), "payload": _Payload(marker)}, str(path))
    with pytest.raises(LoadError, match="not a readable tensors-only .pth"), open_checkpoints([path]):
        pass
    assert not marker.exists()
    legacy = tmp_path / "legacy.pth"  # torch's pre-zip format cannot be memory-mapped: read it all
    torch.save({"w": torch.arange(3.0)}, str(legacy), _use_new_zipfile_serialization=False)
    with open_checkpoints([legacy]) as tensors:
        assert [(t.key, t.shape, t.dtype, t.read().tolist()) for t in tensors] == [("w", (3,), "F32", [0.0, 1.0, 2.0])]
