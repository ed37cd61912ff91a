"""Maintenance every worker runs in the background, every maintenance_seconds (with jitter so a fleet
does not run it in lock-step): lease rescue (expired claims back to Queued, or Failed when their
attempts are used up) and the dependency cascade (rows that can never run end with a message)."""
from __future__ import annotations

import random
import threading

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
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="maintenance", daemon=True)

    def run_once(self) -> None:
        requeued = self.store.requeue_expired(self.lease_seconds)
        ended = self.store.cascade_dependencies()
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
