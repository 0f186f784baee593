"""Opening rtnetlink sockets (pyroute2 IPRoute) in a netns, and errno helpers.

An IPRoute is bound to the netns its socket was created in, so a socket for another
netns is opened with the thread switched into it (``in_netns``) rather than with
``IPRoute(netns=...)``, which forks a helper process per socket (see netns.py).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from pyroute2 import IPRoute, NetlinkError

from routed.dataplane.errors import DataplaneError
from routed.dataplane.netns import NetnsTarget, in_netns

__all__ = ["IPRoute", "NetlinkError", "open_host", "open_in", "step", "code_of"]


def open_in(target: NetnsTarget) -> IPRoute:
    """An IPRoute whose socket lives in ``target`` (None = the current netns).
    The caller closes it. Raises OSError when the netns is missing; never creates one."""
    with in_netns(target):
        return IPRoute()


def open_host(netns: str | None) -> IPRoute:
    """The host (node) socket: ``None`` for the agent's own netns, a name for tests.

    pyroute2 0.9 IPRoute objects are bound to the event loop of the thread that created
    them; calls from another thread work but keep one IPRoute per thread to be safe."""
    return open_in(netns)


def code_of(err: BaseException) -> int | None:
    if isinstance(err, NetlinkError):
        return err.code
    if isinstance(err, OSError):
        return err.errno
    return None


@contextmanager
def step(what: str, error: type[DataplaneError] = DataplaneError) -> Iterator[None]:
    """Turn a netlink/OS failure into a one-line DataplaneError that names the step.
    The errno is kept on the error (``.errno``) for callers that branch on it."""
    try:
        yield
    except (NetlinkError, OSError) as err:
        code = code_of(err)
        reason = os.strerror(code) if code else str(err)
        raise error(f"{what}: {reason}", errno=code) from err
