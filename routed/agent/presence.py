"""This node stays known while its agent runs: a liveness key under a lease the agent keeps
alive, and the Node resource, registered again whenever someone removes it.

The controller's node GC releases a node's blocks only when its liveness key is gone
(the lease ran out: the agent has not refreshed it for a whole TTL), with or without
Kubernetes. A Node deleted while its agent runs (an operator, an older controller, a
Kubernetes Node briefly missing) comes back from what the agent last saw of it: the
address, the labels, and what an operator set (AS number, route reflector cluster ID).
Blocks are never touched here: their affinities live beside the Node, not in it.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Callable

from routed import resources as r
from routed.datastore import keys
from routed.datastore.kv import KV
from routed.datastore.resources import ResourceStore
from routed.errors import CorruptData, RoutedError

log = logging.getLogger("routed.agent")


class NodePresence:
    def __init__(self, kv: KV, store: ResourceStore, name: str, address: str,
                 register: Callable[[r.Node | None], r.Node], ttl: int = 30,
                 after: threading.Event | None = None):
        if ttl < 3:
            raise ValueError("the liveness TTL must be at least 3 seconds")
        self.kv, self.store, self.name, self.address, self.ttl = kv, store, name, address, ttl
        self.register = register  # (the Node last seen, if any) -> the Node as registered now
        self.node_key, self.live_key = keys.resource(r.Node.plural, name), keys.liveness(name)
        self.lease = 0
        self.node: r.Node | None = None  # what we last saw of our Node
        self.stats = {"reregistered": 0, "leases": 0}
        self.after = after  # set once the agent registered the node: we keep it, not create it

    def _registered(self, stop: threading.Event) -> bool:
        while self.after is not None and not self.after.wait(0.5):
            if stop.is_set():
                return False
        return not stop.is_set()

    def run(self, stop: threading.Event) -> None:
        """Refresh the lease every ttl/3 seconds; between refreshes, watch our Node."""
        if not self._registered(stop):
            return
        while not stop.is_set():
            try:
                self._keep_alive()
                revision = self._ensure_node()
                self._watch(stop, revision)
            except RoutedError as err:
                log.warning("node presence: %s; retrying", err)
                stop.wait(min(2.0, self.ttl / 3))

    def _keep_alive(self) -> None:
        if self.lease and self.kv.lease_keepalive(self.lease) > 0:
            item = self.kv.get(self.live_key)
            if item is not None and item.lease == self.lease:
                return
        # No lease yet, or it ran out (etcd away longer than the TTL, the agent stalled),
        # or someone deleted the key: a new lease and the key under it.
        lease = self.kv.lease_grant(self.ttl)
        value = json.dumps({"address": self.address, "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
        self.kv.put(self.live_key, value.encode(), lease=lease)
        if self.lease:
            log.info("node presence: liveness lease renewed (the old one was gone)")
        self.lease = lease
        self.stats["leases"] += 1

    def _ensure_node(self) -> int:
        """Our Node exists (registered again if it was gone); the revision to watch from."""
        try:
            node = self.store.find(r.Node, self.name)
        except CorruptData as err:  # unreadable: registering rewrites it from what we saw last
            log.warning("node presence: %s", err)
            node = None
        if node is None:
            log.warning("node presence: Node %s was removed while its agent runs; registering it again",
                        self.name)
            node = self.register(self.node)
            self.stats["reregistered"] += 1
        self.node = node
        return int(node.metadata.resource_version)

    def _watch(self, stop: threading.Event, revision: int) -> None:
        """Until the next refresh is due; returns at once when our Node is deleted."""
        deadline = time.monotonic() + self.ttl / 3
        watch = self.kv.watch(self.node_key, revision + 1)
        try:
            while not stop.is_set():
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                event = watch.get(timeout=min(left, 1.0))
                if event is None:
                    continue
                if event.type == "resync":
                    return
                if event.kv is None or event.kv.key != self.node_key:
                    continue  # another node whose name starts with ours
                if event.type == "delete":
                    return
                self._remember(event.kv.value)  # an operator's change (AS number...): keep it
        finally:
            watch.cancel()

    def _remember(self, value: bytes) -> None:
        """From the event itself: the Node may be deleted again by the time we would read it."""
        try:
            self.node = r.parse(json.loads(value))
        except (ValueError, RoutedError) as err:
            log.warning("node presence: unreadable Node %s: %s", self.name, err)
