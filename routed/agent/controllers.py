"""The agent's controllers: desired state from etcd, applied to the node, resynced on a timer.

A controller (the Controller protocol) has a name, an interval (the longest it goes
between two passes of its loop while healthy), a count of failed passes, run(stop, beat)
(reconcile on every relevant change and at least every interval, calling beat() once
per pass) and cleanup() (undo what it installed, for node removal). Controllers runs them: a thread
each, a heartbeat each (liveness.Heartbeats, behind /healthz), and cleanup() on stop
when the agent is asked to leave the node clean.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from typing import Callable, Iterable, Protocol

from routed import resources as r
from routed.datastore import keys
from routed.datastore.kv import KV
from routed.errors import RoutedError

from .liveness import Heartbeats

log = logging.getLogger("routed.agent")


class Controller(Protocol):
    name: str
    interval: float
    failures: int  # passes that failed so far (errors are logged, the loop goes on)

    def run(self, stop: threading.Event, beat: Callable[[], None]) -> None: ...

    def cleanup(self) -> None: ...


class Controllers:
    """Runs controllers until stop is set."""

    def __init__(self, stop: threading.Event, heartbeats: Heartbeats):
        self.stop_event, self.heartbeats = stop, heartbeats
        self._crashes: Counter = Counter()  # controller name -> times its run() raised
        self._running: list[tuple[Controller, threading.Thread]] = []

    def errors(self) -> dict[str, int]:
        """Failed passes and crashes, per controller (a counter: it only grows)."""
        return {c.name: c.failures + self._crashes[c.name] for c, _ in self._running}

    def start(self, controller: Controller) -> None:
        self.heartbeats.register(controller.name, controller.interval)
        thread = threading.Thread(target=self._run, args=(controller,), name=controller.name, daemon=True)
        thread.start()
        self._running.append((controller, thread))

    def _run(self, controller: Controller) -> None:
        try:
            controller.run(self.stop_event, lambda: self.heartbeats.beat(controller.name))
        except Exception:
            # Its heartbeat stops with it: /healthz names it and the agent gets restarted.
            self._crashes[controller.name] += 1
            log.exception("controller %s crashed", controller.name)
            return
        self.heartbeats.forget(controller.name)

    def stop(self, cleanup: bool) -> None:
        """Wait for the controllers to return; with cleanup, undo what each installed,
        last started first. One failing cleanup does not keep the others from theirs."""
        self.stop_event.set()
        for _, thread in self._running:
            thread.join(timeout=5)
        if not cleanup:
            return
        for controller, _ in reversed(self._running):
            try:
                controller.cleanup()
                log.info("controller %s: cleaned up", controller.name)
            except Exception as err:
                log.warning("controller %s: cleanup failed: %s", controller.name, err)


class Blackholes(Protocol):
    def sync_blackholes(self, cidrs: set[str]) -> tuple[set[str], set[str]]: ...


class BlockRoutes:
    """A blackhole route for every block the node owns.

    Pods' /32 routes are more specific; the blackhole drops traffic for the block's
    unassigned addresses here instead of sending it back out of the default route.
    """

    name = "block-routes"

    def __init__(self, kv: KV, routes: Blackholes, node: str, resync: float = 30.0):
        self.kv, self.routes, self.node, self.interval = kv, routes, node, resync
        self.failures = 0

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

    def run(self, stop: threading.Event, beat: Callable[[], None]) -> None:
        while not stop.is_set():
            beat()
            try:
                watch = self.kv.watch(keys.affinity(self.node), self.sync() + 1)
            except RoutedError as err:
                self.failures += 1
                log.warning("block routes: %s; retrying", err)
                stop.wait(2)
                continue
            try:
                next_sync = time.monotonic() + self.interval
                while not stop.is_set():
                    beat()
                    # Short waits, so a stopping agent is not held up for a whole resync period.
                    event = watch.get(timeout=1.0)
                    while event is not None and watch.get(timeout=0.05) is not None:
                        pass  # a burst of changes is one sync
                    if event is not None or time.monotonic() >= next_sync:
                        self.sync()
                        next_sync = time.monotonic() + self.interval
            except RoutedError as err:
                self.failures += 1
                log.warning("block routes: %s; resyncing", err)
            finally:
                watch.cancel()

    def cleanup(self) -> None:
        self.routes.sync_blackholes(set())


class Every:
    """Run fn at once and then every interval seconds until stopped; errors are logged
    and counted, never fatal. cleanup: what undoes fn's work, if anything."""

    def __init__(self, name: str, interval: float, fn: Callable[[], object],
                 cleanup: Callable[[], object] | None = None):
        self.name, self.interval, self.fn = name, interval, fn
        self._cleanup = cleanup
        self.failures = 0

    def run(self, stop: threading.Event, beat: Callable[[], None]) -> None:
        while not stop.is_set():
            try:
                self.fn()
            except Exception as err:
                self.failures += 1
                log.warning("%s: %s", self.name, err)
            beat()
            stop.wait(self.interval)

    def cleanup(self) -> None:
        if self._cleanup is not None:
            self._cleanup()


class Loop:
    """A controller that is just a loop, run(stop, beat), with nothing to clean up."""

    def __init__(self, name: str, interval: float, run: Callable[[threading.Event, Callable[[], None]], None]):
        self.name, self.interval, self.run = name, interval, run
        self.failures = 0  # run() handles its own errors

    def cleanup(self) -> None:
        pass


class Pools(Protocol):
    def list(self, cls: type) -> Iterable: ...


class NatOutgoing:
    """Masquerade for pools with natOutgoing, toward addresses outside every pool."""

    def __init__(self, store: Pools, netns: str | None):
        self.store, self.netns = store, netns

    def sync(self) -> None:
        from routed.dataplane import nat

        pools = list(self.store.list(r.IPPool))
        for family in (4, 6):
            mine = [p for p in pools if p.network.version == family]
            nat.sync(self.netns, [p.spec.cidr for p in mine if p.spec.nat_outgoing and not p.spec.disabled],
                     [p.spec.cidr for p in mine], family)

    def cleanup(self) -> None:
        from routed.dataplane import nat

        nat.remove(self.netns, 4)
        nat.remove(self.netns, 6)
