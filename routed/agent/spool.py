"""Work that must survive the agent being away: the shim's DEL spool and deferred releases.

A pod's DEL must never be stuck, so when the shim cannot reach the agent it writes the
request to a spool directory; when the agent cannot reach etcd it keeps the handle to
release in its own directory. Both are replayed until they succeed.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Callable

from cni import wire

log = logging.getLogger("routed.spool")


def replay_shim_spool(directory: str | Path, dispatch: Callable[[dict, str], tuple[int, str]]) -> int:
    """Run each spooled DEL once; returns how many were done. Failed ones stay for next time."""
    done = 0
    path = Path(directory)
    if not path.is_dir():
        return 0
    for entry in sorted(path.glob("*.req")):
        try:
            env, stdin = wire.parse_request(entry.read_bytes())
        except (OSError, ValueError) as err:
            log.error("spool entry %s is unreadable (%s); moved aside", entry.name, err)
            entry.rename(entry.with_suffix(".bad"))
            continue
        if env.get("CNI_COMMAND") != "DEL":
            entry.rename(entry.with_suffix(".bad"))
            continue
        code, out = dispatch(env, stdin)
        if code == 0:
            entry.unlink(missing_ok=True)
            done += 1
            log.info("replayed spooled DEL for container %s", env.get("CNI_CONTAINERID"))
        else:
            log.warning("spooled DEL for container %s failed, will retry: %s", env.get("CNI_CONTAINERID"), out)
    return done


class PendingReleases:
    """Handles whose release could not reach etcd, one file each, retried by the agent."""

    def __init__(self, directory: str | Path):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.wake = threading.Event()

    def add(self, handle: str) -> None:
        """Durable before it returns: a DEL is answered on the strength of it."""
        tmp = self.dir / f".{handle}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, handle.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, self.dir / handle)
        self.wake.set()

    def handles(self) -> list[str]:
        return sorted(p.name for p in self.dir.iterdir() if not p.name.startswith("."))

    def run(self, release: Callable[[str], object], stop: threading.Event, interval: float = 5.0) -> None:
        """Release queued handles as soon as they come, and retry failures every interval."""
        while not stop.is_set():
            self.wake.wait(interval)
            self.wake.clear()
            if not stop.is_set():
                self.retry(release)

    def retry(self, release: Callable[[str], object]) -> int:
        done = 0
        for handle in self.handles():
            try:
                release(handle)
            except Exception as err:  # etcd still away: keep it for the next round
                log.debug("release of %s still pending: %s", handle, err)
                continue
            (self.dir / handle).unlink(missing_ok=True)
            done += 1
        return done
