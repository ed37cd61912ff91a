"""`generate_video` and its aliases through a real worker and the resident engine on the tiny models:
outputs, result_data, control inputs from paths, bad params, progress, cancellation, out-of-memory."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import wait_for
from fault_injection import faults
from worker.errors import ValidationError
from worker.dialects import sampling
from worker.generation import DEFAULT_MODELS
from worker.params import ParamReader
from worker.resources import WorkerResources
from worker.store import TaskStatus, TaskStore
from worker.video import VideoWriter, probe, read_video
from worker_harness import BackgroundWorker, background_workers, resources, run_until_idle, write_keyframes  # noqa: F401

SIZE = {"resolution": "32x32", "video_length": 5, "num_inference_steps": 2}


def t2v(**fields: object) -> dict:
    return {"model": "tiny_t2v", "prompt": "a red car on a coast road", "seed": 5, **SIZE, **fields}


def run(store: TaskStore, resources, tmp_path: Path, task_type: str, params: dict):
    task_id = store.enqueue(task_type, params)
    run_until_idle(store, resources, tmp_path / "outputs")
    return store.get(task_id)


def write_video(path: Path, frames: np.ndarray, fps: int = 8) -> str:
    with VideoWriter(path, fps, frames.shape[2], frames.shape[1]) as writer:
        writer.write(frames)
    return str(path)


# ---- outputs and result_data -----------------------------------------------------------------------------

def test_a_generation_writes_an_mp4_of_the_requested_shape_and_a_thumbnail(sqlite_store: TaskStore, resources, tmp_path: Path) -> None:
    task = run(sqlite_store, resources, tmp_path, "t2v", t2v(fps=12))

    assert task.status == TaskStatus.COMPLETE, task.error_message
    assert Path(task.output_location) == (tmp_path / "outputs" / task.id / "video.mp4").resolve()
    info = probe(task.output_location)
    assert (info.frames, info.width, info.height, info.fps) == (5, 32, 32, 12)
    assert Path(task.result_data["thumbnail"]).is_file()


def test_result_data_names_model_seed_parameters_with_sources_and_phase_seconds(sqlite_store: TaskStore, resources,
                                                                                tmp_path: Path) -> None:
    result = run(sqlite_store, resources, tmp_path, "generate_video", t2v(guidance_scale=3.0)).result_data

    assert (result["model"], result["preset"], result["seed"]) == ("tiny_t2v", None, 5)
    assert result["parameters"]["guidance_scale"] == 3.0 and result["parameter_sources"]["guidance_scale"] == "request"
    assert result["parameter_sources"]["sample_solver"] in ("definition", "family")
    assert result["parameter_sources"]["seed"] == "task" and result["parameter_sources"]["fps"] == "default"
    assert {"queue_wait", "model_load", "text_encode", "denoise_main", "decode", "video_encode"} <= set(result["phase_seconds"])
    assert all(seconds >= 0 for seconds in result["phase_seconds"].values())


def test_a_definitions_resolution_length_and_negative_prompt_fill_what_the_row_leaves_out(
        sqlite_store: TaskStore, resources: WorkerResources, tmp_path: Path) -> None:
    """Wan2GP applies a definition's resolution, video_length and negative_prompt to what a row leaves
    out (MoviiGen's 1280x720); the row's own values still win, and the sources say which is which."""
    models = tmp_path / "models"
    shutil.copytree(resources.models_dir, models, copy_function=os.link)
    (models / "finetunes").mkdir()
    (models / "finetunes" / "wide_tiny.json").write_text(json.dumps({
        "model": {"name": "Wide tiny", "architecture": "tiny_t2v", "URLs": "tiny_t2v"},
        "resolution": "48x32", "video_length": 9, "negative_prompt": "blur", "num_inference_steps": 2}))
    here = WorkerResources(device="cpu", models_dir=models)
    bare = sqlite_store.enqueue("t2v", {"model": "wide_tiny", "prompt": "a red car", "seed": 5})
    own = sqlite_store.enqueue("t2v", {"model": "wide_tiny", "prompt": "a red car", "seed": 5, **SIZE,
                                       "negative_prompt": ""})
    bad = sqlite_store.enqueue("t2v", {"model": "wide_tiny", "prompt": "a red car", "video_length": 0})
    run_until_idle(sqlite_store, here, tmp_path / "outputs")

    task = sqlite_store.get(bare)
    assert task.status == TaskStatus.COMPLETE, task.error_message
    info = probe(task.output_location)
    assert (info.width, info.height, info.frames) == (48, 32, 9)
    sources = task.result_data["parameter_sources"]
    assert sources["width"] == sources["video_length"] == "definition"
    assert task.result_data["parameters"]["negative_prompt"] == "blur"
    task = sqlite_store.get(own)
    assert (probe(task.output_location).width, task.result_data["parameter_sources"]["width"]) == (32, "task")
    assert (task.result_data["parameters"]["negative_prompt"], task.result_data["parameter_sources"]["negative_prompt"]) == (
        "", "task (blank)")
    assert "video_length: must be" in sqlite_store.get(bad).error_message

    (models / "finetunes" / "wide_tiny.json").write_text(json.dumps({
        "model": {"name": "Broken", "architecture": "tiny_t2v", "URLs": "tiny_t2v"}, "resolution": "wide"}))
    broken = sqlite_store.enqueue("t2v", {"model": "wide_tiny", "prompt": "a red car"})
    run_until_idle(sqlite_store, WorkerResources(device="cpu", models_dir=models), tmp_path / "outputs")
    assert "resolution (from the definition of wide_tiny)" in sqlite_store.get(broken).error_message


def test_video_length_is_rounded_down_to_4n_plus_1_and_the_rounding_recorded(sqlite_store: TaskStore, resources,
                                                                             tmp_path: Path) -> None:
    task = run(sqlite_store, resources, tmp_path, "t2v", t2v(video_length=8))

    assert probe(task.output_location).frames == 5
    assert "8 rounded down" in task.result_data["parameter_sources"]["video_length"]


def test_seed_minus_one_draws_a_seed_and_records_it(sqlite_store: TaskStore, resources, tmp_path: Path) -> None:
    result = run(sqlite_store, resources, tmp_path, "t2v", t2v(seed=-1)).result_data

    assert 0 <= result["seed"] < 2**32
    assert result["parameter_sources"]["seed"].startswith("random")


@pytest.mark.parametrize("task_type", sorted(DEFAULT_MODELS))
def test_each_task_type_runs_its_default_model_when_the_row_names_none(sqlite_store: TaskStore, resources, tmp_path: Path,
                                                                       task_type: str) -> None:
    params = {"prompt": "a boat", "lora_names": [], **SIZE}  # no LoRAs: the cocktail's own are not here either
    if task_type in ("i2v", "i2v_22"):  # an image-to-video model takes its first frame
        params["image_start"] = write_keyframes(tmp_path / "keys", 1, size=(32, 32))[0]

    task = run(sqlite_store, resources, tmp_path, task_type, params)

    # No real weights here: the engine names the default model and the files it looked for.
    assert task.status == TaskStatus.FAILED and task.attempts == 1
    assert f"model {DEFAULT_MODELS[task_type]!r} needs files" in task.error_message


def test_a_headless_i2v_row_runs_wan21_image_to_video_from_its_start_image(sqlite_store: TaskStore, resources,
                                                                           tmp_path: Path) -> None:
    """The headless worker's `i2v` task type (Wan 2.1 image-to-video, with CLIP) on the tiny model."""
    params = {"prompt": "a boat", "model": "tiny_i2v", "image_start": write_keyframes(tmp_path / "keys", 1, size=(40, 40))[0],
              "num_inference_steps": 2, **SIZE}
    task = run(sqlite_store, resources, tmp_path, "i2v", params)
    assert task.status == TaskStatus.COMPLETE, task.error_message
    assert task.result_data["model"] == "tiny_i2v" and task.result_data["phase_seconds"]["image_encode"] > 0
    assert task.result_data["ignored_params"] == {}


# ---- control inputs from paths -----------------------------------------------------------------------------

def test_guide_mask_and_reference_paths_reach_the_engine(sqlite_store: TaskStore, resources, tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    guides = [write_video(tmp_path / f"guide_{i}.mp4", rng.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)) for i in range(2)]
    mask = np.full((5, 32, 32, 3), 255, np.uint8)
    mask[0] = 0  # keep the first frame
    mask_path = write_video(tmp_path / "mask.mp4", mask)
    reference = write_keyframes(tmp_path / "refs", 1, size=(40, 24))[0]

    def vace(guide: str) -> np.ndarray:
        params = t2v(model="tiny_vace", video_guide=guide, video_mask=mask_path, image_refs=[reference])
        task = run(sqlite_store, resources, tmp_path, "vace", params)
        assert task.status == TaskStatus.COMPLETE, task.error_message
        return read_video(task.output_location).astype(np.int16)

    first, again, other = vace(guides[0]), vace(guides[0]), vace(guides[1])

    assert np.array_equal(first, again)  # same inputs and seed: the same video
    assert np.abs(first - other).mean() > 1.0  # another guide: another video


def test_a_guide_of_another_size_fails_naming_video_guide(sqlite_store: TaskStore, resources, tmp_path: Path) -> None:
    guide = write_video(tmp_path / "guide.mp4", np.zeros((5, 48, 64, 3), np.uint8))

    task = run(sqlite_store, resources, tmp_path, "vace", t2v(model="tiny_vace", video_guide=guide))

    assert task.status == TaskStatus.FAILED and task.attempts == 1
    assert "video_guide: is 64x48" in task.error_message


def test_lora_multipliers_without_lora_names_reweight_the_definitions_loras() -> None:
    """Multipliers alone apply to the model definition's LoRAs (the engine counts those); only next
    to the task's own lora_names can the worker count them itself."""
    assert sampling(ParamReader({"lora_multipliers": ["1", "0.2;0", "0.5"]}), {})["lora_multipliers"] == ["1", "0.2;0", "0.5"]
    with pytest.raises(ValidationError) as error:
        sampling(ParamReader({"lora_names": ["CausVid"], "lora_multipliers": ["1", "0.5"]}), {})
    assert error.value.field == "lora_multipliers"


@pytest.mark.parametrize("fields, field", [
    ({"resolution": "30x30"}, "resolution"),
    ({"video_length": "many"}, "video_length"),
    ({"prompt": None}, "prompt"),
    ({"model": "wan9"}, "model"),
    ({"guidance_scale": "high"}, "guidance_scale"),
    ({"sample_solver": "magic"}, "sample_solver"),
    ({"output_filename": "../../escape.mp4"}, "output_filename"),
    ({"video_guide": "/nowhere/guide.mp4"}, "video_guide"),
    ({"lora_names": ["no_such_lora"]}, "lora_names"),
])
def test_bad_params_fail_at_once_naming_the_field(store: TaskStore, resources, tmp_path: Path, fields: dict, field: str) -> None:
    task = run(store, resources, tmp_path, "t2v", t2v(**fields))

    assert task.status == TaskStatus.FAILED and task.attempts == 1
    assert f"{field}" in task.error_message
    assert not list((tmp_path / "outputs").rglob("*.mp4"))


def test_a_guide_that_is_a_playlist_fails_naming_the_field(sqlite_store: TaskStore, resources, tmp_path: Path) -> None:
    """An HLS playlist would make ffmpeg read the files it lists, wherever they are (worker.video)."""
    clip = write_video(tmp_path / "clip.mp4", np.zeros((5, 32, 32, 3), np.uint8))
    guide = tmp_path / "guide.m3u8"
    guide.write_text(f"#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:1.0,\nfile://{clip}\n#EXT-X-ENDLIST\n")
    task = run(sqlite_store, resources, tmp_path, "vace", t2v(model="tiny_vace", video_guide=str(guide)))

    assert task.status == TaskStatus.FAILED and task.attempts == 1
    assert task.error_message.startswith("ValidationError: video_guide: ")
    assert "not a media file of a format this worker reads" in task.error_message


# ---- progress, cancellation, out-of-memory -------------------------------------------------------------------

def test_progress_rows_show_each_denoising_step_with_an_eta_while_it_runs(store: TaskStore, resources, tmp_path: Path,
                                                                          background_workers) -> None:
    task_id = store.enqueue("t2v", t2v(num_inference_steps=1000))
    background_workers.append(BackgroundWorker(store, resources, tmp_path / "outputs"))
    seen: list[dict] = []

    def two_progress_rows() -> bool:
        progress = store.get(task_id).progress
        if progress and progress.get("phase") == "denoise" and (not seen or progress["step"] != seen[-1]["step"]):
            seen.append(progress)
        return len(seen) >= 2

    wait_for(two_progress_rows, timeout_seconds=60, what="two progress rows")
    store.cancel(task_id)

    assert seen[0]["step"] < seen[1]["step"] <= 1000
    assert (seen[1]["steps"], seen[1]["expert"]) == (1000, "main")
    assert seen[1]["percent"] == pytest.approx(100 * seen[1]["step"] / 1000, abs=0.1)
    assert seen[1]["eta_seconds"] > 0


def test_cancelling_a_running_generation_ends_it_cancelled_with_no_output(store: TaskStore, resources, tmp_path: Path,
                                                                         background_workers) -> None:
    task_id = store.enqueue("t2v", t2v(num_inference_steps=1000), priority=1)
    next_id = store.enqueue("t2v", t2v())
    running = BackgroundWorker(store, resources, tmp_path / "outputs")
    background_workers.append(running)
    wait_for(lambda: (store.get(task_id).progress or {}).get("phase") == "denoise", timeout_seconds=60, what="denoising")

    store.cancel(task_id)
    running.join()

    task = store.get(task_id)
    assert task.status == TaskStatus.CANCELLED and task.output_location is None
    assert not (tmp_path / "outputs" / task_id / "video.mp4").exists()
    assert store.get(next_id).status == TaskStatus.COMPLETE  # the worker and its engine carry on


def test_out_of_memory_twice_fails_the_task_and_the_model_stays_loaded(sqlite_store: TaskStore, resources, tmp_path: Path) -> None:
    run(sqlite_store, resources, tmp_path, "t2v", t2v())  # tiny_t2v resident
    faults(resources.engine).oom = 2  # the attempt and its retry under the memory-saving policy

    failed = run(sqlite_store, resources, tmp_path, "t2v", t2v())
    after = run(sqlite_store, resources, tmp_path, "t2v", t2v())

    assert failed.status == TaskStatus.FAILED and failed.attempts == 1
    assert "OutOfMemory" in failed.error_message and "ran out of memory twice" in failed.error_message
    assert after.status == TaskStatus.COMPLETE and after.result_data["phase_seconds"]["model_load"] == 0.0
