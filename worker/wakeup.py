"""Wake-ups of the claim loop: Postgres NOTIFY on the `wan_worker_tasks` channel, received by a
dedicated psycopg connection (outside the pool, reconnecting with backoff), and polling as the fallback
(the only way on SQLite)."""
from __future__ import annotations

import threading

import psycopg
import structlog

from worker.db import CONNECT_TIMEOUT_SECONDS, NOTIFY_CHANNEL, Database

RECONNECT_MAX_SECONDS = 30.0


class Wakeup:
    """An event the claim loop waits on: set by a notification, by a (re)connected listener (it may have
    missed notifications), or by `set()` (shutdown)."""

    def __init__(self, db: Database, *, listen: bool, log: structlog.typing.FilteringBoundLogger):
        self._event = threading.Event()
        self._closing = threading.Event()
        self._log = log
        self._conninfo = db.listen_conninfo() if listen and db.is_postgres else None
        self._thread = threading.Thread(target=self._listen, name="listen", daemon=True)

    def start(self) -> None:
        if self._conninfo is not None:
            self._thread.start()

    def close(self) -> None:
        self._closing.set()
        self.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def set(self) -> None:
        self._event.set()

    def clear(self) -> None:
        self._event.clear()

    def wait(self, timeout_seconds: float) -> bool:
        """True when woken before the timeout."""
        return self._event.wait(timeout_seconds)

    def _listen(self) -> None:
        delay = 0.5
        while not self._closing.is_set():
            try:
                with psycopg.connect(self._conninfo, autocommit=True, connect_timeout=CONNECT_TIMEOUT_SECONDS) as conn:
                    conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
                    self._log.debug("listening for task notifications", channel=NOTIFY_CHANNEL)
                    self._event.set()
                    delay = 0.5
                    while not self._closing.is_set():
                        for _ in conn.notifies(timeout=1.0):
                            self._event.set()
            except psycopg.Error as error:
                self._log.warning("notification connection lost; polling until it is back",
                                  error=str(error), retry_in_seconds=delay)
                self._closing.wait(delay)
                delay = min(delay * 2, RECONNECT_MAX_SECONDS)
