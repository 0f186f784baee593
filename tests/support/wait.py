"""Waiting for something the system does asynchronously (never a timing assertion)."""

from __future__ import annotations

import time


def eventually(predicate, what: str, timeout: float = 15.0, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting: {what}"
        time.sleep(interval)
