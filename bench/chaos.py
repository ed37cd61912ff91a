"""Fault timings: travel, join-clips and edit-video jobs on the tiny model while real `wan-worker run` processes
are killed (SIGKILL) at random moments, and optionally Postgres is restarted, then a check that each
job still ends as one complete video of the planned length with one set of children.

    .venv/bin/python bench/chaos.py                                      # throwaway database, 6 jobs
    .venv/bin/python bench/chaos.py --kinds join --trials 8              # join_clips_orchestrator jobs only
    .venv/bin/python bench/chaos.py --trials 20 --seed 7 \\
        --restart-postgres "pg_ctlcluster --skip-systemctl-redirect 16 main restart"
    .venv/bin/python bench/chaos.py --database-url sqlite:////tmp/chaos.db

Prints one JSON line per job (what was killed when, the attempts of each child, the outcome) and a
summary. A job whose segment was killed on every one of its `max_attempts` (3) claims ends Failed
("lease expired on attempt 3 of 3"), as the lease contract says; the summary counts those apart.
"""
from __future__ import annotations

import argparse
import json
import random
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import numpy as np
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "bench"))

from task_queue import ADMIN_URL, throwaway_postgres  # noqa: E402 (a sibling bench script)
from wan_engine.testing import write_tiny_models  # noqa: E402
from worker.db import connect  # noqa: E402
from worker.migrate import migrate  # noqa: E402
from worker.store import TaskStatus, TaskStore  # noqa: E402
from worker.travel.plan import plan_travel  # noqa: E402
from worker.video import VideoWriter, probe  # noqa: E402

FAST_FLAGS = ("--lease-seconds", "1.5", "--heartbeat-seconds", "0.3", "--poll-seconds", "0.2",
              "--maintenance-seconds", "0.3", "--retry-base-seconds", "0.05", "--retry-max-seconds", "0.2")
ENDED = (TaskStatus.COMPLETE, TaskStatus.FAILED, TaskStatus.CANCELLED)


def keyframes(folder: Path, count: int) -> list[str]:
    paths = []
    for i in range(count):
        path = folder / f"key{i}.png"
        Image.fromarray(np.full((48, 64, 3), (40 * i, 200 - 30 * i, 90), np.uint8)).save(path)
        paths.append(str(path))
    return paths


def travel_job(folder: Path, rng: random.Random) -> tuple[str, dict, list[str], int]:
    """A travel job of 3-4 keyframes: (task type, params, the child keys it plans, the frames it makes)."""
    count = rng.choice([3, 4])
    params = {"model": "tiny_vace_2_2", "images": keyframes(folder, count), "prompt": "a walk",
              "resolution": "64x48", "fps": 8, "segment_frames": rng.choice([9, 13]), "frame_overlap": 2,
              "seed": rng.randrange(1000), "num_inference_steps": 4}
    children = [f"segment-{i}" for i in range(count - 1)] + ["stitch"]
    return "travel_orchestrator", params, children, plan_travel(params).expected_frames


def join_job(folder: Path, rng: random.Random, trial: int) -> tuple[str, dict, list[str], int]:
    """A join of 3 clips in the app's form, replacing or inserting: context 2 + gap 5 + context 2 is
    already 4n+1, so a replacing join keeps the clips' length and an inserting one adds 5 per join."""
    lengths = [rng.randrange(12, 20) for _ in range(3)]
    clips = []
    for i, frames in enumerate(lengths):
        path = folder / f"clip{trial}-{i}.mp4"
        with VideoWriter(path, 16, 64, 48) as writer:
            for k in range(frames):
                writer.write(np.full((48, 64, 3), (60 * i + 4 * k, 90, 200 - 50 * i), np.uint8))
        clips.append(str(path))
    replace = rng.random() < 0.5
    details = {"clip_list": [{"url": path, "name": f"Clip {i + 1}"} for i, path in enumerate(clips)],
               "prompt": "", "gap_frame_count": 5, "context_frame_count": 2, "replace_mode": replace,
               "model": "tiny_vace_2_2", "num_inference_steps": 4, "seed": rng.randrange(1000), "fps": 16}
    children = ["join-0", "join-1", "stitch"]
    return "join_clips_orchestrator", {"orchestrator_details": details}, children, sum(lengths) + (0 if replace else 5 * 2)


def edit_job(folder: Path, rng: random.Random, trial: int) -> tuple[str, dict, list[str], int]:
    """An edit of a 36-47 frame video in the app's form, one or two portions regenerated, each a gap of
    1, 5 or 9 frames between contexts of 2 (already 4n+1): the portion's frames (inclusive) give way
    to its gap."""
    total = rng.randrange(36, 48)
    path = folder / f"source{trial}.mp4"
    with VideoWriter(path, 16, 64, 48) as writer:
        for k in range(total):
            writer.write(np.full((48, 64, 3), (5 * k, 120, 40), np.uint8))
    portions = []
    for start, end in [(8, rng.randrange(10, 16)), (24, rng.randrange(26, 30))][:rng.choice([1, 2])]:
        portions.append({"start_frame": start, "end_frame": end, "frame_count": end - start,
                         "gap_frame_count": rng.choice([1, 5, 9])})
    details = {"source_video_url": str(path), "source_video_fps": 16, "source_video_total_frames": total,
               "portions_to_regenerate": portions, "model": "tiny_vace_2_2", "resolution": [64, 48],
               "context_frame_count": 2, "replace_mode": False, "prompt": "", "num_inference_steps": 4,
               "seed": rng.randrange(1000)}
    children = [f"join-{i}" for i in range(len(portions))] + ["stitch"]
    frames = total + sum(p["gap_frame_count"] - (p["end_frame"] - p["start_frame"] + 1) for p in portions)
    return "edit_video_orchestrator", {"orchestrator_details": details}, children, frames


JOBS = {"travel": lambda folder, rng, trial: travel_job(folder, rng), "join": join_job, "edit": edit_job}


def one_job(store: TaskStore, url: str, folder: Path, rng: random.Random, trial: int, args: argparse.Namespace) -> dict:
    kind = rng.choice(args.kinds)
    task_type, params, planned, planned_frames = JOBS[kind](folder, rng, trial)
    orchestrator_id = store.enqueue(task_type, params)
    logs = folder / "logs"
    logs.mkdir(exist_ok=True)

    def start(worker_id: str) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "worker.cli", "run", "--database-url", url, "--models-dir", str(folder / "models"),
             "--output-dir", str(folder / "outputs"), "--device", "cpu", "--worker-id", worker_id, *FAST_FLAGS],
            cwd=REPO_ROOT, stdout=(logs / f"{worker_id}.log").open("w"), stderr=subprocess.STDOUT)

    workers = {f"t{trial}-w{i}": start(f"t{trial}-w{i}") for i in range(args.workers)}
    events: list[tuple[float, str, str]] = []
    began = time.monotonic()
    kills = rng.randint(1, args.max_kills)
    restart_at = rng.randrange(kills) if args.restart_postgres and rng.random() < 0.5 else None
    for kill in range(kills):
        time.sleep(rng.uniform(0.3, args.kill_window))
        victim = rng.choice(sorted(workers))
        workers.pop(victim).kill()
        events.append((round(time.monotonic() - began, 1), "kill", victim))
        replacement = f"t{trial}-w{args.workers + kill}"
        workers[replacement] = start(replacement)
        if kill == restart_at:
            subprocess.run(shlex.split(args.restart_postgres), check=True, capture_output=True)
            events.append((round(time.monotonic() - began, 1), "restart postgres", ""))
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        try:
            if store.get(orchestrator_id).status in ENDED:
                break
        except Exception:  # the database coming back from a restart
            pass
        time.sleep(0.5)
    for process in workers.values():
        process.send_signal(signal.SIGTERM)
    for process in workers.values():
        process.wait(timeout=60)

    job = store.get(orchestrator_id)
    children = {child.params["child_key"]: child for child in store.children(orchestrator_id)}
    frames_ok = probe(job.output_location).frames == planned_frames if job.status == TaskStatus.COMPLETE else None
    ok = (job.status == TaskStatus.COMPLETE and sorted(children) == sorted(planned) and frames_ok
          and all(child.status == TaskStatus.COMPLETE for child in children.values()))
    return {"trial": trial, "kind": kind, "ok": bool(ok), "status": job.status, "error": job.error_message,
            "attempts_exhausted": bool(job.error_message and "lease expired on attempt" in job.error_message),
            "children": sorted(children), "attempts": {key: child.attempts for key, child in children.items()},
            "video_frames_as_planned": frames_ok, "events": events, "seconds": round(time.monotonic() - began, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", help="a migrated-or-empty database (default: a throwaway Postgres one)")
    parser.add_argument("--admin-url", default=ADMIN_URL)
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--kinds", type=lambda text: text.split(","), default=list(JOBS),
                        help="comma-separated job kinds to draw from: " + ", ".join(JOBS))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--max-kills", type=int, default=3)
    parser.add_argument("--kill-window", type=float, default=6.0, help="seconds between kills, at most")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds a job may take after the last kill")
    parser.add_argument("--restart-postgres", help="a command that restarts Postgres (run in half the jobs)")
    args = parser.parse_args()

    rng = random.Random(args.seed)
    with ExitStack() as stack:
        url = args.database_url or stack.enter_context(throwaway_postgres(args.admin_url))
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="wan-worker-chaos-")))
        write_tiny_models(folder / "models")
        store = TaskStore(connect(url))
        migrate(store.db)
        results = []
        for trial in range(args.trials):
            results.append(one_job(store, url, folder, rng, trial, args))
            print(json.dumps(results[-1]), flush=True)
        store.db.engine.dispose()
    print(json.dumps({"jobs": len(results), "complete_and_whole": sum(r["ok"] for r in results),
                      "failed_after_every_attempt_was_killed": sum(r["attempts_exhausted"] for r in results),
                      "other_outcomes": sum(not r["ok"] and not r["attempts_exhausted"] for r in results)}))


if __name__ == "__main__":
    main()
