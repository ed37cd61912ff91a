"""Maintenance every worker runs in the background, every maintenance_seconds (with jitter so a fleet
does not run it in lock-step): lease rescue (expired claims back to Queued, or Failed when their
attempts are used up) and ending what can never run, with a message: dependency cycles, parked
orchestrators whose children were deleted, and the dependency cascade.

Lease rescue waits out a grace period (one lease) after any database error this worker saw (an
outage): a heartbeat older than the lease means a lost worker only while heartbeats
could be written. After an outage longer than the lease every running row looks expired; the grace
lets the live workers' heartbeats go first, so no healthy task is requeued.
"""
from __future__ import annotations

import random
import threading
import time

import structlog

from worker.store import TaskStore


class Maintenance:
    def __init__(
        self,
        store: TaskStore,
        *,
        lease_seconds: float,
        interval_seconds: float,
        log: structlog.typing.FilteringBoundLogger,
    ):
        self.store = store
        self.lease_seconds = lease_seconds
        self.interval_seconds = interval_seconds
        self.log = log
        self._rescue_after = time.monotonic()  # a fresh worker rescues at once: it saw no outage
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="maintenance", daemon=True)

    def database_failed(self) -> None:
        """Any database error this worker saw (claim, heartbeat, maintenance): rescue waits a grace
        period (one lease) after it."""
        self._rescue_after = time.monotonic() + self.lease_seconds

    def run_once(self) -> None:
        try:
            requeued = self.store.requeue_expired(self.lease_seconds) if time.monotonic() >= self._rescue_after else 0
            self.store.resolve_queued_models()
            ended = (self.store.fail_dependency_cycles() + self.store.fail_orphaned_parents()
                     + self.store.cascade_dependencies())
        except Exception:
            self.database_failed()
            raise
        if requeued or ended:
            self.log.info("maintenance", expired_leases=requeued, ended_by_cascade=ended)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_seconds * random.uniform(0.75, 1.25)):
            try:
                self.run_once()
            except Exception as error:  # an outage must not end maintenance
                self.log.warning("maintenance failed; retrying at the next interval", error=str(error))
