"""Workload records whose pod has left this node.

A CNI DEL removes its pod's record, but a DEL must never fail, so one that cannot reach
etcd leaves the record behind; so does a node that reboots while its pods are deleted.
A stale record keeps a gone pod's labels on its address in every node's policy sets, and
the address is soon another pod's. A record names the pod's host-side veth; that veth is
created before the record is written and removed before the record is, so a record whose
veth is gone belongs to no pod here.
"""

from __future__ import annotations

import json
import logging
from typing import Callable

from routed.datastore import Compare, Op, keys
from routed.datastore.kv import KV, KeyValue

log = logging.getLogger("routed.agent.workloads")


def stale(items: list[KeyValue], node: str, links: set[str]) -> list[KeyValue]:
    """The records of items (listed before links was read) that are this node's and name a
    host interface that does not exist. An unreadable record is left alone: the policy
    enforcer reports it, and an operator decides."""
    found = []
    for item in items:
        try:
            record = json.loads(item.value)
            interface, owner = record.get("interface"), record.get("node")
        except (ValueError, AttributeError):
            continue
        if owner == node and isinstance(interface, str) and interface and interface not in links:
            found.append(item)
    return found


class WorkloadCollector:
    """Deletes this node's stale workload records (see the module's docstring)."""

    def __init__(self, kv: KV, node: str, link_names: Callable[[], set[str]]):
        self.kv, self.node, self.link_names = kv, node, link_names

    def sweep(self) -> list[str]:
        # Records first, links second: a record written after the listing is not judged,
        # and one in it was written after its veth existed, so the link read sees that veth
        # unless the pod is gone. The delete compares the listed revision: a record a new
        # sandbox of the same pod rewrote since stays.
        listing = self.kv.list(keys.workloads_of(self.node))
        present = self.link_names()
        collected = []
        for item in stale(listing.items, self.node, present):
            if self.kv.txn([Compare.mod(item.key, item.mod_revision)], [Op.delete(item.key)]).succeeded:
                collected.append(item.key)
                log.info("workload record %s removed: its pod's interface is gone from this node", item.key)
        return collected
