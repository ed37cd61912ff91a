"""Input images are decoded within a pixel limit and fitted as they are decoded; a truncated or
corrupt image, or a header claiming a huge size, fails the task at once naming the field; running
out of host memory is the permanent OutOfMemory, not a transient error."""
from __future__ import annotations

import struct
import zlib
from io import BytesIO
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
from PIL import Image

from conftest import store_url
from worker.config import WorkerConfig
from worker.errors import ValidationError
from worker.handlers import HandlerResult, TaskContext, load_handlers
from worker.poller import Worker
from worker.store import TaskStatus, TaskStore
from worker.video import DEFAULT_MAX_IMAGE_PIXELS, check_image, load_image, set_max_image_pixels
from worker_harness import resources, run_until_idle  # noqa: F401


def png_claiming(width: int, height: int) -> bytes:
    """A few hundred bytes whose header says width x height (the rest is one short row)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def truncated_png(folder: Path) -> Path:
    buffer = BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 96, 3), dtype=np.uint8)).save(buffer, format="PNG")
    path = folder / "truncated.png"
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    return path


@pytest.fixture
def pixel_limit() -> Iterator:
    yield set_max_image_pixels
    set_max_image_pixels(DEFAULT_MAX_IMAGE_PIXELS)


def test_a_header_claiming_100000_by_100000_is_refused_before_decoding(tmp_path: Path) -> None:
    path = tmp_path / "bomb.png"
    path.write_bytes(png_claiming(100_000, 100_000))
    for read in (lambda: check_image(path, "images[1]"), lambda: load_image(path, 64, 48, "images[1]")):
        with pytest.raises(ValidationError) as error:
            read()
        assert error.value.field == "images[1]" and "100000x100000" in error.value.rule


def test_a_truncated_png_is_a_validation_error_naming_the_field(tmp_path: Path) -> None:
    with pytest.raises(ValidationError) as error:
        load_image(truncated_png(tmp_path), 64, 48, "images[0]")
    assert error.value.field == "images[0]" and "not a readable image" in error.value.rule


def test_the_pixel_limit_is_a_setting(tmp_path: Path, pixel_limit) -> None:
    path = tmp_path / "wide.png"
    Image.new("RGB", (400, 300), (10, 200, 30)).save(path)
    pixel_limit(400 * 300)
    assert load_image(path, 64, 48).shape == (48, 64, 3)
    pixel_limit(400 * 300 - 1)
    with pytest.raises(ValidationError, match="the limit is 119999"):
        load_image(path, 64, 48)


def test_a_large_jpeg_is_fitted_while_decoded_with_the_same_result(tmp_path: Path) -> None:
    """Decoding at a reduced scale must give what fitting the full decode gives, within JPEG noise."""
    y, x = np.mgrid[0:1800, 0:2400]
    picture = np.stack([x * 255 // 2400, y * 255 // 1800, (x + y) * 255 // 4200], axis=-1).astype(np.uint8)
    path = tmp_path / "large.jpg"
    Image.fromarray(picture).save(path, quality=95)
    reference = np.asarray(Image.fromarray(picture).resize((160, 120), Image.Resampling.LANCZOS), dtype=np.float32)

    fitted = load_image(path, 160, 120)

    assert fitted.shape == (120, 160, 3)
    assert np.abs(fitted.astype(np.float32) - reference).mean() < 3.0


def test_a_bad_image_fails_a_generation_at_once_naming_the_field(store: TaskStore, resources, tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_claiming(100_000, 100_000))
    params = {"model": "tiny_vace_2_2", "prompt": "a boat", "resolution": "32x32", "video_length": 5,
              "num_inference_steps": 1}
    ids = {store.enqueue("vace", {**params, "image_refs": [str(path)]}): field
           for path, field in ((bomb, "image_refs[0]"), (truncated_png(tmp_path), "image_refs[0]"))}

    run_until_idle(store, resources, tmp_path / "outputs")

    for task_id, field in ids.items():
        task = store.get(task_id)
        assert (task.status, task.attempts) == (TaskStatus.FAILED, 1), task.error_message
        assert task.error_message.startswith(f"ValidationError: {field}: ")


def allocates_too_much(ctx: TaskContext) -> HandlerResult:
    """A real allocation the host cannot satisfy, through numpy (MemoryError) or torch's CPU allocator."""
    if ctx.task.params["through"] == "numpy":
        np.empty(2**50, dtype=np.uint8)
    else:
        import torch
        torch.empty(2**50, dtype=torch.uint8)
    return HandlerResult()


def test_host_out_of_memory_fails_the_task_at_once_as_out_of_memory(store: TaskStore, tmp_path: Path) -> None:
    ids = [store.enqueue("allocates_too_much", {"through": through}) for through in ("numpy", "torch")]
    config = WorkerConfig(database_url=store_url(store), worker_id="w", output_dir=tmp_path, poll_seconds=0.05,
                          notify_wakeups=False, retry_base_seconds=0.05, retry_max_seconds=0.1)
    Worker(config, store, handlers={**load_handlers(), "allocates_too_much": allocates_too_much}).run(exit_when_idle=True)

    for task_id in ids:
        task = store.get(task_id)
        assert (task.status, task.attempts) == (TaskStatus.FAILED, 1), task.error_message
        assert task.error_message.startswith("OutOfMemory: host memory exhausted: ")
