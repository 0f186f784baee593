"""An agent restarting under a running ExaBGP (issue 10.10): bgp.helper is already waiting
for the agent's socket with a snapshot of sessions that are up and routes they sent, and
its snapshot can reach the BGP controller before the controller has read its peers from
etcd. Those states and routes must not be dropped as "from no peer of ours": the node
would show its sessions idle and lose every learned route until a session flaps (seen in
tests/e2e/test_rolling.py). Real etcd, a real namespace and its kernel routes; the
snapshot is queued first, as the race delivers it."""

from __future__ import annotations

import os
import threading

import pytest

from ipam.allocator import IPAM
from routed.agent.bgp import BGPController
from routed.agent.podnet import HostDataplane
from routed.datastore import keys
from routed.datastore.resources import ResourceStore
from tests.k8s.k8sutil import pool, routed_node
from tests.support.netns import node_host
from tests.support.wait import eventually

pytestmark = pytest.mark.root

ME, PEER = "192.0.2.10", "192.0.2.11"


def _state(peer: str, state: str) -> dict:
    return {"type": "state", "neighbor": {"address": {"local": ME, "peer": peer}, "state": state}}


def test_a_snapshot_before_the_first_sync_is_not_lost(kv, tmp_path):
    if os.geteuid() != 0:
        pytest.fail("this test needs root (network namespaces)", pytrace=False)
    store = ResourceStore(kv)
    pool(store, "main", "10.72.0.0/16")
    routed_node(store, "me", f"{ME}/24")
    routed_node(store, "peer", f"{PEER}/24")
    IPAM(kv).allocate("k8s-pod-network.c1.eth0", "peer")  # the peer's block, as IPAM knows it
    block = str(keys.cidr_from_segment(keys.last_segment(kv.keys(keys.affinity("peer"))[0])))
    host = node_host(f"{ME}/24")
    dataplane = HostDataplane(host.name)
    stop = threading.Event()
    try:
        dataplane.use_uplink(f"{ME}/24")
        bgp = BGPController(kv, store, dataplane, "me", f"{ME}/24", str(tmp_path / "bgp"), str(tmp_path / "bgp.sock"),
                            resync=3600)
        # The helper's snapshot, first in the queue: the session is up and sent the block.
        bgp.events.put(("helper", {"type": "snapshot", "peers": {PEER: _state(PEER, "up")},
                                   "routes": {PEER: {block: {"next-hop": PEER, "family": "ipv4 unicast",
                                                             "attribute": {"origin": "igp", "as-path": []}}}}}))
        runner = threading.Thread(target=bgp.run, args=(stop,), daemon=True)
        runner.start()
        eventually(lambda: any(p["address"] == PEER and p["state"] == "up" for p in bgp.peer_status()),
                   "the peer up, as the snapshot says", details=lambda: str(bgp.peer_status()))
        eventually(lambda: block in host.run("ip", "route", "show", "proto", "202").stdout,
                   f"the learned route to {block} in the kernel",
                   details=lambda: host.run("ip", "route").stdout)
    finally:
        stop.set()
        host.delete()


def test_a_block_change_queued_behind_the_ipam_listing_is_applied_to_it(kv, tmp_path):
    """The watch thread queues IPAM's listing, then the changes after it. The loop takes
    the listing first; the change right behind it must apply to that listing, not be
    dropped for want of one (seen: a node that claimed its block just after its agent
    listed IPAM never announced it, in tests/bgp/test_speaker_privileges.py)."""
    from ipam.origins import Origins

    store = ResourceStore(kv)
    pool(store, "main", "10.73.0.0/16")
    routed_node(store, "me", f"{ME}/24")
    stale, revision = Origins.read(kv)  # the listing, before the claim
    watch = kv.watch(keys.BLOCKS, revision + 1)
    try:
        IPAM(kv).allocate("k8s-pod-network.c1.eth0", "me")
        block = str(keys.cidr_from_segment(keys.last_segment(kv.keys(keys.affinity("me"))[0])))
        claim = eventually(watch.get, "the watch event of the claimed block")
    finally:
        watch.cancel()
    bgp = BGPController(kv, store, None, "me", f"{ME}/24", str(tmp_path / "bgp"), str(tmp_path / "bgp.sock"))
    bgp.events.put(("etcd", claim))  # queued behind the listing the loop just took
    resync, ipam_changed = bgp._drain_etcd(("origins", stale))
    assert ipam_changed and block in bgp._own_prefixes()
