"""No job stuck forever: maintenance ends dependency cycles (and self-dependencies) and parked
orchestrators whose children were deleted, naming the cycle or the missing child."""
from __future__ import annotations

import uuid

import sqlalchemy as sa
import structlog

from worker.maintenance import Maintenance
from worker.store import Claim, NewTask, TaskStatus, TaskStore, dependency_cycles


def delete(store: TaskStore, task_id: str) -> None:
    with store.db.engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM tasks WHERE id = :id"), {"id": task_id})


def run_maintenance(store: TaskStore) -> None:
    maintenance = Maintenance(store, lease_seconds=60, interval_seconds=60, log=structlog.get_logger())
    maintenance.run_once()


def test_cycles_are_found_in_any_order_and_chains_are_not_cycles() -> None:
    assert dependency_cycles([("a", "a")]) == [["a", "a"]]
    assert dependency_cycles([("a", "b"), ("b", "c"), ("c", "a"), ("d", "a")]) == [["a", "b", "c", "a"]]
    assert dependency_cycles([(str(i), str(i - 1)) for i in range(1, 5000)]) == []  # no recursion limit


def test_a_self_dependency_and_a_cycle_fail_naming_it_and_their_dependants_follow(store: TaskStore) -> None:
    selfish = str(uuid.uuid4())
    store.enqueue("health_check", {}, dependant_on=[selfish], task_id=selfish)
    first, second = str(uuid.uuid4()), str(uuid.uuid4())
    store.enqueue_many([NewTask("health_check", {}, dependant_on=[second], id=first),
                        NewTask("health_check", {}, dependant_on=[first], id=second)])
    waiting = store.enqueue("health_check", {}, dependant_on=[first])
    chain_head = store.enqueue("health_check", {})
    chain_tail = store.enqueue("health_check", {}, dependant_on=[chain_head])

    run_maintenance(store)

    assert store.get(selfish).status == TaskStatus.FAILED
    assert store.get(selfish).error_message.startswith(f"dependency cycle: {selfish} -> {selfish}")
    for task_id in (first, second):
        task = store.get(task_id)
        assert task.status == TaskStatus.FAILED
        assert f"{first} -> {second} -> {first}" in task.error_message or \
            f"{second} -> {first} -> {second}" in task.error_message
    assert store.get(waiting).status == TaskStatus.FAILED
    assert store.get(waiting).error_message.startswith(f"dependency {first} (health_check) failed: dependency cycle")
    assert store.get(chain_head).status == store.get(chain_tail).status == TaskStatus.QUEUED


def park_job(store: TaskStore) -> tuple[str, list[str]]:
    parent = store.enqueue("travel_orchestrator", {})
    claimed = store.claim("planner", ["travel_orchestrator"], None)
    first = NewTask("travel_segment", {"child_key": "segment-0"})
    second = NewTask("travel_segment", {"child_key": "segment-1"}, dependant_on=[first.id])
    stitch = NewTask("travel_stitch", {"child_key": "stitch"}, dependant_on=[first.id, second.id])
    return parent, store.park_with_children(Claim.of(claimed), [first, second, stitch], None).ids


def finish(store: TaskStore, task_type: str) -> None:
    claimed = store.claim("runner", [task_type], None)
    assert store.complete(Claim.of(claimed), "/out/x.mp4", {})


def test_a_parked_job_whose_stitch_was_deleted_fails_once_nothing_can_finish_it(store: TaskStore) -> None:
    parent, (first, second, stitch) = park_job(store)
    delete(store, stitch)
    run_maintenance(store)
    assert store.get(parent).is_parked  # segments are still to run: not yet stuck
    finish(store, "travel_segment")
    finish(store, "travel_segment")

    run_maintenance(store)

    task = store.get(parent)
    assert task.status == TaskStatus.FAILED
    assert "no child is left to complete it (2 remain, all Complete" in task.error_message


def test_a_parked_job_whose_child_was_deleted_fails_naming_it_and_its_other_children_are_cancelled(
        store: TaskStore) -> None:
    parent, (first, second, stitch) = park_job(store)
    delete(store, first)

    run_maintenance(store)

    task = store.get(parent)
    assert task.status == TaskStatus.FAILED
    assert f"waits for {first}, which no longer exists" in task.error_message
    assert store.get(second).status == store.get(stitch).status == TaskStatus.CANCELLED


# ---- the retry of a job -------------------------------------------------------------------------------------

def requeue(store: TaskStore, task_id: str) -> None:
    """What a backend does to retry a job: put its orchestrator back in the queue."""
    with store.db.engine.begin() as conn:
        conn.execute(sa.text("UPDATE tasks SET status = 'Queued', worker_id = NULL, heartbeat_at = NULL "
                             "WHERE id = :id"), {"id": task_id})


def replan(store: TaskStore, parent: str):
    claimed = store.claim("planner-2", ["travel_orchestrator"], None)
    assert claimed.id == parent
    first = NewTask("travel_segment", {"child_key": "segment-0"})
    second = NewTask("travel_segment", {"child_key": "segment-1"}, dependant_on=[first.id])
    stitch = NewTask("travel_stitch", {"child_key": "stitch"}, dependant_on=[first.id, second.id])
    return store.park_with_children(Claim.of(claimed), [first, second, stitch], None)


def test_retrying_a_failed_job_requeues_its_failed_and_cancelled_children_and_keeps_the_complete_ones(
        store: TaskStore) -> None:
    parent, (first, second, stitch) = park_job(store)
    finish(store, "travel_segment")
    broken = store.claim("runner", ["travel_segment"], None)
    assert broken.id == second
    store.fail(Claim.of(broken), "OutOfMemory: 80 GiB")
    assert store.get(parent).status == TaskStatus.FAILED and store.get(stitch).status == TaskStatus.FAILED

    requeue(store, parent)
    parked = replan(store, parent)

    assert (parked.ids, parked.requeued, parked.completed) == ([first, second, stitch], 2, False)
    assert store.get(parent).is_parked
    assert store.get(first).status == TaskStatus.COMPLETE  # its video is reused
    for task_id in (second, stitch):
        task = store.get(task_id)
        assert (task.status, task.attempts, task.error_message) == (TaskStatus.QUEUED, 0, None)
    finish(store, "travel_segment")
    stitcher = store.claim("runner", ["travel_stitch"], None)
    assert store.complete_parked(Claim.of(stitcher), "/out/travel.mp4", {"retried": True})
    assert store.get(parent).status == TaskStatus.COMPLETE


def test_retrying_a_complete_job_completes_it_again_at_once_with_its_output(store: TaskStore) -> None:
    parent, (first, second, stitch) = park_job(store)
    finish(store, "travel_segment")
    finish(store, "travel_segment")
    stitcher = store.claim("runner", ["travel_stitch"], None)
    assert store.complete_parked(Claim.of(stitcher), "/out/travel.mp4", {"frames": 33})
    assert store.complete(Claim.of(stitcher), "/out/travel.mp4", {"frames": 33})

    requeue(store, parent)
    parked = replan(store, parent)

    assert parked.completed and parked.requeued == 0
    task = store.get(parent)
    assert (task.status, task.output_location, task.result_data) == (TaskStatus.COMPLETE, "/out/travel.mp4", {"frames": 33})
    assert {child.status for child in store.children(parent)} == {TaskStatus.COMPLETE}
