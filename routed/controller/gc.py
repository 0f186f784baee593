"""Garbage collection of the IPAM state of deleted Kubernetes nodes and pods.

One pass (run_once) does three sweeps:

1. Nodes. A routed Node (or a node with block affinities) whose agent is not alive (its
   liveness key, kept under the agent's lease, is gone) and, with Kubernetes, whose
   Kubernetes Node is gone too, loses its routed Node resource and its affinities
   (IPAM.release_node: empty blocks are deleted, the others stay until their last
   address is released), once seen so on two passes at least `grace` seconds apart.
   A live agent's node is never collected, whatever the API says. Route reflectors
   are never touched: the chart registers them without a Kubernetes Node or an agent.
2. Pods (only with Kubernetes). An address whose pod (namespace/pod in the block's
   attributes) is not in the API is released by its handle, but only when it was seen
   missing on two consecutive passes at least `grace` seconds apart, with the handle
   unchanged in between. Handles without pod attributes (not made for a Kubernetes
   pod) are left alone.
3. Empty blocks that no node owns any more are deleted after `grace` seconds.

Never freeing a live pod's address rests on the order of reads: etcd first, then a
consistent list from the API. kubelet asks for a pod's network only after the pod
exists in the API, so every handle in the etcd snapshot belongs to a pod the later
list contains, if that pod is still alive. Pods the API does not show (a static pod
whose mirror pod is not created yet, a list that raced a deletion) get the grace
period: any pass that sees the pod again forgets the suspicion. Every release is one
transaction comparing the handle's revision first seen missing, so an address given
out again in between is never touched.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

from ipam.allocator import IPAM, EmptyBlockReaper
from ipam.block import Block
from ipam.handle import Handle
from ipam.check import Problem, Report, repair
from routed import resources as r
from routed.datastore import Compare, Op, keys
from routed.datastore.kv import KV
from routed.datastore.resources import ResourceStore
from routed.errors import CorruptData, RoutedError

log = logging.getLogger("routed.controller")

REFLECTOR_LABEL = "routed.io/route-reflector"


def is_route_reflector(node: r.Node) -> bool:
    bgp = node.spec.bgp
    return bool(bgp and bgp.route_reflector_cluster_id) \
        or (node.metadata.labels or {}).get(REFLECTOR_LABEL) == "true"


@dataclass
class _Suspect:
    since: float  # when it was first seen missing
    revision: int = 0  # the handle's mod revision then (pods)


@dataclass
class PassResult:
    nodes: list[str] = field(default_factory=list)  # nodes whose IPAM and routed Node were released
    handles: list[str] = field(default_factory=list)  # handles released
    blocks: list[str] = field(default_factory=list)  # empty unowned blocks deleted


@dataclass
class _Owner:
    namespace: str
    pod: str
    blocks: dict[str, int]  # block key -> its mod revision in the snapshot


class GarbageCollector:
    """kube: a routed.k8s client, or None to run without Kubernetes (nodes by liveness only)."""

    def __init__(self, kv: KV, kube, grace: float = 300.0, clock: Callable[[], float] = time.monotonic):
        self.kv, self.kube, self.grace, self.clock = kv, kube, grace, clock
        self.ipam = IPAM(kv)
        self.store = ResourceStore(kv)
        self.reaper = EmptyBlockReaper(self.ipam, None, grace, clock)
        self.stats: Counter = Counter()
        self._nodes: dict[str, _Suspect] = {}
        self._pods: dict[str, _Suspect] = {}  # handle -> suspicion
        self.wake = threading.Event()  # set it to run the next pass now (e.g. on becoming leader)

    def forget(self) -> None:
        """Drop every suspicion (leadership was lost: a new term starts over)."""
        self._nodes, self._pods = {}, {}
        self.reaper = EmptyBlockReaper(self.ipam, None, self.grace, self.clock)

    def run_once(self) -> PassResult:
        result = PassResult()
        result.nodes = self.sweep_nodes()
        result.handles = self.sweep_pods() if self.kube is not None else []
        result.blocks = self.reaper.sweep()
        self.stats["passes"] += 1
        self.stats["nodes"] += len(result.nodes)
        self.stats["handles"] += len(result.handles)
        self.stats["blocks"] += len(result.blocks)
        for block in result.blocks:
            log.info("GC: deleted empty block %s (no node owns it)", block)
        return result

    def run(self, stop: threading.Event, interval: float, leading: Callable[[], bool] = lambda: True) -> None:
        """A pass now and every interval seconds while leading; errors skip a pass."""
        while not stop.is_set():
            if leading():
                try:
                    self.run_once()
                except RoutedError as err:
                    self.stats["errors"] += 1
                    log.warning("GC pass skipped: %s", err)
            self.wake.wait(interval)
            self.wake.clear()

    # -- nodes ------------------------------------------------------------------------------

    def sweep_nodes(self) -> list[str]:
        routed_nodes = {n.metadata.name: n for n in self.store.list(r.Node)}
        affine = {key[len(keys.AFFINITIES):].split("/", 1)[0] for key in self.kv.keys(keys.AFFINITIES)}
        alive = {keys.last_segment(key) for key in self.kv.keys(keys.LIVENESS)}
        in_kubernetes = set()
        if self.kube is not None:
            items, _ = self.kube.list("nodes")  # after the etcd reads: see the module docstring
            in_kubernetes = {(o.get("metadata") or {}).get("name") for o in items}
        reflectors = {name for name, node in routed_nodes.items() if is_route_reflector(node)}
        missing = (set(routed_nodes) | affine) - in_kubernetes - reflectors - alive
        now, released, suspects = self.clock(), [], {}
        for name in sorted(missing):
            seen = self._nodes.get(name)
            if seen is None or now - seen.since < self.grace:
                suspects[name] = seen or _Suspect(now)
                continue
            if self._release_node(name, routed_nodes.get(name)):
                released.append(name)
            else:
                suspects[name] = seen
        self._nodes = suspects
        return released

    def _release_node(self, name: str, node: r.Node | None) -> bool:
        # The Node first, in one transaction with "its agent is still not alive" and "it is
        # the Node we saw": an agent that came back meanwhile keeps its Node and its blocks.
        live = keys.liveness(name)
        if node is not None:
            nkey = keys.resource(r.Node.plural, name)
            deleted = self.kv.txn([Compare.absent(live), Compare.mod(nkey, int(node.metadata.resource_version))],
                                  [Op.delete(nkey)])
            if not deleted.succeeded:
                log.info("GC: node %s came back (its agent or its Node changed); keeping it", name)
                return False
        elif self.kv.get(live) is not None:
            return False
        blocks = self.ipam.release_node(name, unless_alive=live)
        log.info("GC: node %s is gone (no live agent%s): released its blocks %s%s", name,
                 ", no Kubernetes Node" if self.kube is not None else "", ", ".join(blocks) or "-",
                 " and deleted its routed Node" if node is not None else "")
        return True

    # -- pods -------------------------------------------------------------------------------

    def _owners(self) -> tuple[dict[str, _Owner], dict[str, int]]:
        """From one etcd snapshot: each handle made for a pod, and every handle's revision."""
        listing = self.kv.list(keys.BLOCKS)
        handle_items = self.kv.list(keys.HANDLES, revision=listing.revision).items
        revisions = {keys.last_segment(i.key): i.mod_revision for i in handle_items}
        pods = {}  # handle -> its attributes, kept in the handle record since layout 2
        for item in handle_items:
            try:
                pods[keys.last_segment(item.key)] = Handle.from_json(item.value, key=item.key).attrs
            except CorruptData as err:
                log.warning("GC: %s", err)
        owners: dict[str, _Owner] = {}
        for item in listing.items:
            try:
                block = Block.from_json(item.value, key=item.key)
            except CorruptData as err:
                log.warning("GC: %s", err)  # `routedctl ipam check` reports it
                continue
            for handle in block.handles():
                # A layout-1 handle has no attributes: its block still holds them.
                attrs = pods.get(handle) or block.attributes_for(block.ips_for_handle(handle)[0])["secondary"]
                namespace, pod = attrs.get("namespace"), attrs.get("pod")
                if not namespace or not pod:
                    continue  # not a Kubernetes pod's address: never ours to judge
                owner = owners.setdefault(handle, _Owner(namespace, pod, {}))
                owner.blocks[item.key] = item.mod_revision
        return owners, revisions

    def sweep_pods(self) -> list[str]:
        owners, revisions = self._owners()
        items, _ = self.kube.list("pods")  # after the etcd snapshot: see the module docstring
        live = {((o.get("metadata") or {}).get("namespace"), (o.get("metadata") or {}).get("name")) for o in items}
        now, released, suspects = self.clock(), [], {}
        for handle, owner in sorted(owners.items()):
            revision = revisions.get(handle)
            if (owner.namespace, owner.pod) in live or revision is None:
                continue  # alive; or an address without a handle record (`routedctl ipam check`)
            seen = self._pods.get(handle)
            if seen is not None and seen.revision != revision:
                seen = None  # the handle changed since: a new suspicion
            if seen is None or now - seen.since < self.grace:
                suspects[handle] = seen or _Suspect(now, revision)
                continue
            if self._release_handle(handle, owner, revision):
                released.append(handle)
            else:
                suspects[handle] = _Suspect(now, revision)
        self._pods = suspects
        return released

    def _release_handle(self, handle: str, owner: _Owner, revision: int) -> bool:
        hkey = keys.handle(handle)
        problem = Problem("orphaned-address", f"{handle} of pod {owner.namespace}/{owner.pod}", key=hkey,
                          handle=handle, revisions={hkey: revision, **owner.blocks})
        outcome = repair(self.kv, Report(0, [problem], {}))
        if outcome.fixed:
            log.info("GC: pod %s/%s is gone: released handle %s", owner.namespace, owner.pod, handle)
            return True
        log.info("GC: handle %s of pod %s/%s not released: %s", handle, owner.namespace, owner.pod,
                  outcome.skipped[0][1] if outcome.skipped else "?")
        return False


__all__ = ["GarbageCollector", "PassResult", "is_route_reflector", "REFLECTOR_LABEL"]
