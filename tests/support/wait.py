"""Waiting for something the system does asynchronously (never a timing assertion)."""

from __future__ import annotations

import time


def eventually(predicate, what: str, timeout: float = 15.0, interval: float = 0.05, details=None):
    """Poll predicate until it returns something true, and return that. On timeout, fail
    naming what was awaited, with details() (logs, state) when given."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out ({timeout:.0f}s) waiting for {what}"
                                 + (f"\n{details()}" if details else ""))
        time.sleep(interval)
