"""`wan-worker demo`: the whole main job on a laptop, with nothing but the project installed.

It writes the tiny Wan models (random weights, real architectures) into a folder, opens an
embedded SQLite table there, draws three distinct keyframes, inserts one `travel_orchestrator` row
exactly as a backend would, runs a worker in this process until the queue is idle, and prints the
final video, its thumbnail and the stats table. The travel goes through every real part: plan,
children, VACE segments chained by their overlap, cross-faded stitch, result rows.
"""
from __future__ import annotations

import argparse
import shlex
import shutil
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from worker.config import WorkerConfig
from worker.db import connect
from worker.migrate import migrate
from worker.stats import collect_stats, format_stats
from worker.store import TaskStatus, TaskStore
from worker.video import probe

DEMO_MODEL = "tiny_vace_2_2"
DEMO_RESOLUTION = (128, 80)
KEYFRAME_SIZE = (160, 96)  # drawn a little larger than the video: the worker fits them (centre crop)


def keyframe(index: int, size: tuple[int, int] = KEYFRAME_SIZE) -> np.ndarray:
    """A synthetic landscape: sky gradient, a sun that climbs and moves right with `index`, hills.
    uint8 [H, W, 3]; every index gives a visibly different picture."""
    width, height = size
    palettes = [((255, 170, 90), (60, 40, 120)), ((120, 190, 255), (20, 80, 200)), ((250, 120, 60), (40, 20, 60))]
    top, bottom = (np.array(colour, dtype=np.float32) for colour in palettes[index % len(palettes)])
    t = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
    sky = (top * (1 - t) + bottom * t) * np.ones((1, width, 1), dtype=np.float32)
    image = Image.fromarray(sky.astype(np.uint8))
    draw = ImageDraw.Draw(image)
    sun_x = width * (0.2 + 0.3 * index)
    sun_y = height * (0.55 - 0.15 * index)
    radius = height * 0.12
    draw.ellipse([sun_x - radius, sun_y - radius, sun_x + radius, sun_y + radius], fill=(255, 240, 120))
    hills = [(x, height * (0.7 + 0.08 * np.sin(x / width * 6.0 + index))) for x in range(0, width + 8, 8)]
    draw.polygon([(0, height), *hills, (width, height)], fill=(30 + 40 * index, 110, 50))
    return np.asarray(image)


def write_keyframes(folder: Path, count: int = 3) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        path = folder / f"keyframe_{index}.png"
        Image.fromarray(keyframe(index)).save(path)
        paths.append(path.resolve())
    return paths


def travel_params(images: list[Path], model: str, steps: int) -> dict:
    """The row a backend would insert (README: "A travel job from SQL"), sized for a CPU."""
    width, height = DEMO_RESOLUTION
    return {
        "model": model,
        "images": [str(path) for path in images],
        "prompts": ["dawn breaks over the hills, the sun rises", "the sun climbs into a clear noon sky"],
        "negative_prompt": "blurry, low quality",
        "resolution": f"{width}x{height}",
        "fps": 8,
        "segment_frames": 17,
        "frame_overlap": 4,
        "seed": 2024,
        "num_inference_steps": steps,
    }


def wan_worker_command() -> str:
    """How this user can run wan-worker: the name when it is on PATH, else the script installed beside
    this Python (e.g. .venv/bin/wan-worker), else `python -m worker.cli`."""
    on_path = shutil.which("wan-worker")
    beside = Path(sys.executable).parent / "wan-worker"
    if on_path is not None and Path(on_path).resolve() == beside.resolve():
        return "wan-worker"
    if beside.is_file():
        return shlex.quote(str(beside))
    return f"{shlex.quote(sys.executable)} -m worker.cli"


def demo_command(args: argparse.Namespace, config: WorkerConfig) -> int:
    """Run the demo; exit 0 when the travel video was made."""
    from wan_engine.testing import write_tiny_models
    from worker.poller import Worker

    folder = args.dir.resolve()
    started = time.perf_counter()
    print(f"demo folder: {folder}")
    models_dir = folder / "models"
    write_tiny_models(models_dir)
    print(f"tiny models written to {models_dir}")
    database_url = f"sqlite:///{folder / 'demo.db'}"
    db = connect(database_url)
    migrate(db)
    store = TaskStore(db)
    images = write_keyframes(folder / "keyframes")
    orchestrator_id = store.enqueue("travel_orchestrator", travel_params(images, args.model, args.steps))
    print(f"inserted travel_orchestrator {orchestrator_id} ({len(images)} keyframes -> {len(images) - 1} segments)")

    worker_config = WorkerConfig(
        database_url=database_url, models_dir=models_dir, output_dir=folder / "outputs", device=config.device or "cpu",
        worker_id="demo", poll_seconds=0.2, notify_wakeups=False, log_format=config.log_format, log_level=config.log_level,
    )
    try:
        Worker(worker_config, store).run(exit_when_idle=True)
        orchestrator = store.get(orchestrator_id)
        assert orchestrator is not None
        if orchestrator.status != TaskStatus.COMPLETE:
            print(f"the travel job ended {orchestrator.status}: {orchestrator.error_message}")
            return 1
        info = probe(orchestrator.output_location)
        result = orchestrator.result_data or {}
        print()
        print(f"video:     {orchestrator.output_location}")
        print(f"           {info.frames} frames, {info.width}x{info.height}, {info.fps:g} fps")
        print(f"thumbnail: {result.get('thumbnail')}")
        print(f"segments:  {', '.join(segment['output_location'] for segment in result.get('segments', []))}")
        print(f"wall time: {time.perf_counter() - started:.1f} s")
        print()
        print(format_stats(collect_stats(db)))
        print()
        print(f"next: {wan_worker_command()} stats --database-url {database_url}")
        return 0
    finally:
        db.dispose()
