"""IPv6 end to end across nodes (issue 15): two dual-stack nodes (real etcd, agents, ExaBGP)
register both addresses, run an IPv4 and a separate IPv6 mesh session, announce their IPv6
blocks on the IPv6 session with their own IPv6 address as next hop, install the other's
IPv6 block directly, and their dual-stack pods reach each other over both families."""

from __future__ import annotations

import ipaddress
import json

import pytest

from routed import resources as r
from routed.dataplane.encap import vtep_gateway6
from routed.lab import topology
from tests.bgp.routers import Announce, GoBgp, Neighbor, RouterSpec, module_cluster, ping

pytestmark = [pytest.mark.root, pytest.mark.etcd, pytest.mark.slow]

DUAL = {"ipam": {"assign_ipv4": True, "assign_ipv6": True}}
SUBNET6 = "2001:db8:2::/64"


def pod_ip6(pod) -> str:
    out = pod.run("ip", "-6", "-o", "addr", "show", "dev", "eth0", "scope", "global").stdout
    return out.split()[3].split("/")[0]


def v6_routes(node) -> str:
    return node.ns.run("ip", "-6", "route", "show", "proto", "202").stdout


def v6_block(node) -> str:
    out = node.ns.run("ip", "-6", "route", "show", "proto", "201").stdout
    return next(line.split()[1] for line in out.splitlines() if line.startswith("blackhole fd00:10:"))


@pytest.fixture(scope="module")
def dual(tmp_path_factory):
    with module_cluster(tmp_path_factory.mktemp("dual")) as cluster:
        cluster.apply({"kind": "IPPool", "metadata": {"name": "v4"}, "spec": {"cidr": "10.244.0.0/16"}})
        cluster.apply({"kind": "IPPool", "metadata": {"name": "v6"},
                       "spec": {"cidr": "fd00:10::/48", "blockSize": 122}})
        a, b = (cluster.add_node(name, i, subnet6=SUBNET6) for name, i in (("a", 1), ("b", 2)))
        yield cluster, a, b


def test_nodes_register_both_addresses(dual):
    cluster, a, b = dual
    for node in (a, b):
        bgp = cluster.store.find(r.Node, node.name).spec.bgp
        assert (bgp.ipv4_address, bgp.ipv6_address) == (node.address, node.address6)


def test_pods_reach_each_other_over_ipv6_across_nodes(dual):
    cluster, a, b = dual
    for node, other in ((a, b), (b, a)):
        for address in (other.ip, other.ip6):
            cluster.wait(lambda: any(p["address"] == address and p["state"] == "up" for p in node.peers()),
                         what=f"{node.name}'s mesh session with {address}")
    pods = {node.name: node.add_pod("p", DUAL) for node in (a, b)}
    for node in (a, b):
        cluster.wait(lambda: "blackhole fd00:10:" in node.ns.run("ip", "-6", "route", "show", "proto", "201").stdout,
                     what=f"{node.name}'s IPv6 block")
    blocks = {node.name: v6_block(node) for node in (a, b)}
    # The other's IPv6 block, direct (same subnet), via its registered IPv6 address.
    cluster.wait(lambda: f"{blocks['a']} via {a.ip6} dev eth0" in v6_routes(b), what="b to learn a's IPv6 block")
    cluster.wait(lambda: f"{blocks['b']} via {b.ip6} dev eth0" in v6_routes(a), what="a to learn b's IPv6 block")
    (pod_a, ip_a), (pod_b, ip_b) = pods["a"], pods["b"]
    ip6_a, ip6_b = pod_ip6(pod_a), pod_ip6(pod_b)
    cluster.wait(lambda: ping(pod_a.run, ip6_b) and ping(pod_b.run, ip6_a), what="pods to ping each other over IPv6")
    assert ping(pod_a.run, ip_b) and ping(pod_b.run, ip_a)  # and IPv4 still
    # The IPv4 session carries no IPv6 route and the IPv6 session no IPv4 route.
    v4_blocks = [blk for blk in a.blocks() if blk.startswith("10.244.")]
    assert v4_blocks and f"{v4_blocks[0]} via {a.ip} dev eth0" in b.routes()
    by_address = {p["address"]: p for p in b.peers()}
    assert by_address[a.ip]["accepted"] == len(v4_blocks) and by_address[a.ip6]["accepted"] == 1, by_address
    assert "Traceback" not in a.agent.log.read_text() + b.agent.log.read_text()


def test_node_status_shows_both_families(dual):
    cluster, a, b = dual
    cluster.wait(lambda: sum(p["state"] == "up" and p["name"] == "b" for p in a.peers()) == 2,
                 what="a's two sessions with b")
    status = a.status("json")
    assert status.returncode == 0, status.stderr
    doc = json.loads(status.stdout)
    assert doc["node"]["addresses"] == {"ipv4": a.address, "ipv6": a.address6}, doc["node"]
    assert [(p["address"], p["family"]) for p in doc["peers"] if p["name"] == "b"] == [(b.ip, "IPv4"), (b.ip6, "IPv6")]
    wide = a.status("wide")
    assert wide.returncode == 0, wide.stderr
    assert a.address6 in wide.stdout and "IPv6" in wide.stdout, wide.stdout


def test_an_ipv6_vxlan_pool_crosses_over_vxlan_on_ipv6(dual):
    """vxlanMode Always on an IPv6 pool: vxlan-v6.routed between the nodes' IPv6 addresses,
    MTU uplink - 70, and a full-size IPv6 packet crosses without fragmentation."""
    cluster, a, b = dual
    cluster.apply({"kind": "IPPool", "metadata": {"name": "v6x"},
                   "spec": {"cidr": "fd00:20::/48", "blockSize": 122, "vxlanMode": "Always"}})
    for node in (a, b):  # pods get 1500 - 70 once the agents have seen the pool
        cluster.wait(lambda: json.loads(node.status("json").stdout)["mtu"]["pod"] == 1430,
                     what=f"{node.name}'s pod MTU for VXLAN over IPv6")
    conf = {"ipam": {"assign_ipv4": True, "assign_ipv6": True, "ipv6_pools": ["v6x"]}}
    pods = {node.name: node.add_pod("x", conf)[0] for node in (a, b)}
    ip6 = {name: pod_ip6(pod) for name, pod in pods.items()}
    assert all(address.startswith("fd00:20:") for address in ip6.values()), ip6

    def block_of(node) -> str | None:  # None until its block route is in (the block controller's pass)
        out = node.ns.run("ip", "-6", "route", "show", "proto", "201").stdout
        return next((line.split()[1] for line in out.splitlines() if line.startswith("blackhole fd00:20:")), None)

    for node, other in ((a, b), (b, a)):
        # Via the other's VTEP link-local address: IPv6 refuses its uplink address onlink there.
        gateway = vtep_gateway6(other.ip6)
        cluster.wait(lambda: (block := block_of(other)) is not None
                     and f"{block} via {gateway} dev vxlan-v6.routed" in v6_routes(node),
                     what=f"{node.name} to route {other.name}'s VXLAN IPv6 block over vxlan-v6.routed")
    link = a.ns.run("ip", "-d", "-j", "link", "show", "vxlan-v6.routed").stdout
    (info,) = json.loads(link)
    assert info["mtu"] == 1430 and info["linkinfo"]["info_data"]["local6"] == a.ip6, info
    cluster.wait(lambda: ping(pods["a"].run, ip6["b"]) and ping(pods["b"].run, ip6["a"]),
                 what="pods to ping each other over VXLAN on IPv6")
    # 1430 - 40 (IPv6) - 8 (ICMPv6): a full-size packet, never fragmented.
    full = pods["a"].run("ping", "-6", "-c", "1", "-W", "2", "-M", "do", "-s", "1382", ip6["b"], check=False)
    assert full.returncode == 0, full.stdout + full.stderr
    # The IPv4 mesh is untouched by the IPv6 device.
    assert "vxlan" not in b.routes()


ROGUE6 = "2001:db8:2::66"


def test_a_hostile_ipv6_peer_cannot_steal_ipv6_pod_traffic(dual):
    """The IPv4 hijack checks, over IPv6: a peer (GoBGP on an IPv6 session, a global BGPPeer)
    announcing a's IPv6 block or a pod's /128 with another next hop, or a slice of the pool,
    is refused; b keeps routing a's block to a's IPv6 address."""
    cluster, a, b = dual
    cluster.apply({"kind": "BGPPeer", "metadata": {"name": "rogue6"}, "spec": {"peerIP": ROGUE6, "asNumber": 64512}})
    ns = cluster.add_netns("rogue6", [("eth0", cluster.switch, None)])
    topology.add_address6(ns, "eth0", f"{ROGUE6}/64")
    rogue = GoBgp(ns, cluster.workdir / "rogue6", RouterSpec(ROGUE6, 64512, [Neighbor(a.ip6, 64512),
                                                                             Neighbor(b.ip6, 64512)],
                                                             router_id="192.0.2.66"))
    cluster.routers.append(rogue)
    rogue.start()
    rogue.wait_established([a.ip6, b.ip6])
    block = v6_block(a)
    pod_a = next(pod for name, pod, _ in a.pods if name == "p")
    stolen = f"{pod_ip6(pod_a)}/128"
    slice_ = str(next(ipaddress.ip_network("fd00:10::/48").subnets(new_prefix=120)))
    # a's block via b (a node, not its owner); a's pod's /128 via the rogue itself; a slice
    # of the pool that is no block, via a.
    for prefix, hop in ((block, b.ip6), (stolen, ROGUE6), (slice_, a.ip6)):
        rogue.announce(Announce(prefix, next_hop=hop))
    refused = {"wrong-next-hop": 1, "next-hop-not-a-node": 1, "not-in-ipam": 1}
    cluster.wait(lambda: b.peer(ROGUE6)["rejectedBy"] == refused,
                 what="b to refuse every route of the rogue IPv6 peer")
    assert b.peer(ROGUE6)["accepted"] == 0
    assert f"{block} via {a.ip6} dev eth0" in v6_routes(b)
    destinations = {line.split()[0] for line in v6_routes(b).splitlines()}  # a /128 shows bare
    assert not destinations & {stolen, stolen.removesuffix("/128"), slice_}, destinations
    assert ping(next(pod for name, pod, _ in b.pods if name == "p").run, stolen.removesuffix("/128"))


def test_a_node_without_the_flag_autodetects_its_ipv6_address(dual):
    """No --node-ip6: the global address on the IPv6 default route's interface is registered,
    and the others open an IPv6 session to it."""
    cluster, a, b = dual
    c = cluster.add_node("c", 3, start=False)
    topology.add_address6(c.ns.name, "eth0", "2001:db8:2::3/64")
    c.ns.run("ip", "-6", "route", "add", "default", "via", "2001:db8:2::fe", "dev", "eth0")
    c.start()
    cluster.wait(lambda: (cluster.store.find(r.Node, "c").spec.bgp.ipv6_address or "") == "2001:db8:2::3/64",
                 what="c to register its autodetected IPv6 address")
    cluster.wait(lambda: any(p["address"] == "2001:db8:2::3" and p["state"] == "up" for p in a.peers()),
                 what="a's IPv6 session with c")
