"""The parked orchestrator's progress while its children run: the fenced store write
(`set_parent_progress`) on Postgres and SQLite, and a travel job whose orchestrator row shows its
segments advancing and then the stitch (tiny VACE model on the CPU)."""
from __future__ import annotations

from pathlib import Path

from worker.poller import Worker
from worker.store import Claim, NewTask, TaskStatus, TaskStore
from worker_harness import resources, run_until_idle, worker_config, write_keyframes  # noqa: F401 (fixture)

PROGRESS = {"phase": "segments", "segments_done": 1, "segments": 2}


def parked_parent_with_held_child(store: TaskStore) -> tuple[str, str]:
    """A parent parked by worker "planner" and its child claimed by worker "runner"."""
    parent_id = store.enqueue("plans", {})
    store.claim("planner", ["plans"], None)
    [child_id] = store.park_with_children(Claim(parent_id, "planner", 1), [NewTask("child", {"child_key": "c"})],
                                          {"phase": "waiting_for_children"}).ids
    store.claim("runner", ["child"], None)
    return parent_id, child_id


# ---- the store -------------------------------------------------------------------------------------------

def test_a_held_child_writes_its_parked_parents_progress(store: TaskStore) -> None:
    parent_id, child_id = parked_parent_with_held_child(store)

    assert store.parent_progress(Claim(child_id, "runner", 1), PROGRESS)

    parent = store.get(parent_id)
    assert parent.progress == PROGRESS and parent.is_parked


def test_a_worker_that_does_not_hold_the_child_changes_nothing(store: TaskStore) -> None:
    parent_id, child_id = parked_parent_with_held_child(store)

    assert not store.parent_progress(Claim(child_id, "someone-else", 1), PROGRESS)

    assert store.get(parent_id).progress == {"phase": "waiting_for_children"}


def test_a_parent_that_a_worker_holds_is_never_touched(store: TaskStore) -> None:
    parent_id = store.enqueue("plans", {})
    store.claim("planner", ["plans"], None)  # held, not parked
    child_id = store.enqueue("child", {}, parent_task_id=parent_id)
    store.claim("runner", ["child"], None)

    assert not store.parent_progress(Claim(child_id, "runner", 1), PROGRESS)

    parent = store.get(parent_id)
    assert parent.progress is None and parent.worker_id == "planner"


def test_a_child_without_a_parent_changes_nothing(store: TaskStore) -> None:
    orphan_id = store.enqueue("child", {})
    store.claim("runner", ["child"], None)

    assert not store.parent_progress(Claim(orphan_id, "runner", 1), PROGRESS)


# ---- a travel job ----------------------------------------------------------------------------------------

def test_the_orchestrator_row_shows_each_finished_segment_and_then_the_stitch(store: TaskStore, resources,
                                                                                tmp_path: Path) -> None:
    images = write_keyframes(tmp_path / "keys", 3)
    orchestrator_id = store.enqueue("travel_orchestrator", {
        "model": "tiny_vace", "images": images, "prompt": "a walk", "resolution": "64x48", "fps": 8,
        "segment_frames": 9, "frame_overlap": 2, "num_inference_steps": 2})
    run_until_idle(store, resources, tmp_path / "outputs", task_types=("travel_orchestrator",))
    segment_worker = Worker(worker_config(store, tmp_path / "outputs", resources.models_dir,
                                          task_types=("travel_segment",)), store, resources=resources)

    segment_worker.run(once=True)  # segment-0 only: segment-1 waits for it

    parked = store.get(orchestrator_id)
    assert parked.is_parked
    assert parked.progress == {"phase": "segments", "segments_done": 1, "segments": 2, "percent": 33.3,
                               "current": "segment-0", "expected_frames": 16}

    run_until_idle(store, resources, tmp_path / "outputs")

    done = store.get(orchestrator_id)
    assert done.status == TaskStatus.COMPLETE
    assert done.progress == {"phase": "complete", "segments_done": 2, "segments": 2, "percent": 100,
                             "current": "stitch", "expected_frames": 16}  # a finished job reads 100 %
