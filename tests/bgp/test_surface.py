"""The rest of Calico's BGP surface, with real agents, ExaBGP and real BIRD/GoBGP peers:
listenPort, keepaliveTime, sourceAddress, peerSelector, communities and
prefixAdvertisements, per-node AS numbers.

Every test builds its own small cluster on 192.0.2.0/24: nodes at .11-.13, routers below.
"""

from __future__ import annotations

import pytest

from tests.bgp.routers import Bird, GoBgp, Neighbor, RouterSpec, ping

pytestmark = [pytest.mark.root, pytest.mark.etcd, pytest.mark.slow]

POOL = {"kind": "IPPool", "metadata": {"name": "pods"}, "spec": {"cidr": "10.244.0.0/16"}}
NODE_AS, TOR_AS = 64512, 65001


def bgp_config(cluster, **spec) -> None:
    cluster.apply({"kind": "BGPConfiguration", "metadata": {"name": "default"}, "spec": spec})


def learn_each_other(cluster, nodes) -> None:
    """Every node installs every other node's blocks via that node, and pods answer."""
    for node in nodes:
        cluster.wait(lambda: node.blocks(), what=f"{node.name}'s block")
    cluster.wait_direct_routes(nodes)
    for node in nodes:
        pod = node.pods[0][1]
        for other in nodes:
            ip = other.pods[0][2]
            assert ping(pod.run, ip), f"pod on {node.name} -> pod {ip} on {other.name}"


def state(node, address: str) -> str | None:
    """The node's session state with address; None while there is no such peer."""
    return next((p["state"] for p in node.peers() if p["address"] == address), None)


def listening_ports(node) -> set[int]:
    out = node.ns.run("ss", "-Hltn").stdout
    return {int(line.split()[3].rsplit(":", 1)[1]) for line in out.splitlines() if line.strip()}


def test_listen_port_is_where_every_speaker_listens_and_the_mesh_connects(cluster):
    """BGPConfiguration listenPort 1179: ExaBGP listens there and mesh peers connect there;
    a ToR on the usual 179 that never connects itself (passive) is still reached on 179."""
    cluster.apply(POOL)
    bgp_config(cluster, listenPort=1179)
    tor = cluster.add_router("tor", GoBgp, RouterSpec("192.0.2.3", TOR_AS, [
        Neighbor("192.0.2.11", NODE_AS, passive=True), Neighbor("192.0.2.12", NODE_AS, passive=True)]))
    cluster.apply({"kind": "BGPPeer", "metadata": {"name": "tor"},
                   "spec": {"peerIP": "192.0.2.3", "asNumber": TOR_AS}})
    nodes = [cluster.add_node(f"n{i}", 10 + i) for i in (1, 2)]
    for node in nodes:
        node.add_pod("p")
    for node in nodes:
        cluster.wait(lambda: state(node, (nodes[0] if node is nodes[1] else nodes[1]).ip) == "up",
                     what=f"{node.name}'s mesh session on port 1179")
        ports = listening_ports(node)
        assert 1179 in ports and 179 not in ports, f"{node.name} listens on {sorted(ports)}"
    learn_each_other(cluster, nodes)
    tor.wait_established([n.ip for n in nodes])
    for node in nodes:
        for block in node.blocks():
            tor.wait_route(block, node.ip)


def test_keepalive_time_gives_the_hold_time_the_peer_negotiates(cluster):
    """keepaliveTime 5s without holdTime: hold time 15s (3 x keepalive, RFC 4271's ratio),
    which is what GoBGP (hold time 30s) negotiates, keepalives every 5s."""
    cluster.apply(POOL)
    tor = cluster.add_router("tor", GoBgp, RouterSpec("192.0.2.3", TOR_AS, [Neighbor("192.0.2.11", NODE_AS)]))
    cluster.apply({"kind": "BGPPeer", "metadata": {"name": "tor"},
                   "spec": {"peerIP": "192.0.2.3", "asNumber": TOR_AS, "keepaliveTime": "5s"}})
    node = cluster.add_node("n1", 11)
    tor.wait_established([node.ip])
    cluster.wait(lambda: tor.timers(node.ip).get("negotiated_hold_time") == 15,
                 what=f"GoBGP to negotiate hold time 15 (timers: {tor.timers(node.ip)})")
    assert tor.timers(node.ip).get("keepalive_interval") == 5


def test_source_address_none_lets_the_kernel_choose(cluster):
    """The node also holds 192.0.2.111, and its route to the ToR says `src 192.0.2.111`. The
    ToR knows the node only by that address: with sourceAddress None the session comes up
    from it; with UseNodeIP (the default) ExaBGP binds the node IP and the ToR refuses it."""
    cluster.apply(POOL)
    tor = cluster.add_router("tor", GoBgp, RouterSpec("192.0.2.3", TOR_AS, [Neighbor("192.0.2.111", NODE_AS)]))
    node = cluster.add_node("n1", 11, start=False)
    node.ns.run("ip", "addr", "add", "192.0.2.111/24", "dev", "eth0")
    node.ns.run("ip", "route", "add", "192.0.2.3/32", "dev", "eth0", "src", "192.0.2.111")
    node.start()
    peer = {"peerIP": "192.0.2.3", "asNumber": TOR_AS}
    cluster.apply({"kind": "BGPPeer", "metadata": {"name": "tor"}, "spec": {**peer, "sourceAddress": "None"}})
    tor.wait_established(["192.0.2.111"])
    cluster.wait(lambda: state(node, "192.0.2.3") == "up", what="the node's session with the ToR")
    node.add_pod("p")
    cluster.wait(lambda: node.blocks(), what="n1's block")
    for block in node.blocks():
        tor.wait_route(block, "192.0.2.111")  # next hop self: the session's own source
    cluster.apply({"kind": "BGPPeer", "metadata": {"name": "tor"},
                   "spec": {**peer, "sourceAddress": "UseNodeIP"}})
    cluster.wait(lambda: "192.0.2.111" not in tor.established(), what="the session from 192.0.2.111 to end")
    exabgp_conf = (node.workdir / "bgp" / "exabgp.conf").read_text()
    assert "local-address 192.0.2.11;" in exabgp_conf


def test_communities_and_prefix_advertisements_reach_the_tor(cluster):
    """Named and literal, standard and large communities on the blocks a node announces, by
    CIDR containment: every prefixAdvertisement whose cidr holds the prefix adds its own."""
    cluster.apply(POOL)
    bgp_config(cluster, communities=[{"name": "rack", "value": "65001:100"},
                                     {"name": "big", "value": "65001:7:8"}],
               prefixAdvertisements=[{"cidr": "10.244.0.0/16", "communities": ["rack", "65001:200"]},
                                     {"cidr": "10.244.0.0/17", "communities": ["big"]},
                                     {"cidr": "10.96.0.0/12", "communities": ["65001:999"]}])
    tor = cluster.add_router("tor", Bird, RouterSpec("192.0.2.3", TOR_AS, [Neighbor("192.0.2.11", NODE_AS)]))
    cluster.apply({"kind": "BGPPeer", "metadata": {"name": "tor"},
                   "spec": {"peerIP": "192.0.2.3", "asNumber": TOR_AS}})
    node = cluster.add_node("n1", 11)
    node.add_pod("p")
    cluster.wait(lambda: node.blocks(), what="n1's block")
    (block,) = node.blocks()
    assert block.startswith("10.244.") and int(block.split(".")[2]) < 128  # inside 10.244.0.0/17
    tor.wait_route(block, node.ip)
    cluster.wait(lambda: tor.communities(block) == ({"65001:100", "65001:200"}, {"65001:7:8"}),
                 what=f"the ToR to see the block's communities (now {tor.communities(block)})")
    # A peer that comes later gets the block with them too (announced to it alone when its session is up).
    late = cluster.add_router("late", Bird, RouterSpec("192.0.2.4", TOR_AS, [Neighbor("192.0.2.11", NODE_AS)]))
    cluster.apply({"kind": "BGPPeer", "metadata": {"name": "late"},
                   "spec": {"peerIP": "192.0.2.4", "asNumber": TOR_AS}})
    late.wait_route(block, node.ip)
    cluster.wait(lambda: late.communities(block) == ({"65001:100", "65001:200"}, {"65001:7:8"}),
                 what=f"the late ToR to see the block's communities (now {late.communities(block)})")
    # A change re-announces the block with the new set; none left: no community at all.
    bgp_config(cluster, prefixAdvertisements=[{"cidr": "10.244.0.0/16", "communities": ["65001:300"]}])
    cluster.wait(lambda: tor.communities(block) == ({"65001:300"}, set()),
                 what=f"the ToR to see the new communities (now {tor.communities(block)})")
    bgp_config(cluster)
    cluster.wait(lambda: tor.communities(block) == (set(), set()),
                 what=f"the communities to go (now {tor.communities(block)})")
    tor.wait_route(block, node.ip)


def test_peer_selector_builds_node_to_node_peerings_without_the_mesh(cluster):
    """nodeToNodeMeshEnabled false. Rack a's nodes peer with each other (nodeSelector and
    peerSelector both rack a); rack b's node peers with rack a's (the nodes its
    peerSelector selects get the session too, as in Calico): n3 learns n1's and n2's
    blocks, n1 learns n2's, and no session is left half-configured."""
    cluster.apply(POOL)
    bgp_config(cluster, nodeToNodeMeshEnabled=False)
    cluster.apply({"kind": "BGPPeer", "metadata": {"name": "rack-a"},
                   "spec": {"nodeSelector": "rack == 'a'", "peerSelector": "rack == 'a'"}})
    n1 = cluster.add_node("n1", 11, labels="rack=a")
    n2 = cluster.add_node("n2", 12, labels="rack=a")
    n3 = cluster.add_node("n3", 13, labels="rack=b")
    for node in (n1, n2, n3):
        node.add_pod("p")
    learn_each_other(cluster, [n1, n2])
    assert not any(p["address"] == n3.ip for p in n1.peers()), "n3 is selected by no BGPPeer yet"
    assert n3.peers() == []
    cluster.apply({"kind": "BGPPeer", "metadata": {"name": "rack-b-to-a"},
                   "spec": {"nodeSelector": "rack == 'b'", "peerSelector": "rack == 'a'"}})
    learn_each_other(cluster, [n1, n3])
    learn_each_other(cluster, [n2, n3])
    for node in (n1, n2, n3):
        assert {p["state"] for p in node.peers()} == {"up"}, node.peers()
        assert {p["type"] for p in node.peers()} <= {"node", "global"}


def test_per_node_as_numbers_peer_over_ebgp_and_with_a_tor(cluster):
    """Node.spec.bgp.asNumber 65011/65012/65013: the mesh is eBGP between the nodes, as in
    Calico; each node learns and installs the others' blocks, pods reach each other, and a
    BIRD ToR (AS 65001) sees each block with its node's AS as the path."""
    cluster.apply(POOL)
    tor = cluster.add_router("tor", Bird, RouterSpec("192.0.2.3", TOR_AS, [
        Neighbor(f"192.0.2.{10 + i}", 65010 + i) for i in (1, 2, 3)]))
    cluster.apply({"kind": "BGPPeer", "metadata": {"name": "tor"},
                   "spec": {"peerIP": "192.0.2.3", "asNumber": TOR_AS}})
    nodes = []
    for i in (1, 2, 3):
        node = cluster.add_node(f"n{i}", 10 + i, start=False)
        cluster.apply({"kind": "Node", "metadata": {"name": node.name},
                       "spec": {"bgp": {"ipv4Address": node.address, "asNumber": 65010 + i}}})
        nodes.append(node.start())
    for node in nodes:
        node.add_pod("p")
    learn_each_other(cluster, nodes)
    tor.wait_established([n.ip for n in nodes])
    for i, node in enumerate(nodes, 1):
        for block in node.blocks():
            tor.wait_route(block, node.ip)
            assert [65010 + i] in tor.as_paths(block), tor.as_paths(block)
        assert {p["state"] for p in node.peers()} == {"up"}, node.peers()


def test_calicos_route_reflector_manifest_peers_every_node_with_the_reflector(cluster):
    """Calico's documented set-up: mesh off, the reflector Node labelled route-reflector=true
    with a routeReflectorClusterID (here a real BIRD, as ExaBGP cannot reflect), and
    BGPPeer nodeSelector all(), peerSelector route-reflector == 'true'."""
    cluster.apply(POOL)
    bgp_config(cluster, nodeToNodeMeshEnabled=False)
    rr_ip, cluster_id = "192.0.2.250", "244.0.0.1"
    cluster.apply({"kind": "Node", "metadata": {"name": "rr1", "labels": {"route-reflector": "true"}},
                   "spec": {"bgp": {"ipv4Address": f"{rr_ip}/24", "routeReflectorClusterID": cluster_id}}})
    cluster.apply({"kind": "BGPPeer", "metadata": {"name": "peer-with-route-reflectors"},
                   "spec": {"nodeSelector": "all()", "peerSelector": "route-reflector == 'true'"}})
    ips = ["192.0.2.11", "192.0.2.12"]
    rr = cluster.add_router("rr1", Bird, RouterSpec(rr_ip, NODE_AS, [Neighbor(ip, NODE_AS, rr_client=True)
                                                                     for ip in ips], cluster_id=cluster_id))
    nodes = [cluster.add_node(f"n{i}", 10 + i) for i in (1, 2)]
    for node in nodes:
        node.add_pod("p")
    rr.wait_established(ips)
    learn_each_other(cluster, nodes)
    for node in nodes:
        assert [(p["address"], p["type"], p["name"], p["state"]) for p in node.peers()] == \
            [(rr_ip, "node", "peer-with-route-reflectors", "up")], node.peers()


def test_a_bgppeer_naming_a_nodes_address_and_as_is_answered_by_that_node(cluster):
    """Calico's automatic reverse peering: n1's BGPPeer names n2's address and AS; n2
    configures the other end itself, the session comes up and the blocks cross."""
    cluster.apply(POOL)
    bgp_config(cluster, nodeToNodeMeshEnabled=False)
    cluster.apply({"kind": "BGPPeer", "metadata": {"name": "n1-to-n2"},
                   "spec": {"node": "n1", "peerIP": "192.0.2.12", "asNumber": NODE_AS}})
    nodes = [cluster.add_node(f"n{i}", 10 + i) for i in (1, 2)]
    for node in nodes:
        node.add_pod("p")
    learn_each_other(cluster, nodes)
    assert [(p["address"], p["name"]) for p in nodes[1].peers()] == [("192.0.2.11", "n1-to-n2")]
