"""Is the agent alive? Pure bookkeeping behind /healthz: controllers' heartbeats and the
CNI requests in flight. A thread that always answers "ok" proves nothing; these ages do.
"""

from __future__ import annotations

import itertools
import threading
import time
from contextlib import contextmanager


class Heartbeats:
    """Each controller beats once per pass of its loop (kube-router style). One that has
    not beaten for its interval plus `grace` is wedged or dead, and /healthz says which."""

    def __init__(self, grace: float, clock=time.monotonic):
        self.grace, self.clock = grace, clock
        self._lock = threading.Lock()
        self._beats: dict[str, tuple[float, float]] = {}  # name -> (interval, last beat)

    def register(self, name: str, interval: float) -> None:
        with self._lock:
            self._beats[name] = (interval, self.clock())

    def beat(self, name: str) -> None:
        with self._lock:
            interval, _ = self._beats[name]
            self._beats[name] = (interval, self.clock())

    def forget(self, name: str) -> None:
        """A controller that returned because the agent stops is not a dead one."""
        with self._lock:
            self._beats.pop(name, None)

    def stale(self) -> list[str]:
        now = self.clock()
        with self._lock:
            return [f"controller {name} has not run for {now - last:.0f}s (expected every {interval:g}s)"
                    for name, (interval, last) in sorted(self._beats.items())
                    if now - last > interval + self.grace]


class InFlight:
    """Requests being served, with when each started: the watchdog's view of the workers."""

    def __init__(self, clock=time.monotonic):
        self.clock = clock
        self._lock = threading.Lock()
        self._ids = itertools.count()
        self._running: dict[int, tuple[str, float]] = {}

    @contextmanager
    def track(self, what: str):
        key = next(self._ids)
        with self._lock:
            self._running[key] = (what, self.clock())
        try:
            yield
        finally:
            with self._lock:
                del self._running[key]

    def count(self) -> int:
        with self._lock:
            return len(self._running)

    def stuck(self, limit: float) -> list[str]:
        now = self.clock()
        with self._lock:
            return [f"{what} running for {now - started:.0f}s" for what, started in self._running.values()
                    if now - started > limit]


def verdict(problems: list[str]) -> tuple[bool, str]:
    """What /healthz answers: ok, or every problem on one line."""
    return (False, "; ".join(problems)) if problems else (True, "ok")
