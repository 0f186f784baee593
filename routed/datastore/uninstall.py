"""The uninstall handshake in etcd, between `routedctl uninstall` (the chart's
pre-delete hook) and the agents.

Helm waits for nothing but hook Jobs and Pods, and a SIGTERMed agent deliberately
leaves the dataplane alone (a rolling update must not cut pods off), so an uninstall
has to be told apart from a restart before Helm deletes the DaemonSet: the hook sets
a marker, every agent seeing it takes routed off its node (routed.dataplane.cleanup)
and writes its done key, the hook waits (bounded) for every registered node's key,
then clears the marker and the keys so a later install starts clean.
"""

from __future__ import annotations

import json
import time

from routed.datastore import keys
from routed.datastore.kv import KV


def request(kv: KV) -> None:
    kv.put(keys.UNINSTALL_REQUESTED, json.dumps({"requested": time.time()}).encode())


def requested(kv: KV) -> bool:
    return kv.get(keys.UNINSTALL_REQUESTED) is not None


def mark_done(kv: KV, node: str) -> None:
    kv.put(keys.uninstall_done(node), json.dumps({"done": time.time()}).encode())


def done_nodes(kv: KV) -> set[str]:
    return {keys.last_segment(k) for k in kv.keys(keys.UNINSTALL_DONE)}


def waiting_for(nodes: set[str], done: set[str]) -> list[str]:
    """The registered nodes that have not reported yet (pure)."""
    return sorted(nodes - done)


def finish(kv: KV) -> None:
    for key in kv.keys(keys.UNINSTALL):
        kv.delete(key)
