"""`wan-worker models download/list/verify` and `run --download-missing`, with the real
huggingface_hub client talking to a local hub server (tests/hub_server.py) through HF_ENDPOINT."""
from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import wait_for
from hub_server import COMMIT, HubServer
from models_harness import TINY_REPO, json_lines, models, models_process
from wan_engine.hub import DownloadError, HubFile, fetch
from worker.resources import WorkerResources
from worker.store import TaskStatus, TaskStore
from worker.travel.plan import plan_travel
from worker.video import probe
from worker_harness import run_until_idle, write_keyframes

BIG_REPO = "wan-worker/big"
TINY_VACE_22_FILES = (
    "tiny_t2v_2_2_high.safetensors", "tiny_t2v_2_2_low.safetensors", "tiny_vace_2_2_module_high.safetensors",
    "tiny_vace_2_2_module_low.safetensors", "tiny_vae.safetensors", "tiny_umt5.safetensors", "tiny_umt5/tokenizer.json",
)  # fmt: skip


@pytest.fixture
def hub(tiny_models_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[HubServer]:
    """The tiny models served as the hub repo the tiny definitions name; HF_ENDPOINT points at it."""
    with HubServer({TINY_REPO: tiny_models_dir}) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        yield server


def same_bytes(a: Path, b: Path) -> bool:
    return a.read_bytes() == b.read_bytes()


# ---- the done-when: download into an empty folder, then a travel job runs on it ------------------------------

def test_download_into_an_empty_folder_then_verify_list_and_a_travel_job(
    hub: HubServer, tiny_models_dir: Path, sqlite_store: TaskStore, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    folder = tmp_path / "models"
    done = models(capsys, "download", "tiny_vace_2_2", "--models-dir", str(folder))
    assert done.returncode == 0, done.stderr
    events = json_lines(done.stdout)  # not a terminal: one JSON line per file
    assert sorted(e["file"] for e in events) == sorted(TINY_VACE_22_FILES)
    assert {e["status"] for e in events} == {"downloaded"}
    assert all(same_bytes(folder / name, tiny_models_dir / name) for name in TINY_VACE_22_FILES)

    requests_before = len(hub.requests)
    again = models(capsys, "download", "tiny_vace_2_2", "--models-dir", str(folder))
    assert again.returncode == 0 and {e["status"] for e in json_lines(again.stdout)} == {"present"}
    assert len(hub.requests) == requests_before  # idempotent: nothing fetched, nothing even asked

    verified = models(capsys, "verify", "tiny_vace_2_2", "--models-dir", str(folder))
    assert verified.returncode == 0 and json_lines(verified.stdout) == [{"model": "tiny_vace_2_2", "ok": True, "layout": "wan2gp"}]
    listing = json.loads(models(capsys, "list", "--json", "--models-dir", str(folder)).stdout)
    entry = next(m for m in listing["models"] if m["key"] == "tiny_vace_2_2")
    assert entry["complete"] and entry["vace"] and entry["dual_expert"] and entry["family"] == "wan2_2"
    assert all(f["present"] and f["size"] > 0 and f["source"].startswith("https://huggingface.co/wan-worker/")
               for f in entry["files"])  # fmt: skip

    params = {"model": "tiny_vace_2_2", "images": write_keyframes(tmp_path / "keys", 2), "prompt": "a walk",
              "resolution": "64x48", "fps": 8, "segment_frames": 9, "frame_overlap": 2, "seed": 3,
              "num_inference_steps": 2}  # fmt: skip
    job = sqlite_store.enqueue("travel_orchestrator", params)
    run_until_idle(sqlite_store, WorkerResources(device="cpu", models_dir=folder), tmp_path / "outputs")
    orchestrator = sqlite_store.get(job)
    assert orchestrator.status == TaskStatus.COMPLETE, orchestrator.error_message
    assert probe(orchestrator.output_location).frames == plan_travel(params).expected_frames


def test_two_processes_downloading_the_same_model_fetch_each_file_once(hub: HubServer, tmp_path: Path) -> None:
    files = ("tiny_t2v.safetensors", "tiny_vae.safetensors", "tiny_umt5.safetensors", "tiny_umt5/tokenizer.json")
    for name in files:
        hub.slow(name, 0.3)  # keep both processes inside the download at once
    command = ("download", "tiny_t2v", "--models-dir", str(tmp_path / "models"))
    processes = [models_process(*command, env={"HF_ENDPOINT": hub.url}) for _ in range(2)]
    outputs = [process.communicate(timeout=120) for process in processes]
    assert [process.returncode for process in processes] == [0, 0], outputs
    assert {name: hub.downloads(name) for name in files} == {name: 1 for name in files}
    statuses = [e["status"] for out, _ in outputs for e in json_lines(out)]
    assert sorted(statuses) == ["downloaded"] * len(files) + ["present"] * len(files)  # the other found them


# ---- transfer faults -----------------------------------------------------------------------------------------

def test_a_transfer_cut_mid_file_resumes_with_a_range_request(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = tmp_path / "big"
    repo.mkdir()
    content = os.urandom(24 * 2**20)  # more than huggingface_hub's 10 MiB chunk, so the cut leaves data on disk
    (repo / "big.safetensors").write_bytes(content)
    with HubServer({BIG_REPO: repo}) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        server.truncate("big.safetensors")
        fetched = fetch(HubFile(BIG_REPO, "big.safetensors"), tmp_path / "models", "big.safetensors")
    assert fetched.downloaded and fetched.path.read_bytes() == content
    resumed = [r for r in server.requests if r.method == "GET" and r.range]
    assert len(resumed) == 1 and resumed[0].status == 206 and resumed[0].range != "bytes=0-"


def test_a_killed_download_resumes_from_its_partial_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture) -> None:
    repo = tmp_path / "big"
    repo.mkdir()
    content = os.urandom(24 * 2**20)
    (repo / "big.safetensors").write_bytes(content)
    folder = tmp_path / "models"
    url = f"https://huggingface.co/{BIG_REPO}/resolve/main/big.safetensors"
    with HubServer({BIG_REPO: repo}) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        server.truncate("big.safetensors", stall_seconds=30)  # half the file arrives, then nothing
        first = models_process("download", "--lora", url, "--models-dir", str(folder), env={"HF_ENDPOINT": server.url})

        def partial() -> int:
            return sum(p.stat().st_size for p in (folder / ".download").rglob("*.partial"))

        wait_for(lambda: partial() >= 2**20, timeout_seconds=60, what="a partial download on disk")
        first.kill()
        first.wait()
        assert not (folder / "loras" / "big.safetensors").exists()  # never a partial file under the final name
        kept = partial()
        done = models(capsys, "download", "--lora", url, "--models-dir", str(folder))
    assert done.returncode == 0, done.stderr
    assert (folder / "loras" / "big.safetensors").read_bytes() == content
    assert [r.range for r in server.requests if r.method == "GET"][-1] == f"bytes={kept}-"


def test_a_server_error_is_retried_and_the_file_fetched_once(hub: HubServer, tiny_models_dir: Path, tmp_path: Path) -> None:
    hub.fail("tiny_vae.safetensors", 500, times=1, method="GET")
    retries: list[int] = []
    fetched = fetch(HubFile(TINY_REPO, "tiny_vae.safetensors"), tmp_path, "tiny_vae.safetensors",
                    on_retry=lambda attempt, error: retries.append(attempt))  # fmt: skip
    assert retries == [1] and same_bytes(fetched.path, tiny_models_dir / "tiny_vae.safetensors")
    assert [r.status for r in hub.requests if r.method == "GET" and r.path == "tiny_vae.safetensors"] == [500, 200]


def test_a_server_that_keeps_failing_gives_up_and_leaves_no_file(hub: HubServer, tmp_path: Path) -> None:
    hub.fail("tiny_vae.safetensors", 503, times=100, method="GET")
    with pytest.raises(DownloadError) as err:
        fetch(HubFile(TINY_REPO, "tiny_vae.safetensors"), tmp_path, "tiny_vae.safetensors", attempts=2)
    assert not err.value.permanent and "HTTP 503" in str(err.value) and "2 attempts" in str(err.value)
    assert not (tmp_path / "tiny_vae.safetensors").exists()


def test_a_missing_file_is_a_permanent_error_naming_its_url(hub: HubServer, tmp_path: Path) -> None:
    with pytest.raises(DownloadError) as err:
        fetch(HubFile(TINY_REPO, "absent.safetensors"), tmp_path, "absent.safetensors")
    assert err.value.permanent and "HTTP 404" in str(err.value)
    assert f"https://huggingface.co/{TINY_REPO}/resolve/main/absent.safetensors" in str(err.value)
    assert len([r for r in hub.requests if r.path == "absent.safetensors"]) == 1  # not retried


def test_a_pinned_revision_is_what_is_asked_for(hub: HubServer, tmp_path: Path) -> None:
    assert fetch(HubFile(TINY_REPO, "tiny_umt5.safetensors", COMMIT), tmp_path, "tiny_umt5.safetensors").downloaded
    assert {(r.revision, r.path) for r in hub.requests if r.repo == TINY_REPO} == {(COMMIT, "tiny_umt5.safetensors")}
    with pytest.raises(DownloadError) as err:
        fetch(HubFile(TINY_REPO, "tiny_vae.safetensors", "f" * 40), tmp_path, "tiny_vae.safetensors")
    assert err.value.permanent and "RevisionNotFound" in str(err.value) and "f" * 40 in str(err.value)


def test_hf_token_opens_a_private_repo(hub: HubServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_TOKEN", raising=False)
    hub.tokens[TINY_REPO] = "hf_secret"
    source = HubFile(TINY_REPO, "tiny_umt5.safetensors")
    with pytest.raises(DownloadError) as err:
        fetch(source, tmp_path, "tiny_umt5.safetensors")
    assert err.value.permanent and "HTTP 401" in str(err.value)
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    assert fetch(source, tmp_path, "tiny_umt5.safetensors").downloaded


def test_a_transfer_that_times_out_is_retried(hub: HubServer, tiny_models_dir: Path, tmp_path: Path) -> None:
    hub.slow("tiny_umt5.safetensors", 1.6)  # past the 1 s read timeout, once
    folder = tmp_path / "models"
    process = models_process("download", "tiny_t2v", "--models-dir", str(folder),
                             env={"HF_ENDPOINT": hub.url, "HF_HUB_DOWNLOAD_TIMEOUT": "1"})  # read at import
    assert process.wait(timeout=120) == 0, process.communicate()
    assert same_bytes(folder / "tiny_umt5.safetensors", tiny_models_dir / "tiny_umt5.safetensors")
    assert len([r for r in hub.requests if r.method == "GET" and r.path == "tiny_umt5.safetensors"]) == 2


def test_download_of_an_unknown_model_is_a_usage_error(hub: HubServer, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    done = models(capsys, "download", "no_such_model", "--models-dir", str(tmp_path))
    assert done.returncode == 2 and "no_such_model" in done.stderr and "tiny_vace_2_2" in done.stderr


# ---- run --download-missing ----------------------------------------------------------------------------------

def test_download_missing_fetches_a_tasks_model_and_lora_then_runs_it(
    hub: HubServer, tiny_models_dir: Path, sqlite_store: TaskStore, tmp_path: Path
) -> None:
    folder = tmp_path / "models"
    params = {"model": "tiny_t2v", "prompt": "a boat", "resolution": "32x32", "video_length": 5,
              "num_inference_steps": 2, "seed": 1, "lora_names": ["tiny_kohya"]}  # fmt: skip

    refused = sqlite_store.enqueue("generate_video", params)
    run_until_idle(sqlite_store, WorkerResources(device="cpu", models_dir=folder), tmp_path / "outputs")
    failed = sqlite_store.get(refused)
    assert failed.status == TaskStatus.FAILED
    assert f"wan-worker models download --lora tiny_kohya --models-dir {folder}" in failed.error_message
    assert hub.requests == []  # off by default

    task = sqlite_store.enqueue("generate_video", params)
    resources = WorkerResources(device="cpu", models_dir=folder, download_missing=True)
    run_until_idle(sqlite_store, resources, tmp_path / "outputs")
    done = sqlite_store.get(task)
    assert done.status == TaskStatus.COMPLETE, done.error_message
    assert done.result_data["phase_seconds"]["download"] > 0
    for name in ("tiny_t2v.safetensors", "tiny_vae.safetensors", "tiny_umt5.safetensors", "tiny_umt5/tokenizer.json",
                 "loras/tiny_kohya.safetensors"):  # fmt: skip
        assert same_bytes(folder / name, tiny_models_dir / name), name
