"""What every benchmark shares: a private etcd, timing, and the report line."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from tests.support.etcd import EtcdServer

TMPFS_DIR = "/dev/shm"


def seconds() -> float:
    """How long each timed run lasts (python -m bench --seconds N)."""
    return float(os.environ.get("ROUTED_BENCH_SECONDS", "3"))


def on_tmpfs() -> bool:
    return os.environ.get("ROUTED_BENCH_TMPFS") == "1"


def filesystem_of(path: str | Path) -> str:
    """'tmpfs on /dev/shm', 'ext4 on /', ...: the mount that holds path, from /proc/mounts."""
    path = os.path.realpath(path)
    best = ("?", "")
    with open("/proc/mounts") as mounts:
        for line in mounts:
            _, mount, fstype, *_ = line.split()
            if (path == mount or path.startswith(mount.rstrip("/") + "/")) and len(mount) > len(best[1]):
                best = (fstype, mount)
    return f"{best[0]} on {best[1]}"


@contextmanager
def private_etcd():
    """A fresh etcd on loopback for one benchmark, in a temp dir on disk (the default:
    the system's temp dir, /tmp) or on tmpfs (/dev/shm, with --tmpfs). Stopped by PID
    and removed afterwards."""
    base = TMPFS_DIR if on_tmpfs() else None
    workdir = Path(tempfile.mkdtemp(prefix="routed-bench-", dir=base))
    server = EtcdServer(workdir / "etcd")
    try:
        server.start()
        print(f"   etcd {server.url}, data dir {workdir} ({filesystem_of(workdir)})")
        yield server
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def run_for(duration: float, op) -> tuple[int, float]:
    """Call op() back to back for duration seconds: (calls, seconds taken)."""
    n, start = 0, time.monotonic()
    end = start + duration
    while True:
        op()
        n += 1
        now = time.monotonic()
        if now >= end:
            return n, now - start


def report(name: str, value: float, reference: float, unit: str) -> None:
    """One line: our figure, the reference measured in the same run, and their ratio."""
    ratio = value / reference if reference else float("nan")
    print(f"   {name:<44} {value:9.1f} {unit:<8} reference {reference:9.1f} {unit:<8} ratio {ratio:.2f}x")


def note(text: str) -> None:
    print(f"   {text}")
