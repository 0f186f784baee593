"""Route reflection: no node-to-node mesh; every node peers (iBGP, AS 64512) only with a
BIRD route reflector, registered as a Node with a routeReflectorClusterID, and the nodes
reach each other's pods through what it reflects."""

from __future__ import annotations

import pytest

from ipam.allocator import IPAM
from tests.bgp.routers import Bird, Neighbor, RouterSpec, module_cluster, ping
from tests.support.agent import cni

pytestmark = [pytest.mark.root, pytest.mark.etcd, pytest.mark.slow]

AS = 64512
RR = "192.0.2.250"
CLUSTER_ID = "244.0.0.1"


@pytest.fixture(scope="module")
def reflected(tmp_path_factory):
    with module_cluster(tmp_path_factory.mktemp("rr")) as cluster:
        cluster.apply({"kind": "IPPool", "metadata": {"name": "pods"}, "spec": {"cidr": "10.244.0.0/16"}})
        # Only pods that name it get addresses from it ("pods" sorts first for the others).
        cluster.apply({"kind": "IPPool", "metadata": {"name": "zz-extra"}, "spec": {"cidr": "10.250.0.0/24"}})
        cluster.apply({"kind": "BGPConfiguration", "metadata": {"name": "default"},
                       "spec": {"asNumber": AS, "nodeToNodeMeshEnabled": False}})
        # The reflector is a Node with a cluster ID and no agent: bgp/peers.py makes every
        # ordinary node peer with it.
        cluster.apply({"kind": "Node", "metadata": {"name": "rr1"},
                       "spec": {"bgp": {"ipv4Address": f"{RR}/24", "routeReflectorClusterID": CLUSTER_ID}}})
        ips = [f"192.0.2.{i}" for i in (1, 2, 3)]
        rr = cluster.add_router("rr1", Bird, RouterSpec(RR, AS, [Neighbor(ip, AS, rr_client=True) for ip in ips],
                                                        cluster_id=CLUSTER_ID))
        nodes = [cluster.add_node(f"n{i}", i) for i in (1, 2, 3)]
        for node in nodes:
            cluster.wait(lambda: cluster.sessions_up(node, 1), what=f"{node.name}'s session with the reflector")
        rr.wait_established(ips)
        pods = [node.add_pod("p") for node in nodes]
        yield cluster, rr, nodes, pods


def test_nodes_peer_only_with_the_reflector(reflected):
    cluster, rr, nodes, _ = reflected
    for node in nodes:
        peers = node.peers()
        assert [(p["address"], p["type"], p["name"], p["state"]) for p in peers] == \
            [(RR, "route-reflector", "rr1", "up")], peers
        # No mesh session exists at the TCP level either: the only BGP connection is to the reflector.
        sockets = node.ns.run("ss", "-Htn", "state", "established", "( sport = :179 or dport = :179 )").stdout
        remotes = {line.split()[-1].rsplit(":", 1)[0] for line in sockets.splitlines()}
        assert remotes == {RR}, sockets


def test_pods_reach_each_other_through_reflected_routes(reflected):
    cluster, rr, nodes, pods = reflected
    for node in nodes:
        cluster.wait(lambda: node.blocks(), what=f"{node.name}'s block")
    blocks = {node.name: node.blocks() for node in nodes}
    # The reflector holds every block with its originator as the next hop...
    for node in nodes:
        for block in blocks[node.name]:
            rr.wait_route(block, node.ip)
    # ...and reflects it unchanged: each node routes straight to the owner, not via the reflector.
    cluster.wait_direct_routes(nodes, blocks)
    for node in nodes:
        assert RR not in node.routes()
        assert node.peer(RR)["accepted"] == sum(len(blocks[o.name]) for o in nodes if o is not node)
    for (pod, src), node in zip(pods, nodes):
        for _, dst in pods:
            assert ping(pod.run, dst), f"{node.name} pod {src} -> {dst}"


def test_a_released_block_is_withdrawn_through_the_reflector(reflected):
    cluster, rr, nodes, _ = reflected
    n1, others = nodes[0], nodes[1:]
    block = n1.blocks()[0]
    # A new block that only this test uses: claimed by a pod in another pool, then released.
    pod2, ip2 = n1.add_pod("in-extra", {"ipam": {"ipv4_pools": ["zz-extra"]}})
    cluster.wait(lambda: any(b.startswith("10.250.") for b in n1.blocks()), what=f"{n1.name}'s new block")
    extra_block = next(b for b in n1.blocks() if b.startswith("10.250."))
    rr.wait_route(extra_block, n1.ip)
    for node in others:
        cluster.wait(lambda: f"{extra_block} via {n1.ip} dev eth0" in node.routes(),
                     what=f"{node.name} to learn {extra_block}")
    conf = n1.agent.conf(ipam={"ipv4_pools": ["zz-extra"]})
    assert cni("DEL", conf, container=f"{n1.name}-in-extra", netns=pod2.path,
               pod=("default", f"{n1.name}-in-extra"))[0] == 0
    ipam = IPAM(cluster.kv)
    # DEL answers once the release is queued; the block empties a moment later.
    cluster.wait(lambda: len(ipam.empty_blocks(n1.name)) == 1, what="the released address's block to empty")
    (bkey, rev), = ipam.empty_blocks(n1.name)  # n1's first block still holds its pod
    assert ipam.release_block(bkey, rev)
    cluster.wait(lambda: extra_block not in rr.rib(), what="the reflector to drop the released block")
    for node in others:
        cluster.wait(lambda: extra_block not in node.routes(), what=f"{node.name} to drop {extra_block}")
        assert f"{block} via {n1.ip} dev eth0" in node.routes()  # the first block stays
