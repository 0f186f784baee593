"""Mixed families never stop IPv4: a node with BGP on has an IPv6 pool next to its IPv4
pool, pods in both, and an IPv6 BGPPeer configured (real etcd, agents, ExaBGP). The IPv4
blocks are still announced and installed, IPv4 pods still reach each other, and
`routedctl node status` still answers with every peer."""

from __future__ import annotations

import json

import pytest

from tests.bgp.routers import module_cluster, ping

pytestmark = [pytest.mark.root, pytest.mark.etcd, pytest.mark.slow]

DUAL = {"ipam": {"assign_ipv4": True, "assign_ipv6": True}}
V6_PEER = "2001:db8:ffff::1"


@pytest.fixture(scope="module")
def dual(tmp_path_factory):
    with module_cluster(tmp_path_factory.mktemp("mixed")) as cluster:
        cluster.apply({"kind": "IPPool", "metadata": {"name": "v4"}, "spec": {"cidr": "10.244.0.0/16"}})
        cluster.apply({"kind": "IPPool", "metadata": {"name": "v6"},
                       "spec": {"cidr": "fd00:10::/48", "blockSize": 122}})
        cluster.apply({"kind": "BGPPeer", "metadata": {"name": "v6-tor"},
                       "spec": {"peerIP": V6_PEER, "asNumber": 65001}})
        a, b = cluster.add_node("a", 1), cluster.add_node("b", 2)
        yield cluster, a, b


def test_ipv4_keeps_flowing_next_to_ipv6_pools_and_an_ipv6_peer(dual):
    cluster, a, b = dual
    for node, other in ((a, b), (b, a)):
        cluster.wait(lambda: any(p["address"] == other.ip and p["state"] == "up" for p in node.peers()),
                     what=f"{node.name}'s IPv4 mesh session")
    pods = {node.name: node.add_pod("p", DUAL) for node in (a, b)}
    for node in (a, b):
        cluster.wait(lambda: "blackhole fd00:10:" in node.ns.run("ip", "-6", "route", "show", "proto", "201").stdout,
                     what=f"{node.name}'s IPv6 block")
    v4_blocks = {node.name: next(blk for blk in node.blocks() if blk.startswith("10.244.")) for node in (a, b)}
    cluster.wait(lambda: f"{v4_blocks['a']} via {a.ip} dev eth0" in b.routes(), what="b to learn a's IPv4 block")
    cluster.wait(lambda: f"{v4_blocks['b']} via {b.ip} dev eth0" in a.routes(), what="a to learn b's IPv4 block")
    (pod_a, ip_a), (pod_b, ip_b) = pods["a"], pods["b"]
    assert ping(pod_a.run, ip_b, count=2) and ping(pod_b.run, ip_a, count=2)
    status = a.status("json")
    assert status.returncode == 0, status.stderr
    addresses = [p["address"] for p in json.loads(status.stdout)["peers"]]
    assert addresses == [b.ip, V6_PEER], addresses  # IPv4 first, then IPv6: one order, no crash
    # A pool change afterwards (a new IPv4 block) is still announced next to the IPv6 ones.
    cluster.apply({"kind": "IPPool", "metadata": {"name": "v4b"}, "spec": {"cidr": "10.246.0.0/16"}})
    a.add_pod("q", {"ipam": {"ipv4_pools": ["v4b"]}})
    cluster.wait(lambda: any(blk.startswith("10.246.") for blk in a.blocks()), what="a's second IPv4 block")
    new_block = next(blk for blk in a.blocks() if blk.startswith("10.246."))
    cluster.wait(lambda: f"{new_block} via {a.ip} dev eth0" in b.routes(), what="b to learn a's new IPv4 block")
    assert "Traceback" not in a.agent.log.read_text()
