"""The agent's controllers: desired state from etcd, applied to the node, resynced on a timer.

Each has sync() (one full reconcile), run(stop) (sync on every relevant change and at
least every `resync` seconds) and cleanup() (undo what it installed, for node removal).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from routed.datastore import keys
from routed.errors import RoutedError

log = logging.getLogger("routed.agent")


class BlockRoutes:
    """A blackhole route for every block the node owns.

    Pods' /32 routes are more specific; the blackhole drops traffic for the block's
    unassigned addresses here instead of sending it back out of the default route.
    """

    name = "block-routes"

    def __init__(self, kv, routes, node: str, resync: float = 30.0):
        self.kv, self.routes, self.node, self.resync = kv, routes, node, resync

    def desired(self) -> tuple[set[str], int]:
        listing = self.kv.list(keys.affinity(self.node))
        cidrs = {str(keys.cidr_from_segment(keys.last_segment(i.key))) for i in listing.items}
        return cidrs, listing.revision

    def sync(self) -> int:
        cidrs, revision = self.desired()
        added, removed = self.routes.sync_blackholes(cidrs)
        if added or removed:
            log.info("block routes: +%s -%s", sorted(added) or "-", sorted(removed) or "-")
        return revision

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                watch = self.kv.watch(keys.affinity(self.node), self.sync() + 1)
            except RoutedError as err:
                log.warning("block routes: %s; retrying", err)
                stop.wait(2)
                continue
            try:
                next_sync = time.monotonic() + self.resync
                while not stop.is_set():
                    # Short waits, so a stopping agent is not held up for a whole resync period.
                    event = watch.get(timeout=1.0)
                    while event is not None and watch.get(timeout=0.05) is not None:
                        pass  # a burst of changes is one sync
                    if event is not None or time.monotonic() >= next_sync:
                        self.sync()
                        next_sync = time.monotonic() + self.resync
            except RoutedError as err:
                log.warning("block routes: %s; resyncing", err)
            finally:
                watch.cancel()

    def cleanup(self) -> None:
        self.routes.sync_blackholes(set())


class Every:
    """Run fn every interval seconds until stopped; errors are logged, never fatal."""

    def __init__(self, name: str, interval: float, fn: Callable[[], object]):
        self.name, self.interval, self.fn = name, interval, fn

    def run(self, stop: threading.Event) -> None:
        while not stop.wait(self.interval):
            try:
                self.fn()
            except Exception as err:
                log.warning("%s: %s", self.name, err)


class NatOutgoing:
    """Masquerade for pools with natOutgoing, toward addresses outside every pool."""

    name = "nat-outgoing"

    def __init__(self, store, netns: str | None):
        self.store, self.netns = store, netns

    def sync(self) -> None:
        from routed import resources as r
        from routed.dataplane import nat

        pools = [p for p in self.store.list(r.IPPool)]
        for family in (4, 6):
            mine = [p for p in pools if p.network.version == family]
            nat.sync(self.netns, [p.spec.cidr for p in mine if p.spec.nat_outgoing and not p.spec.disabled],
                     [p.spec.cidr for p in mine], family)

    def cleanup(self) -> None:
        from routed.dataplane import nat

        nat.remove(self.netns, 4)
        nat.remove(self.netns, 6)
