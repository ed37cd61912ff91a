"""Artifact uploads (worker/storage.py) to a real S3-compatible server on 127.0.0.1 through boto3."""
from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest

from fleet_servers import bucket, get_object, s3, s3_endpoint, s3_env  # noqa: F401 (fixtures)
from worker.config import WorkerConfig, load_config
from worker.errors import TransientError
from worker.storage import OutputStorage


def artifacts(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True)
    video, thumbnail = folder / "video.mp4", folder / "video.thumb.png"
    video.write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(5000))
    thumbnail.write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(100))
    return {"output": video, "thumbnail": thumbnail}


def test_without_storage_the_local_paths_are_the_locations(tmp_path: Path) -> None:
    files = artifacts(tmp_path / "task-1")
    assert OutputStorage().publish("task-1", files) == {name: str(path) for name, path in files.items()}
    assert all(path.is_file() for path in files.values())


def test_artifacts_go_under_prefix_task_file_with_their_content_type(tmp_path: Path, bucket: str) -> None:
    files = artifacts(tmp_path / "task-1")
    expected = {name: path.read_bytes() for name, path in files.items()}

    fields = OutputStorage(f"s3://{bucket}/runs/a").publish("task-1", files)

    assert fields == {
        "output": f"s3://{bucket}/runs/a/task-1/video.mp4",
        "output_object_url": f"s3://{bucket}/runs/a/task-1/video.mp4",
        "thumbnail": f"s3://{bucket}/runs/a/task-1/video.thumb.png",
        "thumbnail_object_url": f"s3://{bucket}/runs/a/task-1/video.thumb.png",
    }
    assert get_object(bucket, "runs/a/task-1/video.mp4") == expected["output"]
    assert get_object(bucket, "runs/a/task-1/video.thumb.png") == expected["thumbnail"]
    assert s3().head_object(Bucket=bucket, Key="runs/a/task-1/video.mp4")["ContentType"] == "video/mp4"
    assert s3().head_object(Bucket=bucket, Key="runs/a/task-1/video.thumb.png")["ContentType"] == "image/png"
    assert not (tmp_path / "task-1").exists()  # local copies and the emptied folder are gone


def test_keep_local_keeps_the_files(tmp_path: Path, bucket: str) -> None:
    files = artifacts(tmp_path / "task-2")
    OutputStorage(f"s3://{bucket}", keep_local=True).publish("task-2", files)
    assert all(path.is_file() for path in files.values())
    assert get_object(bucket, "task-2/video.mp4") == files["output"].read_bytes()


def test_public_and_presigned_urls(tmp_path: Path, bucket: str) -> None:
    files = artifacts(tmp_path / "task-3")
    video = files["output"].read_bytes()

    fields = OutputStorage(f"s3://{bucket}/p", public_url="https://cdn.example/videos/",
                           presign_seconds=600).publish("task-3", files)

    assert fields["output"] == "https://cdn.example/videos/task-3/video.mp4"
    assert fields["output_object_url"] == f"s3://{bucket}/p/task-3/video.mp4"
    presigned = httpx.get(fields["output_presigned_url"])  # a plain GET, no credentials
    assert presigned.status_code == 200 and presigned.content == video
    assert "X-Amz-Expires=600" in fields["output_presigned_url"]


def test_a_large_file_is_uploaded_in_parts_and_arrives_whole(tmp_path: Path, bucket: str) -> None:
    big = tmp_path / "task-4" / "travel.mp4"
    big.parent.mkdir()
    big.write_bytes(os.urandom(7 * 1024**2))
    expected = big.read_bytes()
    storage = OutputStorage(f"s3://{bucket}", multipart_threshold_bytes=6 * 1024**2,
                            multipart_chunk_bytes=5 * 1024**2)

    storage.publish("task-4", {"output": big})

    assert s3().head_object(Bucket=bucket, Key="task-4/travel.mp4")["ETag"].endswith('-2"')  # 2 parts
    assert get_object(bucket, "task-4/travel.mp4") == expected


def test_publishing_twice_overwrites_the_same_object(tmp_path: Path, bucket: str) -> None:
    storage = OutputStorage(f"s3://{bucket}")
    storage.publish("task-5", artifacts(tmp_path / "first"))
    second = artifacts(tmp_path / "second")
    latest = second["output"].read_bytes()
    storage.publish("task-5", second)
    listed = s3().list_objects_v2(Bucket=bucket, Prefix="task-5/")["Contents"]
    assert sorted(item["Key"] for item in listed) == ["task-5/video.mp4", "task-5/video.thumb.png"]
    assert get_object(bucket, "task-5/video.mp4") == latest


def test_a_failed_upload_is_transient_and_keeps_the_local_files(tmp_path: Path, s3_env) -> None:
    files = artifacts(tmp_path / "task-6")
    with pytest.raises(TransientError, match=r"upload of video\.mp4 to s3://no-such-bucket-here/task-6/video\.mp4 failed"):
        OutputStorage("s3://no-such-bucket-here").publish("task-6", files)
    assert all(path.is_file() for path in files.values())


def test_storage_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="not an s3://bucket/key URL"):
        WorkerConfig(storage_url="https://bucket/prefix")
    with pytest.raises(ValueError, match="storage_presign_seconds"):
        WorkerConfig(storage_url="s3://b/p", storage_presign_seconds=700_000)


def test_fleet_settings_come_from_the_environment() -> None:
    config = load_config(environ={"WAN_WORKER_STORAGE_URL": "s3://bucket/videos", "WAN_WORKER_KEEP_LOCAL": "yes",
                                  "WAN_WORKER_STORAGE_PRESIGN_SECONDS": "3600", "WAN_WORKER_MODELS_DIR": "/m",
                                  "WAN_WORKER_MAX_INPUT_BYTES": "1000"})
    assert (config.storage_url, config.keep_local, config.storage_presign_seconds) == ("s3://bucket/videos", True, 3600)
    assert (config.input_cache_dir, config.max_input_bytes) == (Path("/m/cache"), 1000)
