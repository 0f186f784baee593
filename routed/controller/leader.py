"""Leader election through an etcd lease: one controller replica works, the others wait.

The leader is whoever created the key keys.leader(name) with its own lease attached
(create-if-absent, one transaction). It refreshes the lease every ttl/3 seconds and
checks the key still carries that lease; the first refresh that fails or finds the
lease gone ends its leadership at once (it stops working before the lease can have
expired, so two leaders never overlap by more than one refresh interval). When the
leader dies, etcd deletes the key as the lease expires (at most ttl seconds); when it
stops cleanly it revokes the lease and a waiting replica, which watches the key, takes
over immediately.

The work itself (GC) is safe even if two replicas ran it at once: every release is a
transaction comparing what it read. Leadership only keeps the work from being done
twice.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from typing import Callable

from routed.datastore import Compare, Op, keys
from routed.datastore.kv import KV
from routed.errors import RoutedError

log = logging.getLogger("routed.controller")


def default_identity() -> str:
    """The pod's name in a cluster (the chart sets POD_NAME), else host and process."""
    return os.environ.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}"


class LeaderElector:
    def __init__(self, kv: KV, name: str = "controller", identity: str | None = None, ttl: int = 15,
                 on_started: Callable[[], None] = lambda: None, on_stopped: Callable[[], None] = lambda: None):
        if ttl < 2:
            raise ValueError("the lease TTL must be at least 2 seconds")
        self.kv, self.key, self.ttl = kv, keys.leader(name), ttl
        self.identity = identity or default_identity()
        self.on_started, self.on_stopped = on_started, on_stopped
        self.leading = threading.Event()
        self.lease = 0  # the lease of our leadership, while leading
        self.terms = 0  # how many times this elector became leader

    def holder(self) -> str | None:
        """Who leads now, as etcd says."""
        item = self.kv.get(self.key)
        return item.value.decode() if item else None

    def run(self, stop: threading.Event) -> None:
        """Campaign, lead, and campaign again after losing leadership, until stop is set."""
        while not stop.is_set():
            try:
                revision = self._campaign()
                if revision is None:
                    self._lead(stop)
                else:
                    self._wait_for_vacancy(stop, revision)
            except RoutedError as err:
                log.warning("leader election: %s; retrying", err)
                stop.wait(min(2.0, self.ttl / 3))

    def _campaign(self) -> int | None:
        """None when we became leader; else the revision to watch the holder's key from."""
        held = self.kv.get(self.key)
        if held is not None:  # someone leads: no lease to grant and revoke
            return held.mod_revision
        lease = self.kv.lease_grant(self.ttl)
        result = self.kv.txn([Compare.absent(self.key)], [Op.put(self.key, self.identity, lease)],
                             [Op.get(self.key)])
        if result.succeeded:
            self.lease = lease
            return None
        self.kv.lease_revoke(lease)
        return result.revision

    def _lead(self, stop: threading.Event) -> None:
        self.terms += 1
        self.leading.set()
        log.info("leader election: %s leads (%s, lease %x)", self.identity, self.key, self.lease)
        try:
            self.on_started()
            while not stop.wait(self.ttl / 3):
                problem = self._refresh()
                if problem:
                    log.warning("leader election: %s stops leading: %s", self.identity, problem)
                    break
        finally:
            self.leading.clear()
            lease, self.lease = self.lease, 0
            try:
                self.on_stopped()
            finally:
                self._revoke(lease)

    def _refresh(self) -> str | None:
        """None while our lease lives and the key carries it; else what went wrong."""
        try:
            if self.kv.lease_keepalive(self.lease) <= 0:
                return "the lease expired"
            item = self.kv.get(self.key)
        except RoutedError as err:
            return f"cannot refresh the lease: {err}"
        if item is None or item.lease != self.lease:
            return "the leader key is gone or belongs to another lease"
        return None

    def _revoke(self, lease: int) -> None:
        """Give leadership up at once (a waiting replica is watching the key)."""
        try:
            self.kv.lease_revoke(lease)
        except RoutedError as err:
            log.info("leader election: revoking lease %x: %s (it expires by itself)", lease, err)

    def _wait_for_vacancy(self, stop: threading.Event, revision: int) -> None:
        """Until the key is deleted (the leader's lease ended), at most ttl/3 seconds at a time."""
        watch = self.kv.watch(self.key, revision + 1)
        try:
            event = watch.get(timeout=self.ttl / 3)
            while event is not None and not stop.is_set():
                if event.type == "resync" or (event.type == "delete" and event.kv and event.kv.key == self.key):
                    return
                event = watch.get(timeout=self.ttl / 3)
        finally:
            watch.cancel()


__all__ = ["LeaderElector", "default_identity"]
