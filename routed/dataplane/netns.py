"""Run a block of code with the calling thread in another network namespace.

Why this exists: /proc/sys/net and newly created sockets belong to the netns of the
calling *thread*, and Python 3.11 has no os.setns. pyroute2's own helpers are not a
fit: ``IPRoute(netns=...)`` forks a child process to open the socket (~9 ms here,
against ~0.3 ms for setns + IPRoute()), creates the netns when it is missing (its
default flags are os.O_CREAT), and ``pyroute2.netns.pushns`` saves /proc/self/ns/net,
which is the main thread's netns, not the calling thread's.

Keep the blocks small: while inside, every socket this thread opens (logging to a
unix socket included) lands in the other netns. Other threads are unaffected.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterator
from contextlib import contextmanager

CLONE_NEWNET = 0x40000000
NETNS_RUN_DIR = "/var/run/netns"

_libc = ctypes.CDLL(None, use_errno=True)

NetnsTarget = str | int | None


def netns_path(name_or_path: str) -> str:
    """A bare name means a named netns (``ip netns add NAME``); anything with a slash is
    already a path (CNI_NETNS, /proc/<pid>/ns/net)."""
    if "/" in name_or_path:
        return name_or_path
    return f"{NETNS_RUN_DIR}/{name_or_path}"


def open_netns(name_or_path: str) -> int:
    """An O_RDONLY fd on the netns file; raises FileNotFoundError when it is missing.
    Never creates anything."""
    return os.open(netns_path(name_or_path), os.O_RDONLY | os.O_CLOEXEC)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        # EINVAL: the file is not a network namespace (a plain file, a stale mount point).
        raise OSError(err, os.strerror(err))


@contextmanager
def in_netns(target: NetnsTarget) -> Iterator[None]:
    """Switch the calling thread into ``target`` for the block, and back afterwards.

    ``target``: None = stay where we are (the production agent runs in the host netns);
    a name or a path; or an open fd on a netns file (not closed here).
    """
    if target is None:
        yield
        return
    # thread-self, not self: in a multi-threaded agent /proc/self is the main thread.
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        if isinstance(target, int):
            _setns(target)
        else:
            fd = open_netns(target)
            try:
                _setns(fd)
            finally:
                os.close(fd)
        try:
            yield
        finally:
            try:
                _setns(home)
            except OSError as err:
                # Cannot happen with an fd we hold open; if it ever does, this thread
                # would go on configuring the wrong netns. SystemExit gets past
                # "except Exception" and ends the thread (or the process) instead.
                raise SystemExit(f"routed: cannot return to the original netns: {err}") from err
    finally:
        os.close(home)
