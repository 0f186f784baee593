"""Top-of-rack peering with real routers: BIRD 2, FRR bgpd and GoBGP (eBGP, AS 65001)
on the nodes' subnet; the nodes (AS 64512) keep their mesh.

One set-up for the module: two nodes with a pod each and three ToRs, each with its
own BGPPeer (global, or by nodeSelector) and its own prefixes (k = 0, 1, 2):

    10.244.200.<64k>/26   inside the pool, no node's block, next hop the ToR -> never installed
    10.244.201.<64k>/26   AS path 65001 64512     -> our own AS: never installed
    198.51.100.<64k>/26   outside every pool      -> never installed
    203.0.113.<64k>/26    outside, but in the peer's allowedPrefixes -> installed

The ToRs sit at .1-.3, below the nodes (.11, .12), as a rack's gateway often does.
"""

from __future__ import annotations

import re

import pytest

from tests.bgp.routers import (
    Announce,
    Bird,
    Frr,
    GoBgp,
    Neighbor,
    RouterSpec,
    agent_log,
    module_cluster,
    ping,
)

pytestmark = [pytest.mark.root, pytest.mark.etcd, pytest.mark.slow]

NODE_AS, TOR_AS = 64512, 65001
POOL = "10.244.0.0/16"
TORS = {"bird": (0, Bird, "192.0.2.1"), "frr": (1, Frr, "192.0.2.2"), "gobgp": (2, GoBgp, "192.0.2.3")}
# How each ToR's BGPPeer selects the nodes.
SELECTION = {"bird": {}, "frr": {"nodeSelector": "rack == 'r1'"}, "gobgp": {"nodeSelector": "has(rack)"}}



def prefixes(k: int) -> dict[str, str]:
    return {"pool": f"10.244.200.{64 * k}/26", "own_as": f"10.244.201.{64 * k}/26",
            "outside": f"198.51.100.{64 * k}/26", "allowed": f"203.0.113.{64 * k}/26",
            "loopback": f"203.0.113.{64 * k + 1}"}


class Fabric:
    def __init__(self, cluster):
        self.cluster = cluster
        self.tors: dict = {}
        self.nodes: list = []
        self.pods: list = []


@pytest.fixture(scope="module")
def fabric(tmp_path_factory):
    with module_cluster(tmp_path_factory.mktemp("tor")) as cluster:
        f = Fabric(cluster)
        cluster.apply({"kind": "IPPool", "metadata": {"name": "pods"}, "spec": {"cidr": POOL}})
        for name, (k, _, address) in TORS.items():
            cluster.apply({"kind": "BGPPeer", "metadata": {"name": f"tor-{name}"},
                           "spec": {"peerIP": address, "asNumber": TOR_AS, **SELECTION[name],
                                    "allowedPrefixes": [prefixes(k)["allowed"]]}})
        node_ips = ["192.0.2.11", "192.0.2.12"]
        for name, (k, cls, address) in TORS.items():
            p = prefixes(k)
            announce = [Announce(p["pool"]), Announce(p["own_as"], (NODE_AS,)), Announce(p["outside"]),
                        Announce(p["allowed"])]
            if name == "bird":
                announce.append(Announce("198.18.0.0/24"))  # for the allowedPrefixes change
            spec = RouterSpec(address, TOR_AS, [Neighbor(ip, NODE_AS) for ip in node_ips], announce,
                              kernel_export=(name == "bird"))
            router = cluster.add_router(f"tor-{name}", cls, spec)
            router.run("ip", "addr", "add", f"{p['loopback']}/32", "dev", "lo")
            f.tors[name] = router
        f.nodes = [cluster.add_node(f"n{i}", 10 + i, labels="rack=r1") for i in (1, 2)]
        # Every session is up before a block is announced; a peer added later is its own test.
        for node in f.nodes:
            cluster.wait(lambda: cluster.sessions_up(node, 1 + len(TORS)), what=f"{node.name}'s sessions")
        for router in f.tors.values():
            router.wait_established(node_ips)
        f.pods = [node.add_pod("p") for node in f.nodes]
        yield f


def rejection(node, peer: str, prefix: str) -> str | None:
    """Why node's agent rejected prefix from peer, from its log; None if it did not."""
    m = re.search(rf'peer {re.escape(peer)}: rejected {re.escape(prefix)}: ([^"]*)"', agent_log(node))
    return m.group(1) if m else None


def kernel_routes_from_rib(router, nodes) -> None:
    """FRR (-Z) and GoBGP have no FIB of their own: give the router's kernel the node
    blocks exactly as the router's RIB holds them, so a pod can talk to it."""
    rib = router.rib()
    for node in nodes:
        for block in node.blocks():
            assert node.ip in rib.get(block, set()), f"{router.kind} RIB: {rib}"
            router.run("ip", "route", "replace", block, "via", node.ip)


@pytest.mark.parametrize("name", list(TORS))
def test_tor_peering(fabric, name):
    k, _, address = TORS[name]
    router, p = fabric.tors[name], prefixes(k)
    cluster = fabric.cluster
    # (a) the router learns each node's block, next hop the node's own address
    for node in fabric.nodes:
        cluster.wait(lambda: node.blocks(), what=f"{node.name}'s block")
        for block in node.blocks():
            router.wait_route(block, node.ip)
    for node in fabric.nodes:
        assert node.peer(address)["type"] == ("global" if name == "bird" else "node")
        assert node.peer(address)["state"] == "up"
        # (b) its route inside the pool is refused: IPAM gives that prefix to no node, and a
        # ToR is no node (a ToR or any peer could otherwise take pod traffic)
        cluster.wait(lambda: rejection(node, address, p["pool"]) is not None,
                     what=f"{node.name} to reject {p['pool']} from the {name} ToR")
        assert f"next hop {address} is no node's address" in rejection(node, address, p["pool"])
        assert p["pool"] not in node.routes()
        # (e) its route outside the pools that the BGPPeer's allowedPrefixes lets in is installed
        cluster.wait(lambda: f"{p['allowed']} via {address} dev eth0" in node.routes(),
                     what=f"{node.name} to install the allowed {p['allowed']}")
        # (c) the one outside every pool is received and refused
        cluster.wait(lambda: rejection(node, address, p["outside"]) is not None,
                     what=f"{node.name} to reject {p['outside']}")
        assert "outside every IP pool" in rejection(node, address, p["outside"])
        assert p["outside"].split("/")[0] not in node.routes()
        assert p["outside"].split("/")[0] not in node.ns.run("ip", "route", "show", "table", "all").stdout
    # Traffic really takes those routes: a pod reaches the router's address in the allowed prefix.
    if name != "bird":  # BIRD exports what it learned to its kernel itself
        kernel_routes_from_rib(router, fabric.nodes)
    for pod, ip in fabric.pods:
        assert ping(pod.run, p["loopback"]), f"pod {ip} -> {name} ToR {p['loopback']}"
    status = fabric.nodes[0].status()
    assert status.returncode == 0, status.stderr
    row = next(line for line in status.stdout.splitlines() if line.startswith(address + " "))
    assert " up " in row and f"tor-{name}" in row


@pytest.mark.parametrize("name", list(TORS))
def test_tor_routes_with_our_as_are_not_installed(fabric, name):
    k, _, address = TORS[name]
    router, p = fabric.tors[name], prefixes(k)
    cluster = fabric.cluster
    for node in fabric.nodes:
        cluster.wait(lambda: f"{p['allowed']} via {address}" in node.routes(), what=f"{node.name}: {name} routes")
        # (d) the router announces a route whose AS path holds our AS: received, then refused
        cluster.wait(lambda: p["own_as"] in node.routes() or rejection(node, address, p["own_as"]),
                     what=f"{node.name} to process {p['own_as']}")
        assert p["own_as"] not in node.routes()
        assert f"contains our own AS {NODE_AS}" in rejection(node, address, p["own_as"])
    # BIRD and FRR also echo each node's block to the other node (AS path 65001 64512).
    a, b = fabric.nodes
    for block in a.blocks():
        if name in ("bird", "frr"):
            cluster.wait(lambda: rejection(b, address, block) or f"{block} via {address}" in b.routes(),
                         what=f"{b.name} to process the {name} echo of {block}")
            assert f"contains our own AS {NODE_AS}" in (rejection(b, address, block) or "")
        assert f"{block} via {a.ip} dev eth0" in b.routes()
    for node in fabric.nodes:
        assert node.peer(address)["accepted"] == 1  # the allowed route, nothing else


def test_allowed_prefixes_change_takes_effect(fabric):
    """An operator adds 198.18.0.0/24 to the BIRD peer's allowedPrefixes after BIRD sent it."""
    bird, address = fabric.tors["bird"], TORS["bird"][2]
    node = fabric.nodes[0]
    fabric.cluster.wait(lambda: rejection(node, address, "198.18.0.0/24"), what="198.18.0.0/24 rejected first")
    fabric.cluster.apply({"kind": "BGPPeer", "metadata": {"name": "tor-bird"},
                          "spec": {"peerIP": address, "asNumber": TOR_AS,
                                   "allowedPrefixes": [prefixes(0)["allowed"], "198.18.0.0/24"]}})
    fabric.cluster.wait(lambda: f"198.18.0.0/24 via {address} dev eth0" in node.routes(), timeout=15,
                        what="the newly allowed prefix to be installed")
    assert bird.established() >= {n.ip for n in fabric.nodes}


def test_a_tor_added_later_learns_the_blocks_already_announced(fabric):
    """ExaBGP gives a neighbor added by a configuration reload none of the routes announced
    through the API before; the agent must announce them again when the session comes up."""
    cluster = fabric.cluster
    for node in fabric.nodes:
        cluster.wait(lambda: node.blocks(), what=f"{node.name}'s block")
    spec = RouterSpec("192.0.2.4", TOR_AS, [Neighbor(n.ip, NODE_AS) for n in fabric.nodes])
    late = cluster.add_router("tor-late", GoBgp, spec)
    cluster.apply({"kind": "BGPPeer", "metadata": {"name": "tor-late"},
                   "spec": {"peerIP": "192.0.2.4", "asNumber": TOR_AS}})
    late.wait_established([n.ip for n in fabric.nodes])
    for node in fabric.nodes:
        for block in node.blocks():
            late.wait_route(block, node.ip, timeout=20)
