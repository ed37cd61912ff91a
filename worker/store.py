"""The task store: every read and write of the `tasks` table, by named query (worker/sql/).

Each method is one statement or one transaction. Writes after a claim are fenced on the claim (the
worker, the attempt number and the 'In Progress' status: see Claim) and return whether the row
changed, so a worker whose lease was taken over changes nothing. Timestamps come from the database clock only.
"""
from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Sequence

import sqlalchemy as sa

from worker.db import Database, Undecodable, parse_uuid
from worker.model_keys import resolved_model

# The params field that names a child within its parent (unique per parent, see park_with_children).
CHILD_KEY_PARAM = "child_key"


class TaskStatus(str, enum.Enum):
    QUEUED = "Queued"
    IN_PROGRESS = "In Progress"
    COMPLETE = "Complete"
    FAILED = "Failed"
    CANCELLED = "Cancelled"


class HeartbeatState(enum.Enum):
    """What a heartbeat found: the lease is extended, the row was cancelled, or another worker (or
    the lease rescue) took it."""

    ALIVE = "alive"
    CANCELLED = "cancelled"
    LOST = "lost"


@dataclass
class Task:
    """One row of `tasks`, with JSON columns decoded and ids as text."""

    id: str
    task_type: str
    params: Any  # a dict for every valid task; the poller fails rows whose params are not an object
    # (Undecodable when the database holds JSON that Python cannot decode)
    status: str
    priority: int
    dependant_on: list[str]
    parent_task_id: str | None
    project_id: str | None
    attempts: int
    max_attempts: int
    run_after: datetime | None
    worker_id: str | None
    heartbeat_at: datetime | None
    progress: dict | None
    output_location: str | None
    result_data: dict | None
    error_message: str | None
    created_at: datetime | None
    updated_at: datetime | None
    generation_started_at: datetime | None
    generation_processed_at: datetime | None
    resolved_model: str | None = None  # what params' preset / model resolve to (worker.model_keys)

    @property
    def is_parked(self) -> bool:
        """An orchestrator waiting for its children (In Progress without a worker or a lease)."""
        return self.status == TaskStatus.IN_PROGRESS and self.worker_id is None and self.heartbeat_at is None

    def as_json(self) -> dict[str, Any]:
        """The row as JSON-ready values (timestamps in ISO 8601)."""
        out: dict[str, Any] = {}
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            if isinstance(value, datetime):
                value = value.isoformat()
            elif isinstance(value, Undecodable):
                value = str(value)
            out[name] = value
        return out


@dataclass(frozen=True)
class Claim:
    """One claim of one row: the fence of every write after it. The attempt number is the claim's
    token, so a write by a claim that lost its lease changes nothing even when the row's next claim
    went to a process with the same worker_id."""

    task_id: str
    worker_id: str
    attempt: int

    @classmethod
    def of(cls, task: Task) -> "Claim":
        """The claim a row returned by TaskStore.claim stands for."""
        if task.worker_id is None:
            raise ValueError(f"task {task.id} is not held by a worker")
        return cls(task.id, task.worker_id, task.attempts)

    def fence(self) -> dict[str, Any]:
        return {"id": self.task_id, "worker_id": self.worker_id, "attempt": self.attempt}


@dataclass(frozen=True)
class Parked:
    """What park_with_children did: the children's ids; how many ended children went back to the
    queue (the retry of a failed job); whether the parent completed at once (every child had)."""

    ids: list[str]
    requeued: int = 0
    completed: bool = False


@dataclass
class NewTask:
    """A row to insert. The id is made here so that rows inserted together can name each other in
    dependant_on. priority None inherits the parent's priority."""

    task_type: str
    params: dict[str, Any]
    priority: int | None = None
    dependant_on: Sequence[str] = ()
    max_attempts: int = 3
    project_id: str | None = None
    id: str = field(default_factory=lambda: str(uuid.uuid4()))


class TaskStore:
    """The `tasks` table through a Database (Postgres or SQLite)."""

    def __init__(self, db: Database):
        self.db = db

    # ---- inserting and reading -------------------------------------------------------------------

    def enqueue(
        self,
        task_type: str,
        params: Any,
        *,
        priority: int = 0,
        dependant_on: Sequence[str] = (),
        parent_task_id: str | None = None,
        project_id: str | None = None,
        max_attempts: int = 3,
        task_id: str | None = None,
    ) -> str:
        """Insert one Queued row; returns its id (task_id, when given, must be a UUID)."""
        canonical = str(uuid.uuid4()) if task_id is None else parse_uuid(task_id)
        if canonical is None:
            raise ValueError(f"a task id must be a UUID, got {task_id[:80]!r}")
        row = NewTask(
            task_type=task_type, params=params, priority=priority, dependant_on=dependant_on,
            max_attempts=max_attempts, project_id=project_id, id=canonical,
        )
        with self.db.transaction() as conn:
            self._insert(conn, row, parent_task_id=parent_task_id, default_priority=priority)
        return row.id

    def enqueue_many(self, rows: Sequence[NewTask]) -> list[str]:
        """Insert several Queued rows in one transaction (all or none); returns their ids."""
        with self.db.transaction() as conn:
            for row in rows:
                self._insert(conn, row, parent_task_id=None, default_priority=0)
        return [row.id for row in rows]

    def get(self, task_id: str) -> Task | None:
        canonical = parse_uuid(task_id)
        if canonical is None:
            return None
        rows = self.db.run("get_task", {"id": canonical}).rows
        return self._task(rows[0]) if rows else None

    def children(self, parent_id: str) -> list[Task]:
        canonical = parse_uuid(parent_id)
        if canonical is None:
            return []
        return [self._task(row) for row in self.db.run("children", {"parent_id": canonical}).rows]

    def run_segments(self, run_id: str, orchestrator_ref: str) -> list[Task]:
        """The Complete travel_segment rows the headless orchestrator `orchestrator_ref` wrote for its
        run `run_id`, newest first."""
        rows = self.db.run("run_segments", {"run_id": run_id, "orchestrator_ref": orchestrator_ref}).rows
        return [self._task(row) for row in rows]

    def recent(self, limit: int = 20) -> list[Task]:
        """The newest rows first."""
        return [self._task(row) for row in self.db.run("recent_tasks", {"limit": limit}).rows]

    def count_by_status(self) -> dict[str, int]:
        return {row["status"]: row["n"] for row in self.db.run("count_by_status").rows}

    def queued_by_type(self) -> dict[str, int]:
        return {row["task_type"]: row["n"] for row in self.db.run("queued_by_type").rows}

    # ---- the claim and the lease -----------------------------------------------------------------

    def claim(
        self,
        worker_id: str,
        task_types: Sequence[str] | None,
        loaded_model: str | None,
        *,
        left_queued: Sequence[str] = (),
        affinity_max_wait_seconds: float = 300.0,
    ) -> Task | None:
        """Take the best ready row (see the `claim` query) for `worker_id`; None when nothing is ready.
        task_types None accepts every type but those in `left_queued`."""
        params = {
            "worker_id": worker_id,
            "task_types": self.db.encode_text_array(task_types),
            "left_queued": self.db.encode_text_array(left_queued),
            "loaded_model": loaded_model,
            "affinity_max_wait_seconds": float(affinity_max_wait_seconds),
        }
        rows = self.db.run("claim", params, durable=False).rows
        return self._task(rows[0]) if rows else None

    def heartbeat(self, claim: Claim) -> HeartbeatState:
        """Extend the lease, or say why it cannot be extended."""
        if self.db.run("heartbeat", claim.fence(), durable=False).rows:
            return HeartbeatState.ALIVE
        rows = self.db.run("task_status", {"id": claim.task_id}).rows
        cancelled = bool(rows) and rows[0]["status"] == TaskStatus.CANCELLED
        return HeartbeatState.CANCELLED if cancelled else HeartbeatState.LOST

    def requeue_expired(self, lease_seconds: float) -> int:
        """Lease rescue: rows whose heartbeat is older than the lease go back to Queued (or to Failed when
        their attempts are used up, then their dependants follow). Returns the number of rows moved."""
        with self.db.transaction(durable=False) as conn:
            rows = conn.execute(self.db.query("requeue_expired"), {"lease_seconds": float(lease_seconds)}).all()
            if any(status == TaskStatus.FAILED for _, status in rows):
                self._cascade(conn)
        return len(rows)

    # ---- fenced writes by the claiming worker -----------------------------------------------------

    def live_claims_of_worker(self, worker_id: str, lease_seconds: float) -> dict[str, Any]:
        """{task id: heartbeat_at} of the rows held under worker_id whose lease is still fresh."""
        rows = self.db.run("live_claims_of_worker", {"worker_id": worker_id, "lease_seconds": float(lease_seconds)}).rows
        return {self.db.decode_id(row["id"]): row["heartbeat_at"] for row in rows}

    def progress(self, claim: Claim, progress: dict[str, Any]) -> bool:
        return self._fenced("set_progress", claim, durable=False, progress=self.db.encode_json(progress))

    def complete(self, claim: Claim, output_location: str | None, result_data: dict[str, Any] | None) -> bool:
        return self._fenced(
            "complete", claim, output_location=output_location, result_data=self.db.encode_json(result_data),
        )

    def fail(self, claim: Claim, message: str) -> bool:
        """Permanent failure; dependants and a parked parent end with it in the same transaction."""
        with self.db.transaction() as conn:
            params = {**claim.fence(), "message": message}
            changed = conn.execute(self.db.query("fail"), params).rowcount == 1
            if changed:
                self._cascade(conn)
        return changed

    def retry_later(self, claim: Claim, message: str, delay_seconds: float) -> bool:
        return self._fenced("retry_later", claim, durable=False, message=message, delay_seconds=float(delay_seconds))

    def release(self, claim: Claim) -> bool:
        """Give the row back unfinished (shutdown): Queued again, and this claim is not an attempt."""
        return self._fenced("release", claim, durable=False)

    # ---- orchestrators ---------------------------------------------------------------------------

    def park_with_children(
        self, claim: Claim, children: Sequence[NewTask], progress: dict[str, Any] | None
    ) -> Parked | None:
        """In one transaction: lock the parent this worker holds, insert its children unless it already
        has some, and park the parent until its children end it. Every child must carry
        params['child_key']. A parent that already has children (a re-run planner, or the retry of a
        job that ended) gets them back instead of duplicates: those that Failed or were Cancelled go
        back to the queue with their attempts reset, Complete ones are kept; when every child had
        completed, the parent completes again at once instead of parking.
        Returns None when this worker no longer holds the parent."""
        for child in children:
            if not isinstance(child.params, dict) or CHILD_KEY_PARAM not in child.params:
                raise ValueError(f"child {child.task_type} needs params[{CHILD_KEY_PARAM!r}] (unique per parent)")
        parent_id, fence = claim.task_id, claim.fence()
        with self.db.transaction() as conn:
            parent = conn.execute(self.db.query("lock_held_task"), fence).mappings().first()
            if parent is None:
                return None
            existing = conn.execute(self.db.query("child_keys"), {"parent_id": parent_id}).mappings().all()
            if not existing:
                for child in children:
                    self._insert(
                        conn, child, parent_task_id=parent_id, default_priority=parent["priority"],
                        default_project_id=parent["project_id"],
                    )
                conn.execute(self.db.query("park"), {**fence, "progress": self.db.encode_json(progress)})
                return Parked(ids=[child.id for child in children])
            ids = _in_requested_order([(row["id"], row["child_key"]) for row in existing], children)
            if all(row["status"] == TaskStatus.COMPLETE for row in existing):
                last = _last_child(ids, {str(row["id"]): self.db.decode_ids(row["dependant_on"]) for row in existing})
                conn.execute(self.db.query("complete_from_child"), {**fence, "child_id": last})
                return Parked(ids=ids, completed=True)
            requeued = len(conn.execute(self.db.query("requeue_ended_children"), {"parent_id": parent_id}).all())
            conn.execute(self.db.query("park"), {**fence, "progress": self.db.encode_json(progress)})
        return Parked(ids=ids, requeued=requeued)

    def complete_parked(
        self, child: Claim, output_location: str | None, result_data: dict[str, Any] | None
    ) -> bool:
        """Complete the parked orchestrator of a child this worker holds (fenced on the child: a stitch
        that lost its lease completes nothing; a parent that some worker holds, or that ended, is not
        touched)."""
        return self._fenced("complete_parked", child, output_location=output_location,
                            result_data=self.db.encode_json(result_data))

    def parent_progress(self, child: Claim, progress: dict[str, Any]) -> bool:
        """Write the progress of the parked orchestrator of a child this worker holds (fenced on the
        child; a parent that some worker holds, or that has ended, is not touched)."""
        return self._fenced("set_parent_progress", child, durable=False, progress=self.db.encode_json(progress))

    # ---- cancellation and the cascade --------------------------------------------------------------

    def cancel(self, task_id: str) -> int:
        """Cancel a Queued or In Progress row; its children, their children and its dependants follow.
        Returns how many rows this call ended (0 when the row had already ended or does not exist)."""
        canonical = parse_uuid(task_id)
        if canonical is None:
            return 0
        with self.db.transaction() as conn:
            if conn.execute(self.db.query("cancel"), {"id": canonical}).first() is None:
                return 0
            return 1 + self._cascade(conn)

    def cascade_dependencies(self) -> int:
        """End what can never run: dependants of Failed/Cancelled rows, parked parents of Failed/Cancelled
        children, live children of Failed/Cancelled parents. Returns how many rows it ended."""
        with self.db.transaction(durable=False) as conn:
            return self._cascade(conn)

    def fail_dependency_cycles(self) -> int:
        """Fail Queued rows that wait for themselves (a dependency cycle, or a row that names itself
        in dependant_on), each naming its cycle; rows waiting on a cycle then follow by the cascade.
        Returns how many rows it ended."""
        with self.db.transaction(durable=False) as conn:
            edges = [(str(task), str(dependency)) for task, dependency in
                     conn.execute(self.db.query("queued_dependency_edges")).all()]
            ended: set[str] = set()
            for cycle in dependency_cycles(edges):
                message = f"dependency cycle: {_cycle_text(cycle)}; these rows wait for each other forever"
                for task_id in cycle[:-1]:
                    if task_id not in ended and conn.execute(self.db.query("fail_queued"),
                                                             {"id": task_id, "message": message}).first():
                        ended.add(task_id)
            if ended:
                self._cascade(conn)
        return len(ended)

    def resolve_queued_models(self, limit: int = 200) -> int:
        """Store the resolved model of Queued rows a backend inserted naming a preset or a headless
        model_name, so the claim's affinity sees them. Rows naming no known model are resolved to ''
        (and fail when claimed). Returns how many rows it resolved."""
        rows = self.db.run("queued_models_to_resolve", {"limit": limit}).rows
        for row in rows:
            model = resolved_model(self.db.decode_json(row["params"])) or ""
            self.db.run("set_resolved_model", {"id": self.db.decode_id(row["id"]), "resolved_model": model},
                        durable=False)
        return len(rows)

    def fail_orphaned_parents(self) -> int:
        """Fail parked orchestrators that no child can finish any more (child rows deleted), naming
        the missing child; their remaining children are cancelled by the cascade."""
        with self.db.transaction(durable=False) as conn:
            ended = len(conn.execute(self.db.query("fail_orphaned_parked_parents")).all())
            if ended:
                self._cascade(conn)
        return ended

    def _cascade(self, conn: sa.Connection) -> int:
        """Repeat the three cascade rules until none changes a row (chains end link by link). Parents go
        first so that a parent names the child that failed on its own, not a dependant that followed it."""
        rules = ("end_parked_parents_of_ended", "end_dependants_of_ended", "cancel_children_of_ended")
        total = 0
        while True:
            changed = sum(len(conn.execute(self.db.query(rule)).all()) for rule in rules)
            if changed == 0:
                return total
            total += changed

    # ---- helpers -----------------------------------------------------------------------------------

    def _fenced(self, query: str, claim: Claim, *, durable: bool = True, **values: Any) -> bool:
        return self.db.run(query, {**claim.fence(), **values}, durable=durable).rowcount == 1

    def _insert(
        self,
        conn: sa.Connection,
        row: NewTask,
        *,
        parent_task_id: str | None,
        default_priority: int,
        default_project_id: str | None = None,
    ) -> None:
        conn.execute(
            self.db.query("insert_task"),
            {
                "id": row.id,
                "task_type": row.task_type,
                "params": self.db.encode_json(row.params),
                "priority": default_priority if row.priority is None else row.priority,
                "dependant_on": self.db.encode_text_array(row.dependant_on),
                "parent_task_id": parent_task_id,
                "project_id": row.project_id if row.project_id is not None else default_project_id,
                "max_attempts": row.max_attempts,
                "resolved_model": resolved_model(row.params),
            },
        )

    def _task(self, row: sa.RowMapping) -> Task:
        db = self.db
        return Task(
            id=db.decode_id(row["id"]),
            task_type=row["task_type"],
            params=db.decode_json(row["params"]),
            status=row["status"],
            priority=row["priority"],
            dependant_on=db.decode_ids(row["dependant_on"]),
            parent_task_id=db.decode_id(row["parent_task_id"]),
            project_id=row["project_id"],
            attempts=row["attempts"],
            max_attempts=row["max_attempts"],
            run_after=db.decode_time(row["run_after"]),
            worker_id=row["worker_id"],
            heartbeat_at=db.decode_time(row["heartbeat_at"]),
            progress=db.decode_json(row["progress"]),
            output_location=row["output_location"],
            result_data=db.decode_json(row["result_data"]),
            error_message=row["error_message"],
            created_at=db.decode_time(row["created_at"]),
            updated_at=db.decode_time(row["updated_at"]),
            generation_started_at=db.decode_time(row["generation_started_at"]),
            generation_processed_at=db.decode_time(row["generation_processed_at"]),
            resolved_model=row.get("resolved_model"),
        )


def dependency_cycles(edges: Sequence[tuple[str, str]]) -> list[list[str]]:
    """Cycles of a dependency graph given as (task, dependency) edges, each as a path that ends where
    it starts ([a, b, a]; a self-dependency is [a, a]). Depth-first, without recursion (a chain of
    thousands of rows must not hit Python's recursion limit)."""
    graph: dict[str, list[str]] = {}
    for task, dependency in edges:
        graph.setdefault(task, []).append(dependency)
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    cycles = []
    for root in sorted(graph):
        if root in state:
            continue
        state[root] = 1
        path, stack = [root], [iter(graph[root])]
        while stack:
            child = next(stack[-1], None)
            if child is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(child) == 1:
                cycles.append(path[path.index(child):] + [child])
            elif child not in state:
                state[child] = 1
                path.append(child)
                stack.append(iter(graph.get(child, ())))
    return cycles


def _cycle_text(cycle: list[str], shown: int = 8) -> str:
    if len(cycle) <= shown:
        return " -> ".join(cycle)
    return " -> ".join(cycle[:shown // 2]) + f" -> ... ({len(cycle) - 1} rows) -> " + " -> ".join(cycle[-2:])


def _last_child(ids: list[str], dependencies: dict[str, list[str]]) -> str:
    """The child no sibling waits for (a travel job's stitch): the job's output is its output."""
    waited_for = {dependency for deps in dependencies.values() for dependency in deps}
    sinks = [task_id for task_id in ids if task_id not in waited_for]
    return (sinks or ids)[-1]


def _in_requested_order(existing: Sequence[tuple[Any, Any]], requested: Sequence[NewTask]) -> list[str]:
    """Existing children's ids, in the order of the requested child_keys where they match, then the rest."""
    by_key = {str(key): str(task_id) for task_id, key in existing}
    keys = [str(child.params[CHILD_KEY_PARAM]) for child in requested]
    ordered = [by_key.pop(key) for key in keys if key in by_key]
    return ordered + list(by_key.values())
