"""The task store against real Postgres and SQLite: claim order and readiness, the lease, fencing, the
dependency cascade, cancellation, and orchestrator parking."""
from __future__ import annotations

import time

import pytest
import sqlalchemy as sa

from worker.migrate import available_migrations, migrate
from worker.store import Claim, HeartbeatState, NewTask, TaskStatus, TaskStore


def run_sql(store: TaskStore, sql: str, **params: object) -> None:
    """What a backend or an operator does to the table by hand."""
    with store.db.engine.begin() as conn:
        conn.execute(sa.text(sql), params)


def let_the_database_clock_tick() -> None:
    """Lease checks compare heartbeat_at with the database clock (millisecond resolution on SQLite)."""
    time.sleep(0.02)


def claim(store: TaskStore, worker_id: str = "w1", task_types=None, loaded_model=None, **kwargs):
    return store.claim(worker_id, task_types, loaded_model, **kwargs)


# ---- schema -------------------------------------------------------------------------------------------

def test_migrate_twice_applies_nothing_the_second_time(store: TaskStore) -> None:
    assert migrate(store.db) == []  # the fixture already migrated
    with store.db.engine.begin() as conn:
        versions = [row[0] for row in conn.execute(sa.text("SELECT version FROM schema_migrations"))]
    assert versions == [m.version for m in available_migrations(store.db.dialect)]


def test_a_backend_insert_with_only_task_type_and_params_gets_every_default(store: TaskStore) -> None:
    if store.db.is_postgres:
        run_sql(store, "INSERT INTO tasks (task_type, params) VALUES ('health_check', CAST(:p AS jsonb))", p="{}")
    else:
        run_sql(store, "INSERT INTO tasks (task_type, params) VALUES ('health_check', :p)", p="{}")
    [task] = store.recent()
    assert (task.status, task.priority, task.dependant_on, task.attempts, task.max_attempts) == ("Queued", 0, [], 0, 3)
    assert task.created_at is not None and task.run_after is not None and len(task.id) == 36
    assert claim(store).id == task.id


# ---- enqueue and read ----------------------------------------------------------------------------------

def test_enqueue_and_get_round_trip_json_and_ids(store: TaskStore) -> None:
    first = store.enqueue("health_check", {})
    second = store.enqueue(
        "generate_video", {"prompt": "a cat", "nested": {"steps": [1, 2]}}, priority=7,
        dependant_on=[first], project_id="p1", max_attempts=5,
    )
    task = store.get(second)
    assert task.params == {"prompt": "a cat", "nested": {"steps": [1, 2]}}
    assert (task.task_type, task.priority, task.dependant_on, task.project_id, task.max_attempts) == (
        "generate_video", 7, [first], "p1", 5)
    assert task.status == TaskStatus.QUEUED and task.worker_id is None and task.attempts == 0


def test_get_of_an_unknown_or_malformed_id_is_none(store: TaskStore) -> None:
    assert store.get("00000000-0000-4000-8000-000000000000") is None
    assert store.get("not-a-uuid") is None


def test_params_that_are_not_an_object_are_stored_as_given(store: TaskStore) -> None:
    task_id = store.enqueue("health_check", [1, 2])
    assert store.get(task_id).params == [1, 2]


# ---- claim -------------------------------------------------------------------------------------------------

def test_claim_marks_the_row_in_progress_for_this_worker(store: TaskStore) -> None:
    task_id = store.enqueue("health_check", {})
    task = claim(store, "worker-a")
    assert task.id == task_id
    assert (task.status, task.worker_id, task.attempts) == ("In Progress", "worker-a", 1)
    assert task.heartbeat_at is not None and task.generation_started_at is not None


def test_claim_returns_none_when_nothing_is_queued(store: TaskStore) -> None:
    store.enqueue("health_check", {})
    claim(store)
    assert claim(store) is None


def test_claim_takes_higher_priority_first(store: TaskStore) -> None:
    low = store.enqueue("health_check", {}, priority=0)
    high = store.enqueue("health_check", {}, priority=5)
    assert [claim(store).id, claim(store).id] == [high, low]


def test_claim_takes_older_rows_first_at_equal_priority(store: TaskStore) -> None:
    ids = [store.enqueue("health_check", {}) for _ in range(3)]
    assert [claim(store).id for _ in ids] == ids


def test_claim_prefers_rows_for_the_model_already_loaded(store: TaskStore) -> None:
    other = store.enqueue("generate_video", {"model": "t2v_14B"})
    same = store.enqueue("generate_video", {"model": "vace_14B"})
    assert claim(store, loaded_model="vace_14B").id == same
    assert claim(store, loaded_model="vace_14B").id == other


def test_priority_outranks_the_loaded_model(store: TaskStore) -> None:
    store.enqueue("generate_video", {"model": "vace_14B"})
    urgent = store.enqueue("generate_video", {"model": "t2v_14B"}, priority=1)
    assert claim(store, loaded_model="vace_14B").id == urgent


def test_a_row_for_the_loaded_model_that_is_not_ready_is_passed_over(store: TaskStore) -> None:
    blocker = store.enqueue("health_check", {}, priority=-1)
    other = store.enqueue("generate_video", {"model": "t2v_14B"})
    store.enqueue("generate_video", {"model": "vace_14B"}, dependant_on=[blocker])
    assert claim(store, loaded_model="vace_14B").id == other


def test_claim_takes_rows_past_the_affinity_bound_by_age_before_the_loaded_model(store: TaskStore) -> None:
    waited = store.enqueue("generate_video", {"model": "t2v_14B"})
    store.enqueue("generate_video", {"model": "vace_14B"})
    let_the_database_clock_tick()
    assert claim(store, loaded_model="vace_14B", affinity_max_wait_seconds=0).id == waited


def test_priority_outranks_the_affinity_bound(store: TaskStore) -> None:
    store.enqueue("health_check", {})
    urgent = store.enqueue("health_check", {}, priority=1)
    let_the_database_clock_tick()
    assert claim(store, affinity_max_wait_seconds=0).id == urgent


def test_claim_takes_only_accepted_task_types(store: TaskStore) -> None:
    store.enqueue("generate_video", {})
    wanted = store.enqueue("health_check", {})
    assert claim(store, task_types=["health_check"]).id == wanted
    assert claim(store, task_types=["health_check"]) is None


def test_claim_of_every_type_passes_over_the_types_left_queued_in_both_subqueries(store: TaskStore) -> None:
    skipped = store.enqueue("qwen_image_edit", {"model": "vace_14B"}, priority=2)
    same_model_skipped = store.enqueue("ltx2", {"model": "vace_14B"})
    wanted = store.enqueue("health_check", {})
    left = ["ltx2", "qwen_image_edit"]
    assert claim(store, loaded_model="vace_14B", left_queued=left).id == wanted
    assert claim(store, loaded_model="vace_14B", left_queued=left) is None
    assert claim(store, loaded_model="vace_14B").id == skipped
    assert claim(store, loaded_model="vace_14B").id == same_model_skipped


def test_claim_waits_until_every_dependency_is_complete(store: TaskStore) -> None:
    first = store.enqueue("health_check", {})
    second = store.enqueue("health_check", {})
    dependant = store.enqueue("health_check", {}, dependant_on=[first, second], priority=10)
    assert {claim(store).id, claim(store).id} == {first, second}
    store.complete(Claim(first, "w1", 1), None, {})
    assert claim(store) is None
    store.complete(Claim(second, "w1", 1), None, {})
    assert claim(store).id == dependant


def test_a_dependency_that_does_not_exist_keeps_the_row_waiting(store: TaskStore) -> None:
    store.enqueue("health_check", {}, dependant_on=["00000000-0000-4000-8000-000000000000"])
    assert claim(store) is None


def test_a_row_scheduled_for_later_is_not_claimed_yet(store: TaskStore) -> None:
    task_id = store.enqueue("health_check", {})
    claim(store)
    assert store.retry_later(Claim(task_id, "w1", 1), "RuntimeError: flaky", delay_seconds=3600)
    assert store.get(task_id).status == TaskStatus.QUEUED
    assert claim(store) is None


def test_a_retried_row_is_claimed_again_with_the_attempt_counted(store: TaskStore) -> None:
    task_id = store.enqueue("health_check", {})
    claim(store)
    store.retry_later(Claim(task_id, "w1", 1), "RuntimeError: flaky", delay_seconds=0)
    task = claim(store, "w2")
    assert (task.id, task.attempts, task.worker_id) == (task_id, 2, "w2")
    assert task.error_message == "RuntimeError: flaky"


def test_release_puts_the_row_back_without_counting_the_attempt(store: TaskStore) -> None:
    task_id = store.enqueue("health_check", {})
    claim(store)
    assert store.release(Claim(task_id, "w1", 1))
    task = store.get(task_id)
    assert (task.status, task.attempts, task.worker_id, task.heartbeat_at) == ("Queued", 0, None, None)


# ---- the lease and fencing -----------------------------------------------------------------------------------

def test_heartbeat_extends_the_lease_of_the_holder(store: TaskStore) -> None:
    task_id = store.enqueue("health_check", {})
    claimed = claim(store)
    let_the_database_clock_tick()
    assert store.heartbeat(Claim(task_id, "w1", 1)) is HeartbeatState.ALIVE
    assert store.get(task_id).heartbeat_at > claimed.heartbeat_at


def test_heartbeat_reports_a_cancelled_row(store: TaskStore) -> None:
    task_id = store.enqueue("health_check", {})
    claim(store)
    store.cancel(task_id)
    assert store.heartbeat(Claim(task_id, "w1", 1)) is HeartbeatState.CANCELLED


def test_an_expired_lease_is_requeued_and_claimed_again(store: TaskStore) -> None:
    task_id = store.enqueue("health_check", {})
    claim(store, "w1")
    let_the_database_clock_tick()
    assert store.requeue_expired(lease_seconds=0) == 1
    task = store.get(task_id)
    assert (task.status, task.worker_id, task.attempts) == ("Queued", None, 1)
    assert "lease expired on attempt 1 of 3 (worker w1)" in task.error_message
    assert claim(store, "w2").attempts == 2


def test_a_fresh_lease_is_not_requeued(store: TaskStore) -> None:
    store.enqueue("health_check", {})
    claim(store)
    assert store.requeue_expired(lease_seconds=3600) == 0


def test_a_row_set_in_progress_by_hand_without_a_heartbeat_is_rescued_after_the_lease(store: TaskStore) -> None:
    # e.g. a row an older headless worker claimed, which wrote worker_id but never heartbeat_at
    task_id = store.enqueue("health_check", {})
    run_sql(store, "UPDATE tasks SET status = 'In Progress', worker_id = 'legacy-worker', attempts = 1")
    let_the_database_clock_tick()
    assert store.requeue_expired(lease_seconds=3600) == 0
    assert store.requeue_expired(lease_seconds=0) == 1
    task = store.get(task_id)
    assert (task.status, task.worker_id) == ("Queued", None)
    assert "(worker legacy-worker); requeued" in task.error_message


def test_an_expired_lease_on_the_last_attempt_fails_the_row_and_its_dependants(store: TaskStore) -> None:
    task_id = store.enqueue("health_check", {}, max_attempts=1)
    dependant = store.enqueue("health_check", {}, dependant_on=[task_id])
    claim(store, "w1")
    let_the_database_clock_tick()
    store.requeue_expired(lease_seconds=0)
    task = store.get(task_id)
    assert task.status == TaskStatus.FAILED
    assert task.error_message == "lease expired on attempt 1 of 1; last worker w1"
    assert store.get(dependant).status == TaskStatus.FAILED


def test_a_worker_that_lost_its_lease_changes_nothing(store: TaskStore) -> None:
    task_id = store.enqueue("health_check", {})
    claim(store, "old")
    let_the_database_clock_tick()
    store.requeue_expired(lease_seconds=0)
    claim(store, "new")
    assert store.heartbeat(Claim(task_id, "old", 1)) is HeartbeatState.LOST
    assert not store.progress(Claim(task_id, "old", 1), {"step": 9})
    assert not store.complete(Claim(task_id, "old", 1), "/tmp/stale.mp4", {"by": "old"})
    assert not store.fail(Claim(task_id, "old", 1), "stale failure")
    assert not store.retry_later(Claim(task_id, "old", 1), "stale retry", 0)
    assert not store.release(Claim(task_id, "old", 1))
    task = store.get(task_id)
    assert (task.status, task.worker_id, task.progress, task.output_location) == ("In Progress", "new", None, None)
    assert store.complete(Claim(task_id, "new", 2), "/out/final.mp4", {"by": "new"})
    assert store.get(task_id).result_data == {"by": "new"}


def test_a_claim_that_lost_its_lease_changes_nothing_even_under_the_same_worker_id(store: TaskStore) -> None:
    """Two processes started with the same --worker-id: the fence is the claim (its attempt number)."""
    task_id = store.enqueue("health_check", {})
    stale = Claim.of(claim(store, "twin"))
    let_the_database_clock_tick()
    store.requeue_expired(lease_seconds=0)
    fresh = Claim.of(claim(store, "twin"))
    assert (stale.worker_id, stale.attempt, fresh.attempt) == ("twin", 1, 2)
    assert store.heartbeat(stale) is HeartbeatState.LOST
    assert not store.progress(stale, {"step": 9})
    assert not store.complete(stale, "/tmp/stale.mp4", {"by": "stale"})
    assert not store.fail(stale, "stale failure")
    assert not store.retry_later(stale, "stale retry", 0)
    assert not store.release(stale)
    assert not store.park_with_children(stale, segment_plan(), None)
    assert store.heartbeat(fresh) is HeartbeatState.ALIVE
    assert store.complete(fresh, "/out/final.mp4", {"by": "fresh"})
    assert store.get(task_id).result_data == {"by": "fresh"}


def test_writes_after_the_row_ended_change_nothing(store: TaskStore) -> None:
    task_id = store.enqueue("health_check", {})
    claim(store)
    store.complete(Claim(task_id, "w1", 1), None, {"n": 1})
    assert not store.fail(Claim(task_id, "w1", 1), "late")
    assert not store.complete(Claim(task_id, "w1", 1), None, {"n": 2})
    assert store.get(task_id).result_data == {"n": 1}


def test_progress_and_completion_are_written_for_the_holder(store: TaskStore) -> None:
    task_id = store.enqueue("health_check", {})
    claim(store)
    assert store.progress(Claim(task_id, "w1", 1), {"phase": "denoise", "step": 4, "steps": 10, "percent": 40.0})
    assert store.get(task_id).progress == {"phase": "denoise", "step": 4, "steps": 10, "percent": 40.0}
    assert store.complete(Claim(task_id, "w1", 1), "/out/x.mp4", {"seconds": 1.5})
    task = store.get(task_id)
    assert (task.status, task.output_location, task.result_data) == ("Complete", "/out/x.mp4", {"seconds": 1.5})
    assert task.generation_processed_at >= task.generation_started_at


# ---- the dependency cascade ---------------------------------------------------------------------------------

def test_a_failed_dependency_fails_the_whole_chain_of_dependants_with_its_message(store: TaskStore) -> None:
    first = store.enqueue("travel_segment", {})
    second = store.enqueue("travel_segment", {}, dependant_on=[first])
    third = store.enqueue("travel_stitch", {}, dependant_on=[second])
    claim(store)
    store.fail(Claim(first, "w1", 1), "ValidationError: prompt: must be a string")
    assert store.get(second).status == TaskStatus.FAILED
    assert store.get(second).error_message == (
        f"dependency {first} (travel_segment) failed: ValidationError: prompt: must be a string")
    assert store.get(third).status == TaskStatus.FAILED
    assert store.get(third).error_message.startswith(f"dependency {second} (travel_segment) failed: dependency {first}")


def test_a_cancelled_dependency_cancels_its_dependants(store: TaskStore) -> None:
    first = store.enqueue("health_check", {})
    dependant = store.enqueue("health_check", {}, dependant_on=[first])
    assert store.cancel(first) == 2
    task = store.get(dependant)
    assert (task.status, task.error_message) == ("Cancelled", f"dependency {first} (health_check) was cancelled")


def test_cascade_ends_dependants_of_rows_a_backend_failed_by_hand(store: TaskStore) -> None:
    first = store.enqueue("health_check", {})
    dependant = store.enqueue("health_check", {}, dependant_on=[first])
    run_sql(store, "UPDATE tasks SET status = 'Failed', error_message = 'operator' WHERE id = :id", id=first)
    assert store.cascade_dependencies() == 1
    assert store.get(dependant).error_message == f"dependency {first} (health_check) failed: operator"


# ---- cancellation -------------------------------------------------------------------------------------------

def test_cancel_a_queued_row(store: TaskStore) -> None:
    task_id = store.enqueue("health_check", {})
    assert store.cancel(task_id) == 1
    assert store.get(task_id).status == TaskStatus.CANCELLED
    assert claim(store) is None


def test_cancel_of_an_ended_or_unknown_row_changes_nothing(store: TaskStore) -> None:
    task_id = store.enqueue("health_check", {})
    claim(store)
    store.complete(Claim(task_id, "w1", 1), None, {})
    assert store.cancel(task_id) == 0
    assert store.get(task_id).status == TaskStatus.COMPLETE
    assert store.cancel("00000000-0000-4000-8000-000000000000") == 0


# ---- orchestrators: parking with children ---------------------------------------------------------------------

def segment_plan() -> list[NewTask]:
    first = NewTask("travel_segment", {"child_key": "segment-0"})
    second = NewTask("travel_segment", {"child_key": "segment-1"}, dependant_on=[first.id])
    stitch = NewTask("travel_stitch", {"child_key": "stitch"}, dependant_on=[first.id, second.id])
    return [first, second, stitch]


def park_orchestrator(store: TaskStore) -> tuple[str, list[str]]:
    parent = store.enqueue("travel_orchestrator", {}, priority=3, project_id="proj")
    claim(store, task_types=["travel_orchestrator"])
    ids = store.park_with_children(Claim(parent, "w1", 1), segment_plan(), {"phase": "waiting for segments"}).ids
    return parent, ids


def test_park_inserts_children_and_parks_the_parent(store: TaskStore) -> None:
    parent, ids = park_orchestrator(store)
    children = store.children(parent)
    assert [c.id for c in children] == ids
    by_id = {c.id: c for c in children}
    assert by_id[ids[1]].dependant_on == [ids[0]]
    assert all(c.priority == 3 and c.project_id == "proj" and c.parent_task_id == parent for c in children)
    task = store.get(parent)
    assert task.is_parked and task.progress == {"phase": "waiting for segments"}


def test_a_parked_parent_is_never_rescued_as_an_expired_lease(store: TaskStore) -> None:
    parent, _ = park_orchestrator(store)
    let_the_database_clock_tick()
    assert store.requeue_expired(lease_seconds=0) == 0
    assert store.get(parent).is_parked


def test_a_rerun_planner_gets_the_existing_children_instead_of_duplicates(store: TaskStore) -> None:
    parent, ids = park_orchestrator(store)
    run_sql(store, "UPDATE tasks SET status = 'Queued' WHERE id = :id", id=parent)  # an operator re-queues it
    claim(store, "w2", task_types=["travel_orchestrator"])
    assert store.park_with_children(Claim(parent, "w2", 2), segment_plan(), None).ids == ids
    assert len(store.children(parent)) == 3


def test_the_database_refuses_a_second_child_with_the_same_key(store: TaskStore) -> None:
    parent, _ = park_orchestrator(store)
    with pytest.raises(sa.exc.IntegrityError):
        store.enqueue("travel_segment", {"child_key": "segment-0"}, parent_task_id=parent)


def test_park_is_refused_to_a_worker_without_the_lease(store: TaskStore) -> None:
    parent = store.enqueue("travel_orchestrator", {})
    claim(store, "w1")
    assert store.park_with_children(Claim(parent, "someone-else", 1), segment_plan(), None) is None
    assert store.children(parent) == []


def test_a_failed_child_ends_its_parked_parent_and_cancels_the_other_children(store: TaskStore) -> None:
    parent, (first, second, stitch) = park_orchestrator(store)
    independent = store.enqueue("travel_segment", {"child_key": "extra"}, parent_task_id=parent)
    assert claim(store, task_types=["travel_segment"]).id == first
    store.fail(Claim(first, "w1", 1), "OutOfMemory: 80 GiB")
    task = store.get(parent)
    assert (task.status, task.error_message) == ("Failed", f"child {first} (travel_segment) failed: OutOfMemory: 80 GiB")
    assert store.get(second).status == store.get(stitch).status == TaskStatus.FAILED  # dependants
    assert store.get(independent).status == TaskStatus.CANCELLED
    assert store.get(independent).error_message == f"parent {parent} (travel_orchestrator) failed"


def test_cancelling_a_parked_parent_cancels_its_children_including_running_ones(store: TaskStore) -> None:
    parent, (first, second, stitch) = park_orchestrator(store)
    claim(store, "segment-worker", task_types=["travel_segment"])
    assert store.cancel(parent) == 4
    assert {store.get(i).status for i in (parent, first, second, stitch)} == {"Cancelled"}
    assert store.heartbeat(Claim(first, "segment-worker", 1)) is HeartbeatState.CANCELLED


def test_complete_parked_is_written_through_the_child_this_worker_holds(store: TaskStore) -> None:
    parent, ids = park_orchestrator(store)
    child = claim(store, worker_id="stitcher")
    assert child.id == ids[0]
    assert not store.complete_parked(Claim(child.id, "someone-else", 1), "/out/x.mp4", {})
    assert store.get(parent).is_parked
    assert store.complete_parked(Claim(child.id, "stitcher", 1), "/out/travel.mp4", {"segments": 2})
    task = store.get(parent)
    assert (task.status, task.output_location, task.result_data) == ("Complete", "/out/travel.mp4", {"segments": 2})
    assert not store.complete_parked(Claim(child.id, "stitcher", 1), "/out/again.mp4", {})  # it is no longer waiting


def test_complete_parked_never_touches_a_parent_some_worker_holds(store: TaskStore) -> None:
    parent = store.enqueue("travel_orchestrator", {})
    child = store.enqueue("travel_stitch", {"child_key": "stitch"}, parent_task_id=parent)
    claim(store, worker_id="planner", task_types=["travel_orchestrator"])
    claim(store, worker_id="stitcher", task_types=["travel_stitch"])
    assert not store.complete_parked(Claim(child, "stitcher", 1), "/out/x.mp4", {})
    assert store.get(parent).status == "In Progress" and store.get(parent).worker_id == "planner"
