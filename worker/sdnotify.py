"""systemd's sd_notify protocol (Type=notify, WatchdogSec): a datagram to $NOTIFY_SOCKET.
Everything here is a no-op when the worker does not run under systemd."""
from __future__ import annotations

import os
import socket
import threading
import time


def notify(*assignments: str) -> bool:
    """Send e.g. notify("READY=1", "STATUS=idle"); False when there is no NOTIFY_SOCKET or it cannot be
    reached (like sd_notify, a failure never stops the worker)."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # abstract namespace
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall("\n".join(assignments).encode())
    except OSError:
        return False
    return True


class Watchdog:
    """WATCHDOG=1 pings at half of systemd's WatchdogSec, whichever thread proves liveness calls ping()
    (the claim loop when idle, the heartbeat thread while a task runs)."""

    def __init__(self) -> None:
        usec = os.environ.get("WATCHDOG_USEC")
        pid = os.environ.get("WATCHDOG_PID")
        enabled = bool(usec) and (not pid or int(pid) == os.getpid())
        self.interval_seconds: float | None = int(usec) / 2e6 if enabled and usec else None
        self._last = 0.0
        self._lock = threading.Lock()

    def ping(self) -> None:
        if self.interval_seconds is None:
            return
        with self._lock:
            now = time.monotonic()
            if now - self._last < self.interval_seconds:
                return
            self._last = now
        notify("WATCHDOG=1")
