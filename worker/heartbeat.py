"""The lease of a running task: a thread that refreshes heartbeat_at every heartbeat_seconds from its
own pooled connection, and that tells the handler to stop when the row was cancelled or the lease
was lost (another worker or the lease rescue took it)."""
from __future__ import annotations

import threading
from typing import Callable

import structlog

from worker.store import Claim, HeartbeatState, TaskStore


class Heartbeat:
    """Use as a context manager around the handler. `on_stop` is called once on CANCELLED or LOST;
    `on_interval` after every attempt, successful or not (the systemd watchdog ping: the worker is
    alive even while the database is not); `on_failure` after a failed attempt."""

    def __init__(
        self,
        store: TaskStore,
        claim: Claim,
        interval_seconds: float,
        *,
        on_stop: Callable[[HeartbeatState], None],
        on_interval: Callable[[], None],
        on_failure: Callable[[], None],
        log: structlog.typing.FilteringBoundLogger,
    ):
        self.store, self.claim = store, claim
        self.interval_seconds = interval_seconds
        self.on_stop, self.on_interval, self.on_failure, self.log = on_stop, on_interval, on_failure, log
        self.state = HeartbeatState.ALIVE
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{claim.task_id[:8]}", daemon=True)

    def __enter__(self) -> "Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._done.set()
        self._thread.join()

    def _beat(self) -> None:
        while not self._done.wait(self.interval_seconds):
            self.on_interval()
            try:
                state = self.store.heartbeat(self.claim)
            except Exception as error:  # a database outage must not end the lease thread
                self.on_failure()
                self.log.warning("heartbeat failed; retrying at the next interval", error=str(error))
                continue
            if state is HeartbeatState.ALIVE:
                continue
            self.state = state
            self.log.warning(
                "task was cancelled; stopping it" if state is HeartbeatState.CANCELLED
                else "lease lost (rescued by another worker); stopping the task"
            )
            self.on_stop(state)
            return
