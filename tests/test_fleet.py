"""A fleet without a shared disk, through real workers: keyframes by URL from a local HTTP server,
artifacts to a local S3-compatible server, travel segments handed over between two workers that
share nothing but the table and the bucket."""
from __future__ import annotations

import os
import re
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import FAST_WORKER_FLAGS, wait_for
from fleet_servers import (  # noqa: F401 (fixtures)
    HoldingRelay,
    bucket,
    closed_port_url,
    file_server,
    s3,
    s3_endpoint,
    s3_env,
)
from test_inputs import png
from worker.inputs import InputFetcher
from worker.poller import Worker
from worker.resources import WorkerResources
from worker.store import Task, TaskStatus, TaskStore
from worker.travel.plan import plan_travel
from worker.video import VideoWriter, probe, read_video
from worker_harness import resources, run_until_idle, worker_config, write_keyframes  # noqa: F401 (resources is a fixture)


def travel(images: list[str]) -> dict:
    """Two segments of 9 frames sharing 2, 64x48, 2 steps: sized for the CPU."""
    return {"model": "tiny_vace", "images": images, "prompts": [f"part {i}" for i in range(len(images) - 1)],
            "resolution": "64x48", "fps": 8, "segment_frames": 9, "frame_overlap": 2, "seed": 3,
            "num_inference_steps": 2}


def box(store: TaskStore, resources, folder: Path, name: str, **settings: object) -> Worker:
    """A worker with disks of its own (output and cache folders) under `folder`."""
    config = worker_config(store, folder / "outputs", resources.models_dir, worker_id=name,
                           cache_dir=folder / "cache", **settings)
    return Worker(config, store, resources=resources)


def run_until_final(store: TaskStore, resources, folder: Path, task_id: str, **settings: object) -> Task:
    """Run a worker until the row ends (retries wait in run_after, so one idle pass is not enough)."""
    def final() -> Task | None:
        box(store, resources, folder, "box", **settings).run(exit_when_idle=True)
        task = store.get(task_id)
        return task if task.status in (TaskStatus.COMPLETE, TaskStatus.FAILED) else None

    return wait_for(final, timeout_seconds=60, what=f"task {task_id} to end")


def download(bucket: str, url: str, target: Path) -> Path:
    key = url.removeprefix(f"s3://{bucket}/")
    s3().download_file(bucket, key, str(target))
    return target


# ---- bad URLs and the cache, on the orchestrator (which fetches keyframes before creating children) ----

@pytest.mark.parametrize("bad, field, reason", [
    ("missing", "images[1]", r"/missing\.png: HTTP 404 Not Found"),
    ("oversized", "images[1]", r"/big\.png: announces 400000 bytes; the limit is 200000 bytes \(--max-input-bytes\)"),
    ("not_an_image", "images[1]", r"not a readable image"),
    ("unreachable", "images[1]", r"http://127\.0\.0\.1:\d+/gone\.png: ConnectError.*after 2 attempts.*attempt 2 of 2; giving up"),
])
def test_a_bad_keyframe_url_fails_the_job_at_once_naming_field_and_reason_and_the_worker_goes_on(
        sqlite_store: TaskStore, resources, tmp_path: Path, file_server, bad: str, field: str, reason: str) -> None:
    good = file_server.serve("/good.png", png((10, 200, 10)))
    urls = {
        "missing": file_server.url("/missing.png"),
        "oversized": file_server.serve("/big.png", b"\x89PNG" + b"0" * 399_996, content_type="image/png"),
        "not_an_image": file_server.serve("/page.png", b"<html>login first</html>", content_type="image/png"),
        "unreachable": closed_port_url("/gone.png"),
    }
    bad_job = sqlite_store.enqueue("travel_orchestrator", travel([good, urls[bad], good]), max_attempts=2)
    next_job = sqlite_store.enqueue("travel_orchestrator", travel([good, good]))
    settings = dict(task_types=("travel_orchestrator",), max_input_bytes=200_000, input_fetch_attempts=2)

    failed = run_until_final(sqlite_store, resources, tmp_path, bad_job, **settings)

    assert failed.status == TaskStatus.FAILED
    assert failed.error_message.split(": ", 2)[1] == field  # "<ErrorType>: <field>: <reason>"
    assert re.search(reason, failed.error_message), failed.error_message
    assert sqlite_store.children(bad_job) == []  # nothing was created for a job with a dead keyframe
    following = sqlite_store.get(next_job)
    assert following.status == TaskStatus.IN_PROGRESS and len(sqlite_store.children(next_job)) == 2  # parked


def test_generate_video_path_fields_take_urls_and_a_bad_one_fails_before_any_generation(
        sqlite_store: TaskStore, resources, tmp_path: Path, file_server, bucket: str) -> None:
    s3().put_object(Bucket=bucket, Key="in/guide.mp4", Body=b"not a video at all")
    good_ref = file_server.serve("/ref.png", png())
    base = {"model": "tiny_vace", "prompt": "a boat", "resolution": "32x32", "video_length": 5,
            "num_inference_steps": 2}
    cases = {
        "video_guide": {"video_guide": file_server.url("/nothing.mp4")},
        "video_mask2": {"video_mask2": f"s3://{bucket}/in/none.mp4"},
        "image_refs[1]": {"image_refs": [good_ref, file_server.serve("/page.png", b"<html></html>")]},
        "video_guide2": {"video_guide2": f"s3://{bucket}/in/guide.mp4"},
    }
    rows = {field: sqlite_store.enqueue("generate_video", {**base, **fields}) for field, fields in cases.items()}
    generations_before = resources.generations_completed

    box(sqlite_store, resources, tmp_path, "box").run(exit_when_idle=True)

    reasons = {field: sqlite_store.get(task_id).error_message for field, task_id in rows.items()}
    assert reasons["video_guide"] == f"ValidationError: video_guide: {file_server.url('/nothing.mp4')}: HTTP 404 Not Found"
    assert reasons["video_mask2"] == f"ValidationError: video_mask2: s3://{bucket}/in/none.mp4: NoSuchKey (HTTP 404)"
    assert reasons["image_refs[1]"].startswith("ValidationError: image_refs[1]: not a readable image")
    assert reasons["video_guide2"].startswith("ValidationError: video_guide2: not a readable video")
    assert all(sqlite_store.get(task_id).status == TaskStatus.FAILED for task_id in rows.values())
    assert resources.generations_completed == generations_before  # no engine time spent on any of them


def test_a_row_cancelled_while_its_input_trickles_in_stops_downloading_and_the_worker_goes_on(
        sqlite_store: TaskStore, resources, tmp_path: Path, file_server) -> None:
    """A guide arriving 16 bytes every 0.05 s would take minutes: cancelling the row stops the download."""
    slow = file_server.serve("/guide.mp4", b"x" * 100_000, trickle_seconds=0.05)
    base = {"model": "tiny_vace", "prompt": "a boat", "resolution": "32x32", "video_length": 5, "num_inference_steps": 2}
    stuck = sqlite_store.enqueue("generate_video", {**base, "video_guide": slow}, priority=1)
    after = sqlite_store.enqueue("generate_video", base)
    worker = box(sqlite_store, resources, tmp_path, "box")
    thread = threading.Thread(target=worker.run, kwargs={"exit_when_idle": True}, daemon=True)
    thread.start()
    wait_for(lambda: (sqlite_store.get(stuck).progress or {}).get("phase") == "download", timeout_seconds=30,
             what="the download")

    sqlite_store.cancel(stuck)
    thread.join(timeout=30)

    assert not thread.is_alive()
    assert sqlite_store.get(stuck).status == TaskStatus.CANCELLED
    assert sqlite_store.get(after).status == TaskStatus.COMPLETE
    assert not any((tmp_path / "cache" / "tmp").iterdir())


def test_the_same_keyframe_url_in_two_jobs_is_fetched_once(sqlite_store: TaskStore, resources, tmp_path: Path,
                                                           file_server) -> None:
    urls = [file_server.serve(f"/k{i}.png", png((60 * i, 20, 90))) for i in range(3)]
    first = sqlite_store.enqueue("travel_orchestrator", travel(urls))
    second = sqlite_store.enqueue("travel_orchestrator", {"orchestrator_details": {  # the headless form
        "model_name": "tiny_vace", "input_image_paths_resolved": list(reversed(urls)), "base_prompt": "a walk",
        "parsed_resolution_wh": "64x48", "segment_frames_expanded": [9, 9], "frame_overlap_expanded": [2, 2],
        "num_inference_steps": 2}})

    box(sqlite_store, resources, tmp_path, "box", task_types=("travel_orchestrator",)).run(exit_when_idle=True)

    assert [sqlite_store.get(job).status for job in (first, second)] == [TaskStatus.IN_PROGRESS] * 2
    assert {f"/k{i}.png": file_server.hits[f"/k{i}.png"] for i in range(3)} == {"/k0.png": 1, "/k1.png": 1, "/k2.png": 1}


# ---- two boxes, one travel job ----------------------------------------------------------------------------

def test_a_travel_job_runs_across_two_workers_sharing_no_disk(pg_store: TaskStore, resources, tmp_path: Path,
                                                             file_server, bucket: str) -> None:
    keyframes = write_keyframes(tmp_path / "uploads", 3)
    urls = [file_server.serve(f"/keys/{Path(path).name}", Path(path).read_bytes(), content_type="image/png")
            for path in keyframes]
    params = travel(urls)
    storage = {"storage_url": f"s3://{bucket}/jobs"}
    job = pg_store.enqueue("travel_orchestrator", params)

    # Box A plans the job and renders segment 0, then its disk disappears.
    for _ in ("orchestrator", "segment-0"):
        box(pg_store, resources, tmp_path / "a", "box-a", **storage).run(once=True)
    children = {child.params["child_key"]: child for child in pg_store.children(job)}
    first = children["segment-0"]
    assert (first.status, first.worker_id) == (TaskStatus.COMPLETE, "box-a"), first.error_message
    assert first.output_location == f"s3://{bucket}/jobs/{first.id}/segment-0.mp4"
    assert not list((tmp_path / "a" / "outputs").rglob("*.mp4"))  # uploaded, then removed
    shutil.rmtree(tmp_path / "a")

    # Box B renders segment 1 from segment 0's object and stitches both.
    box(pg_store, resources, tmp_path / "b", "box-b", **storage).run(exit_when_idle=True)

    orchestrator = pg_store.get(job)
    assert orchestrator.status == TaskStatus.COMPLETE, orchestrator.error_message
    children = {child.params["child_key"]: child for child in pg_store.children(job)}
    assert [children[key].worker_id for key in ("segment-1", "stitch")] == ["box-b", "box-b"]
    assert orchestrator.output_location == f"s3://{bucket}/jobs/{children['stitch'].id}/travel.mp4"
    assert orchestrator.result_data["thumbnail"] == f"s3://{bucket}/jobs/{children['stitch'].id}/travel.thumb.png"
    info = probe(download(bucket, orchestrator.output_location, tmp_path / "downloaded.mp4"))
    plan = plan_travel({**params, "images": keyframes})
    assert (info.frames, info.width, info.height) == (plan.expected_frames, 64, 48)
    # B read segment 0 from the bucket into its own cache, and fetched only the keyframe it needed.
    cache_b = InputFetcher(tmp_path / "b" / "cache", max_bytes=1, connect_timeout_seconds=1, read_timeout_seconds=1,
                           attempts=1)
    assert cache_b.cached(first.output_location) is not None
    assert [file_server.hits[f"/keys/key_{i}.png"] for i in range(3)] == [1, 1, 2]
    assert not list((tmp_path / "b" / "outputs").rglob("*.mp4"))
    assert orchestrator.result_data["phase_seconds"]["upload"] > 0  # three videos and thumbnails uploaded
    assert orchestrator.result_data["output_object_url"] == orchestrator.output_location


def test_a_video_edit_runs_across_two_workers_sharing_no_disk(pg_store: TaskStore, resources, tmp_path: Path,
                                                              file_server, bucket: str) -> None:
    """Box A reads the video by URL and publishes the parts it keeps to the bucket, then its disk goes;
    box B generates the portion's transition from those objects and stitches the edited video."""
    with VideoWriter(tmp_path / "source.mp4", 16, 32, 32) as writer:
        for k in range(24):
            writer.write(np.full((32, 32, 3), 9 * k, np.uint8))
    source = file_server.serve("/videos/source.mp4", (tmp_path / "source.mp4").read_bytes(), content_type="video/mp4")
    details = {"source_video_url": source, "source_video_fps": 16, "portions_to_regenerate": [
        {"start_frame": 10, "end_frame": 13, "gap_frame_count": 5}], "model": "tiny_vace_2_2", "prompt": "a fade",
        "context_frame_count": 2, "num_inference_steps": 2, "seed": 4}
    job = pg_store.enqueue("edit_video_orchestrator", {"orchestrator_details": details})
    storage = {"storage_url": f"s3://{bucket}/jobs"}

    box(pg_store, resources, tmp_path / "a", "box-a", **storage).run(once=True)
    assert pg_store.get(job).status == TaskStatus.IN_PROGRESS, pg_store.get(job).error_message
    stitch = next(child for child in pg_store.children(job) if child.task_type == "join_final_stitch")
    assert [clip["url"] for clip in stitch.params["clip_list"]] == [f"s3://{bucket}/jobs/{job}/keeper_{i}.mp4" for i in (0, 1)]
    shutil.rmtree(tmp_path / "a")

    box(pg_store, resources, tmp_path / "b", "box-b", **storage).run(exit_when_idle=True)
    orchestrator = pg_store.get(job)
    assert orchestrator.status == TaskStatus.COMPLETE, orchestrator.error_message
    assert orchestrator.output_location == f"s3://{bucket}/jobs/{stitch.id}/joined.mp4"
    edited = probe(download(bucket, orchestrator.output_location, tmp_path / "edited.mp4"))
    assert edited.frames == 10 + 5 + 10  # kept 0..9 and 14..23, 5 frames generated between them
    assert file_server.hits["/videos/source.mp4"] == 1


def test_a_missing_predecessor_object_is_retried_then_fails_naming_its_url(sqlite_store: TaskStore, resources,
                                                                         tmp_path: Path, bucket: str) -> None:
    job = sqlite_store.enqueue("travel_orchestrator", travel(write_keyframes(tmp_path / "keys", 3)), max_attempts=2)
    storage = {"storage_url": f"s3://{bucket}/jobs"}
    for _ in ("orchestrator", "segment-0"):
        box(sqlite_store, resources, tmp_path / "a", "box-a", **storage).run(once=True)
    children = {child.params["child_key"]: child for child in sqlite_store.children(job)}
    lost = children["segment-0"].output_location
    s3().delete_object(Bucket=bucket, Key=lost.removeprefix(f"s3://{bucket}/"))

    second = run_until_final(sqlite_store, resources, tmp_path / "b", children["segment-1"].id, **storage)

    assert second.status == TaskStatus.FAILED and second.attempts == 2
    assert second.error_message == (f"TransientError: previous_segment_task_id: {lost}: NoSuchKey (HTTP 404) "
                                    "(attempt 2 of 2; giving up)")


# ---- a worker killed in the middle of an upload ------------------------------------------------------------

def test_a_worker_killed_during_an_upload_leaves_no_object_and_the_retry_uploads_it_whole(
        sqlite_store: TaskStore, sqlite_url: str, resources, tmp_path: Path, bucket: str, s3_env: dict[str, str],
        s3_endpoint: str, start_worker) -> None:
    relay = HoldingRelay(int(s3_endpoint.rsplit(":", 1)[1]))
    relay.hold_puts.set()
    params = {"model": "tiny_t2v", "prompt": "a boat", "resolution": "32x32", "video_length": 5,
              "num_inference_steps": 2, "seed": 1}
    task_id = sqlite_store.enqueue("generate_video", params)
    key = f"out/{task_id}/video.mp4"

    worker = start_worker(sqlite_url, "--models-dir", str(resources.models_dir), "--device", "cpu",
                          "--storage-url", f"s3://{bucket}/out", *FAST_WORKER_FLAGS,
                          env={**s3_env, "AWS_ENDPOINT_URL": relay.url})
    wait_for(relay.put_held.is_set, timeout_seconds=120, what="the upload to start")
    assert "Contents" not in s3().list_objects_v2(Bucket=bucket)  # nothing visible while it is in flight
    worker.kill()  # SIGKILL
    worker.wait()
    relay.close()
    assert "Contents" not in s3().list_objects_v2(Bucket=bucket)

    # Once the killed worker's lease (1.5 s) runs out, the next worker's maintenance requeues the row.
    task = run_until_final(sqlite_store, resources, tmp_path / "second", task_id, lease_seconds=1.5,
                           storage_url=f"s3://{bucket}/out")

    assert task.status == TaskStatus.COMPLETE, task.error_message
    assert task.attempts == 2 and task.output_location == f"s3://{bucket}/{key}"
    info = probe(download(bucket, task.output_location, tmp_path / "video.mp4"))
    assert (info.frames, info.width, info.height) == (5, 32, 32)
    assert s3().head_object(Bucket=bucket, Key=key)["ContentLength"] == (tmp_path / "video.mp4").stat().st_size


# ---- LoRA files by URL ------------------------------------------------------------------------------------

def test_a_lora_named_by_url_is_fetched_into_the_loras_folder_and_applied(sqlite_store: TaskStore, resources,
                                                                         tmp_path: Path, file_server) -> None:
    models = tmp_path / "models"
    shutil.copytree(resources.models_dir, models, copy_function=os.link)  # a models folder of its own
    lora = (models / "loras" / "tiny_kohya.safetensors").read_bytes()
    url = file_server.serve("/loras/remote_style.safetensors?download=1", lora)
    base = {"model": "tiny_t2v", "prompt": "a boat", "resolution": "32x32", "video_length": 5,
            "num_inference_steps": 2, "seed": 4}
    plain = sqlite_store.enqueue("generate_video", base)
    styled = sqlite_store.enqueue("generate_video", {**base, "lora_names": [url], "lora_multipliers": ["1.0"]})
    local = sqlite_store.enqueue("generate_video", {**base, "lora_names": ["tiny_kohya"], "lora_multipliers": ["1.0"]})
    taken = sqlite_store.enqueue("generate_video", {**base, "lora_names": [file_server.serve(
        "/other/tiny_peft.safetensors", lora)]})

    run_until_idle(sqlite_store, WorkerResources(device="cpu", models_dir=models), tmp_path / "outputs")

    assert (models / "loras" / "remote_style.safetensors").read_bytes() == lora
    videos = {}
    for name, task_id in (("plain", plain), ("styled", styled), ("local", local)):
        task = sqlite_store.get(task_id)
        assert task.status == TaskStatus.COMPLETE, task.error_message
        videos[name] = read_video(task.output_location)
    assert np.array_equal(videos["styled"], videos["local"]) and not np.array_equal(videos["styled"], videos["plain"])
    failed = sqlite_store.get(taken)
    assert failed.status == TaskStatus.FAILED
    assert "lora_names[0]: " in failed.error_message and "exists with other content" in failed.error_message


def test_a_travel_jobs_lora_url_is_fetched_by_the_box_that_renders_its_segments(
        sqlite_store: TaskStore, resources, tmp_path: Path, file_server) -> None:
    """Box A plans the job (and fetches the LoRA to check it); box B, with a models folder of its own,
    renders the segments from their stored jobs, so it must fetch the LoRA itself."""
    folders = {}
    for name in ("a", "b"):
        folders[name] = tmp_path / name / "models"
        shutil.copytree(resources.models_dir, folders[name], copy_function=os.link)
    lora = (folders["a"] / "loras" / "tiny_kohya.safetensors").read_bytes()
    url = file_server.serve("/loras/travel_style.safetensors", lora)
    keyframes = write_keyframes(tmp_path / "keys", 3)
    job = sqlite_store.enqueue("travel_orchestrator", {**travel(keyframes), "lora_names": [url],
                                                       "lora_multipliers": ["0.8"]})
    box_resources = {name: WorkerResources(device="cpu", models_dir=folder) for name, folder in folders.items()}
    box(sqlite_store, box_resources["a"], tmp_path / "a", "box-a", task_types=("travel_orchestrator",)).run(
        exit_when_idle=True)
    assert not (folders["b"] / "loras" / "travel_style.safetensors").exists()
    box(sqlite_store, box_resources["b"], tmp_path / "b", "box-b").run(exit_when_idle=True)

    orchestrator = sqlite_store.get(job)
    assert orchestrator.status == TaskStatus.COMPLETE, orchestrator.error_message
    assert (folders["b"] / "loras" / "travel_style.safetensors").read_bytes() == lora
    segments = [child for child in sqlite_store.children(job) if child.task_type == "travel_segment"]
    assert {child.worker_id for child in segments} == {"box-b"}
    assert [child.result_data["parameters"]["lora_names"] for child in segments] == [[url], [url]]
    assert file_server.hits["/loras/travel_style.safetensors"] == 2  # once per box


def test_an_image_task_uploads_its_png_as_its_own_thumbnail_and_times_the_upload(
        sqlite_store: TaskStore, resources, tmp_path: Path, bucket: str) -> None:
    task_id = sqlite_store.enqueue("wan_2_2_t2i", {"model": "tiny_t2v_2_2", "prompt": "a lighthouse",
                                                   "resolution": "32x32", "steps": 2, "seed": 5})
    box(sqlite_store, resources, tmp_path, "box", storage_url=f"s3://{bucket}/images").run(exit_when_idle=True)
    task = sqlite_store.get(task_id)
    assert task.status == TaskStatus.COMPLETE, task.error_message
    assert task.output_location.startswith(f"s3://{bucket}/images/{task_id}/") and task.output_location.endswith(".png")
    assert task.result_data["thumbnail"] == task.result_data["output_object_url"] == task.output_location
    assert task.result_data["phase_seconds"]["upload"] > 0
    image = download(bucket, task.output_location, tmp_path / "image.png")
    assert Image.open(image).size == (32, 32)
