"""The claim loop: claim -> route to the handler -> run it (with a heartbeat) -> write back.

The handler runs in its own thread so the loop can enforce the shutdown grace period; the lease is kept
by the heartbeat thread; maintenance and NOTIFY wake-ups run in the background. What happens to the
row is decided here, from the handler's result or the type of what it raised:

  HandlerResult                      -> Complete (or parked with children)
  bad params / unknown task_type /   -> Failed at once (permanent; the message names field and rule)
  engine request, model, weights,
  load and out-of-memory errors
  TaskCancelled / GenerationCancelled -> nothing: the row is already Cancelled or no longer ours
  DeviceFault (the GPU failed),       -> Queued again after retry_base_seconds for another worker (the
  StorageError (the output folder       attempt counts, so a task that breaks every GPU still ends
  is read-only or full)                  Failed at max_attempts)
  TaskTimeout (over                    -> like anything else (below); a handler that does not stop within
  task_timeout_seconds)                  grace_seconds also makes the worker exit for a restart
  anything else                       -> Queued again after exponential backoff with jitter, until
                                         max_attempts, then Failed with the last error
Database outages are retried (tenacity) with backoff: the worker never dies because Postgres restarted.
A broken GPU is another matter: after a sticky device fault, or max_device_faults in a row with no
generation finishing between them, the worker stops claiming and run() returns EXIT_DEVICE_FAULT, so that
systemd (Restart=on-failure) starts a fresh process with a fresh CUDA context.
Likewise after max_storage_errors in a row (or an output folder it cannot write at start-up) it stops
claiming and returns EXIT_STORAGE, so a broken disk does not drain the queue into Failed.
"""
from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

import structlog
import tenacity

from wan_engine import errors as engine_errors
from worker import errors, sdnotify, video
from worker.config import WorkerConfig
from worker.db import Undecodable, is_transient
from worker.handlers import Handler, HandlerResult, TaskContext, left_for_other_workers, load_handlers
from worker.heartbeat import Heartbeat
from worker.inputs import fetcher_for
from worker.maintenance import Maintenance
from worker.paths import check_writable
from worker.resources import WorkerResources
from worker.store import HeartbeatState, Task, TaskStore
from worker.wakeup import Wakeup

PERMANENT_ERRORS: tuple[type[BaseException], ...] = (
    errors.ValidationError,
    engine_errors.InvalidRequest,  # includes UnknownModel
    engine_errors.WeightsMissing,
    engine_errors.LoadError,
    engine_errors.OutOfMemory,
)
CANCELLATION_ERRORS: tuple[type[BaseException], ...] = (errors.TaskCancelled, engine_errors.GenerationCancelled)
EXIT_DEVICE_FAULT = 70  # EX_SOFTWARE (sysexits.h): a restart is needed (the GPU failed, or a task would not stop)
EXIT_WORKER_ID_IN_USE = 2  # a configuration error: another live process runs under this worker id
EXIT_STORAGE = 74  # EX_IOERR (sysexits.h): the output folder cannot be written

T = TypeVar("T")


@dataclass
class _Released:
    """The shutdown grace period ran out before the handler finished."""


@dataclass
class _Raised:
    error: BaseException


Outcome = HandlerResult | _Raised | _Released


class Worker:
    """One worker process: `run()` until stopped (SIGTERM/SIGINT call `request_stop()`)."""

    def __init__(
        self,
        config: WorkerConfig,
        store: TaskStore,
        *,
        handlers: dict[str, Handler] | None = None,
        resources: WorkerResources | None = None,
    ):
        self.config = config
        self.store = store
        video.set_max_image_pixels(config.max_image_pixels)
        self.handlers = load_handlers() if handlers is None else handlers
        self.left_queued = left_for_other_workers(config.task_types, self.handlers)
        self.resources = resources or WorkerResources.from_config(config)
        self.log = structlog.get_logger("worker").bind(worker_id=config.worker_id)
        self.watchdog = sdnotify.Watchdog()
        self.wakeup = Wakeup(store.db, listen=config.notify_wakeups, log=self.log)
        self.maintenance = Maintenance(
            store, lease_seconds=config.lease_seconds, interval_seconds=config.maintenance_seconds, log=self.log
        )
        self._stopping = threading.Event()  # stop claiming; the running task gets the grace period
        self._hurry = threading.Event()  # a second signal: release the running task now
        self.counts = {"completed": 0, "parked": 0, "failed": 0, "retried": 0, "cancelled": 0, "released": 0}
        self.consecutive_device_faults = 0
        self.consecutive_storage_errors = 0
        self.exit_code = 0  # EXIT_DEVICE_FAULT / EXIT_STORAGE once the device / the storage is given up on

    # ---- lifecycle ---------------------------------------------------------------------------------

    def request_stop(self) -> None:
        """First call: finish gracefully. Second call: do not wait for the grace period."""
        if self._stopping.is_set():
            self._hurry.set()
        self._stopping.set()
        self.wakeup.set()

    def run(self, *, once: bool = False, exit_when_idle: bool = False) -> int:
        """Claim and run tasks until stopped. once: at most one task. exit_when_idle: stop when nothing is
        ready to claim. Returns the process exit code: 0, or EXIT_DEVICE_FAULT when the device failed
        (the task it was running is back in the queue by then)."""
        task_types = self.config.task_types
        self.log.info("worker starting", task_types=list(task_types) if task_types else "all",
                      left_queued_for_other_workers=list(self.left_queued),
                      handlers=sorted(self.handlers), device=self.resources.device, database=self.store.db.dialect,
                      local_inputs_from=[str(root) for root in fetcher_for(self.config).local_roots or ()] or "any folder")
        try:
            twin = self._with_db_retry(self._live_twin, until=self._stopping)
            if twin is not None:
                self.log.error("another live worker runs under this worker id; refusing to start (give each "
                               "process its own --worker-id)", held_task_id=twin, exit_code=EXIT_WORKER_ID_IN_USE)
                self.exit_code = EXIT_WORKER_ID_IN_USE
                return self.exit_code
            unwritable = check_writable(self.config.output_dir)
            if unwritable is not None:
                self._give_up_storage(unwritable, self.log)
                return self.exit_code
            self._with_db_retry(self.maintenance.run_once, until=self._stopping)
            self.wakeup.start()
            self.maintenance.start()
            sdnotify.notify("READY=1", "STATUS=waiting for tasks")
            while not self._stopping.is_set():
                self.wakeup.clear()
                task = self._with_db_retry(self._claim, until=self._stopping)
                if task is None:
                    if once or exit_when_idle:
                        break
                    self.watchdog.ping()
                    self.wakeup.wait(self.config.poll_seconds)
                    continue
                self._run(task)
                if once:
                    break
        except _GaveUp:
            pass  # stopping while the database was unreachable
        finally:
            sdnotify.notify("STOPPING=1", "STATUS=stopping")
            self.maintenance.stop()
            self.wakeup.close()
            self.log.info("worker stopped", exit_code=self.exit_code, **self.counts)
        return self.exit_code

    def _live_twin(self) -> str | None:
        """The id of a row that another live process holds under this worker id, else None. A row held
        under it with a fresh lease may be a dead predecessor's (a restart): its heartbeat is watched for
        up to one lease; if it moves, a twin is alive."""
        me, lease = self.config.worker_id, self.config.lease_seconds
        seen = self.store.live_claims_of_worker(me, lease)
        deadline = time.monotonic() + lease
        while seen and time.monotonic() < deadline and not self._stopping.is_set():
            self.watchdog.ping()
            self._stopping.wait(min(self.config.heartbeat_seconds, max(0.0, deadline - time.monotonic())))
            now = self.store.live_claims_of_worker(me, lease)
            moved = [task_id for task_id, beat in now.items() if task_id in seen and beat != seen[task_id]]
            if moved:
                return moved[0]
            seen = {task_id: beat for task_id, beat in now.items() if task_id in seen}
        return None

    def _claim(self) -> Task | None:
        return self.store.claim(
            self.config.worker_id,
            self.config.task_types,
            self.resources.loaded_model,
            left_queued=self.left_queued,
            affinity_max_wait_seconds=self.config.affinity_max_wait_seconds,
        )

    # ---- one task ------------------------------------------------------------------------------------

    def _run(self, task: Task) -> None:
        log = self.log.bind(task_id=task.id, task_type=task.task_type, attempt=task.attempts)
        log.info("task claimed", max_attempts=task.max_attempts, priority=task.priority)
        sdnotify.notify(f"STATUS=running {task.task_type} {task.id}")
        ctx = TaskContext(task, self.store, self.config, self.resources, log)
        started = time.monotonic()
        heartbeat = Heartbeat(
            self.store, ctx.claim, self.config.heartbeat_seconds,
            on_stop=lambda _state: ctx.cancel(), on_interval=self.watchdog.ping,
            on_failure=self.maintenance.database_failed, log=log,
        )
        generations_before = self.resources.generations_completed
        with heartbeat:
            outcome = self._execute(ctx)
        if self.resources.generations_completed > generations_before:
            self.consecutive_device_faults = 0  # only a finished generation proves the GPU works
        try:
            self._settle(ctx, outcome, lease=heartbeat.state, log=log.bind(seconds=round(time.monotonic() - started, 3)))
        except _GaveUp:
            log.error("result not written: database unreachable at shutdown; the lease rescue will requeue it")
        sdnotify.notify("STATUS=waiting for tasks")

    def _execute(self, ctx: TaskContext) -> Outcome:
        """Run the handler in a thread; during shutdown give it grace_seconds, then release the row."""
        task = ctx.task
        handler = self.handlers.get(task.task_type)
        if handler is None:
            known = ", ".join(sorted(self.handlers))
            return _Raised(errors.ValidationError("task_type", f"unknown task_type {task.task_type!r}; known: {known}"))
        if isinstance(task.params, Undecodable):
            return _Raised(errors.ValidationError("params", f"cannot be decoded: {task.params.error}"))
        if not isinstance(task.params, dict):
            kind = type(task.params).__name__
            return _Raised(errors.ValidationError("params", f"must be a JSON object, got {kind} {task.params!r:.80}"))

        outcome: list[Outcome] = []

        def downloading(field: str, url: str) -> None:
            ctx.report_progress({"phase": "download", "field": field, "url": url})

        def call_handler() -> None:
            try:
                with ctx.inputs.active(downloading, ctx.raise_if_cancelled):  # path fields may be URLs: fetched here
                    result = handler(ctx)
                if not isinstance(result, HandlerResult):
                    raise TypeError(f"handler returned {type(result).__name__}, not HandlerResult")
                outcome.append(result)
            except BaseException as error:  # everything a handler raises is the poller's to judge
                outcome.append(_Raised(error))

        thread = threading.Thread(target=call_handler, name=f"task-{task.id[:8]}", daemon=True)
        thread.start()
        limit = self.config.task_timeout_seconds
        overdue_at = time.monotonic() + limit if limit is not None else None
        deadline: float | None = None  # the shutdown grace period's end
        stop_by: float | None = None  # set when the time limit passed: when the stopped handler must be gone
        while True:
            thread.join(timeout=0.25)
            if not thread.is_alive():
                if stop_by is not None and isinstance(outcome[0], _Raised) and isinstance(
                        outcome[0].error, CANCELLATION_ERRORS):
                    return _Raised(errors.TaskTimeout(f"ran longer than {limit:g} s (task_timeout_seconds); stopped"))
                return outcome[0]
            now = time.monotonic()
            if overdue_at is not None and stop_by is None and now >= overdue_at:
                stop_by = now + self.config.grace_seconds
                ctx.log.warning("task over its time limit: stopping it", task_timeout_seconds=limit)
                ctx.cancel()
            if stop_by is not None and now >= stop_by:
                self._give_up_hung_task(ctx.log)
                return _Raised(errors.TaskTimeout(
                    f"ran longer than {limit:g} s (task_timeout_seconds) and did not stop within "
                    f"{self.config.grace_seconds:g} s; its worker exits for a restart"))
            if self._stopping.is_set() and deadline is None:
                deadline = now + self.config.grace_seconds
                ctx.log.info("stopping: the running task has the grace period to finish",
                             grace_seconds=self.config.grace_seconds)
            if deadline is not None and (now >= deadline or self._hurry.is_set()):
                ctx.cancel()
                return _Released()

    def _settle(self, ctx: TaskContext, outcome: Outcome, *, lease: HeartbeatState, log: Any) -> None:
        """Write what the outcome means to the row (every write is fenced)."""
        task, claim = ctx.task, ctx.claim

        def write(method: Callable[..., T], *args: Any) -> T:
            return self._with_db_retry(lambda: method(claim, *args), until=self._hurry)

        if isinstance(outcome, _Released):
            released = write(self.store.release)
            self._count("released", log, "released unfinished at shutdown (attempt not counted)" if released
                        else "shutdown: row no longer ours")
            return
        if isinstance(outcome, HandlerResult):
            try:
                self._write_result(outcome, write, lease=lease, log=log)
            except (TypeError, ValueError) as error:  # not storable (NaN, a Path, a child without child_key)
                write(self.store.fail, f"handler result cannot be stored: {type(error).__name__}: {error}")
                self._count("failed", log, "task failed: its result cannot be stored", error=str(error))
            return

        error = permanent_cause(outcome.error) or outcome.error
        message = f"{type(error).__name__}: {error}"
        if isinstance(error, CANCELLATION_ERRORS):
            self._count("cancelled", log, "task stopped", reason=lease.value, error=message)
        elif isinstance(error, PERMANENT_ERRORS):
            write(self.store.fail, message)
            self._count("failed", log, "task failed (permanent)", error=message)
        elif task.attempts >= task.max_attempts:
            write(self.store.fail, f"{message} (attempt {task.attempts} of {task.max_attempts}; giving up)")
            self._count("failed", log, "task failed: attempts used up", error=message, exc_info=error)
        elif isinstance(error, (engine_errors.DeviceFault, errors.StorageError)):
            # Not the task's fault: back in the queue soon, for a worker whose GPU and disk work.
            delay = self.config.retry_base_seconds
            write(self.store.retry_later, f"{message} (attempt {task.attempts} of {task.max_attempts}; "
                                          "requeued for another worker)", delay)
            self._count("retried", log, "device or storage failed; task requeued", error=message,
                        retry_in_seconds=delay, exc_info=error)
        else:
            delay = self._retry_delay_seconds(task.attempts)
            write(self.store.retry_later, f"{message} (attempt {task.attempts} of {task.max_attempts}; will retry)", delay)
            self._count("retried", log, "task will be retried", error=message, retry_in_seconds=round(delay, 1),
                        exc_info=error)
        if isinstance(error, engine_errors.DeviceFault):
            self._device_failed(error, log)
        if isinstance(error, errors.StorageError):
            self._storage_failed(error, log)

    def _write_result(self, outcome: HandlerResult, write: Callable[..., Any], *, lease: HeartbeatState,
                      log: Any) -> None:
        """Complete the row, or park it with its children (fenced writes)."""
        if outcome.park_children is not None:
            parked = write(self.store.park_with_children, outcome.park_children, outcome.park_progress)
            if parked is None:
                self._count("cancelled", log, "children not inserted: lease lost or task cancelled")
            elif parked.completed:
                self._count("completed", log, "every child had completed: the job completed again",
                            children=len(parked.ids))
            else:
                self._count("parked", log, "parked until its children finish", children=len(parked.ids),
                            requeued_children=parked.requeued)
            return
        written = write(self.store.complete, outcome.output_location, outcome.result_data)
        if outcome.output_location:
            self.consecutive_storage_errors = 0  # the handler wrote its output
        if written:
            self._count("completed", log, "task complete", output_location=outcome.output_location)
        else:
            self._count("cancelled", log, "result discarded: lease lost or task cancelled", lease=lease.value)

    def _device_failed(self, fault: engine_errors.DeviceFault, log: Any) -> None:
        """Count a device fault (its task is already written back); give the device up, that is stop
        claiming and exit with EXIT_DEVICE_FAULT, when it is sticky or the faults in a row reach
        max_device_faults."""
        self.consecutive_device_faults += 1
        limit = self.config.max_device_faults
        if fault.sticky or self.consecutive_device_faults >= limit:
            self.exit_code = EXIT_DEVICE_FAULT
            self._stopping.set()
            self.wakeup.set()
            log.error("device unusable; exiting for a restart", sticky=fault.sticky, exit_code=EXIT_DEVICE_FAULT,
                      consecutive_device_faults=self.consecutive_device_faults, max_device_faults=limit)

    def _give_up_hung_task(self, log: Any) -> None:
        """A handler that ignores being stopped (stuck in a GPU kernel, a subprocess, C code) cannot be
        taken back from this process: stop claiming and exit with EXIT_DEVICE_FAULT for a restart."""
        self.exit_code = EXIT_DEVICE_FAULT
        self._stopping.set()
        self.wakeup.set()
        log.error("task did not stop after its time limit; exiting for a restart", exit_code=EXIT_DEVICE_FAULT,
                  task_timeout_seconds=self.config.task_timeout_seconds, grace_seconds=self.config.grace_seconds)

    def _storage_failed(self, error: errors.StorageError, log: Any) -> None:
        """Count a storage error (its task is already back in the queue); at max_storage_errors in a row
        stop claiming, so a read-only or full output folder does not drain the queue into Failed, and
        exit with EXIT_STORAGE, saying why."""
        self.consecutive_storage_errors += 1
        if self.consecutive_storage_errors >= self.config.max_storage_errors:
            self._give_up_storage(error, log)

    def _give_up_storage(self, error: errors.StorageError, log: Any) -> None:
        """Stop claiming and exit with EXIT_STORAGE, saying why."""
        self.exit_code = EXIT_STORAGE
        self._stopping.set()
        self.wakeup.set()
        log.error("output storage unusable; stopping (fix the folder, then restart)", error=str(error),
                  output_dir=str(self.config.output_dir), exit_code=EXIT_STORAGE,
                  consecutive_storage_errors=self.consecutive_storage_errors,
                  max_storage_errors=self.config.max_storage_errors)

    def _retry_delay_seconds(self, attempts: int) -> float:
        """Exponential backoff with jitter: base * 2^(attempts-1), capped, then scaled by U(0.5, 1)."""
        ceiling = min(self.config.retry_max_seconds, self.config.retry_base_seconds * 2 ** (attempts - 1))
        return ceiling * random.uniform(0.5, 1.0)

    def _count(self, outcome: str, log: Any, event: str, **fields: Any) -> None:
        self.counts[outcome] += 1
        level = log.warning if outcome in ("failed", "retried") else log.info
        level(event, outcome=outcome, **fields)

    # ---- database outages ------------------------------------------------------------------------------

    def _with_db_retry(self, call: Callable[[], T], *, until: threading.Event) -> T:
        """Run `call`, retrying transient database errors with capped exponential backoff and jitter for as
        long as it takes, unless `until` is set (then raise _GaveUp)."""

        def log_retry(state: tenacity.RetryCallState) -> None:
            self.watchdog.ping()  # an outage is not a hung worker
            self.maintenance.database_failed()  # lease rescue waits until heartbeats can resume
            self.log.warning("database unavailable; retrying", error=str(state.outcome.exception()),
                             attempt=state.attempt_number, retry_in_seconds=round(state.upcoming_sleep, 2))

        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception(is_transient),
            wait=tenacity.wait_random_exponential(multiplier=0.2, max=10.0),
            stop=lambda _state: until.is_set(),
            sleep=until.wait,
            before_sleep=log_retry,
            reraise=True,
        )
        try:
            return retrying(call)
        except Exception as error:
            if is_transient(error) and until.is_set():
                raise _GaveUp() from error
            raise


# How allocators word a failed host allocation inside a RuntimeError or OSError (torch's CPU allocator,
# ENOMEM from fork or mmap).
_ALLOCATION_FAILURES = ("can't allocate memory", "Cannot allocate memory", "out of memory")


def permanent_cause(error: BaseException) -> BaseException | None:
    """The permanent error an unexpected one stands for, or None. MemoryError or an allocator's
    failure is OutOfMemory: the same task on the same box would run out again, and a retry could take
    the next worker down too. RecursionError comes from params nested too deeply for the handler."""
    words = str(error)
    if isinstance(error, RecursionError):
        return errors.ValidationError("params", "nested too deeply to process (RecursionError)")
    if isinstance(error, MemoryError) or (
            isinstance(error, (RuntimeError, OSError)) and any(failure in words for failure in _ALLOCATION_FAILURES)):
        return engine_errors.OutOfMemory(f"host memory exhausted: {type(error).__name__}: {words[:300]}")
    return None


class _GaveUp(Exception):
    """A database call was abandoned because the worker is stopping."""
