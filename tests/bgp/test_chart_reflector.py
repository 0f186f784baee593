"""The chart's BIRD route reflector, run as rendered: a real BIRD on the chart's bird.conf (MD5
from a Secret, default clientRanges), GoBGP nodes as its clients, and an outsider; and a
dual-stack reflector (addresses6) with two dual-stack routed nodes as its clients.

    rr .250             BIRD, the chart's bird-0.conf
    node-a .11, node-b .12   GoBGP, iBGP AS 64512, rr clients with the Secret's password
    outsider 198.51.100.7    GoBGP on the same wire, outside every clientRange

node-a announces its block and a borrowed address (both reflected to node-b, next hop
node-a), and a /27 slice, another node's block with node-b's next hop, and a prefix
outside the pool: the reflector takes none of those.
"""

from __future__ import annotations

import re

import pytest
import yaml

from tests.bgp.routers import Announce, Bird, GoBgp, Neighbor, RouterSpec, module_cluster, ping, wait_for
from tests.chart import chartutil as cu

pytestmark = [pytest.mark.root, pytest.mark.slow]

AS = 64512
RR, A, B, OUTSIDER = "192.0.2.250", "192.0.2.11", "192.0.2.12", "198.51.100.7"
PASSWORD = "rr-md5-s3cret"
GOOD = ["10.244.0.0/26", "10.244.1.5/32"]
BAD = ["10.244.0.64/27", "10.244.2.0/26", "198.51.100.0/24"]


class ChartBird(Bird):
    """BIRD on a configuration the chart rendered, its password include pointed at a file here."""

    def __init__(self, netns, workdir, spec, text: str):
        super().__init__(netns, workdir, spec)
        (self.workdir / "password.conf").write_text(f'password "{PASSWORD}";\n')
        self.text = text.replace('include "/run/bird/password.conf";',
                                 f'include "{self.workdir}/password.conf";')

    def render(self) -> str:
        return self.text


@pytest.fixture(scope="module")
def fabric(tmp_path_factory):
    rendered = cu.render({"routeReflector": {"enabled": True, "addresses": [f"{RR}/24"],
                                             "passwordSecret": {"name": "rr-bgp", "key": "password"}}})
    text = rendered.get("ConfigMap", "routed-route-reflector")["data"]["bird-0.conf"]
    with module_cluster(tmp_path_factory.mktemp("chart-rr")) as cluster:
        rr = cluster.add_router("rr", lambda ns, wd, spec: ChartBird(ns, wd, spec, text), RouterSpec(RR, AS))
        clients = {}
        for name, address, announce in (
                ("node-a", A, [Announce(p) for p in GOOD + ["10.244.0.64/27", "198.51.100.0/24"]]
                 + [Announce("10.244.2.0/26", next_hop=B)]),
                ("node-b", B, [])):
            spec = RouterSpec(address, AS, [Neighbor(RR, AS, password=PASSWORD)], announce)
            clients[name] = cluster.add_router(name, GoBgp, spec)
        outsider = cluster.add_router("outsider", GoBgp, RouterSpec(OUTSIDER, AS, [Neighbor(RR, AS)],
                                                                    [Announce("10.244.3.0/26")]))
        # Same wire, another subnet: each side reaches the other directly.
        outsider.run("ip", "route", "add", f"{RR}/32", "dev", "eth0")
        rr.run("ip", "route", "add", f"{OUTSIDER}/32", "dev", "eth0")
        for client in clients.values():
            client.wait_established([RR])
        yield rr, clients, outsider


def test_the_reflector_takes_only_block_shaped_routes_from_their_node(fabric):
    rr, clients, _ = fabric
    for prefix in GOOD:
        rr.wait_route(prefix, A)
        clients["node-b"].wait_route(prefix, A)  # reflected, next hop unchanged
    rib = rr.rib()
    assert not set(BAD) & set(rib), rib
    assert not set(BAD) & set(clients["node-b"].rib()), clients["node-b"].rib()


def test_the_reflector_is_closed_to_addresses_outside_its_client_ranges(fabric):
    rr, clients, outsider = fabric
    # The outsider's connections reach BIRD, which turns them away.
    wait_for(lambda: f"from unknown address {OUTSIDER}" in rr.log.read_text(), 60,
             "BIRD to turn the outsider away", rr.log)
    assert RR not in outsider.established()
    clients["node-b"].wait_route(GOOD[0], A)
    assert "10.244.3.0/26" not in rr.rib() and "10.244.3.0/26" not in clients["node-b"].rib()


# -- dual stack: the chart's reflector with addresses6, real routed nodes --------------------------

RR6, SUBNET6 = "2001:db8:2::250", "2001:db8:2::/64"
DUAL = {"ipam": {"assign_ipv4": True, "assign_ipv6": True}}


class DualChartBird(ChartBird):
    """The chart's BIRD, its IPv6 address on the NIC first, as the chart's container adds it."""

    def start(self, timeout: float = 20.0):
        self.run("ip", "-6", "addr", "add", f"{RR6}/64", "dev", "eth0", "nodad")
        return super().start(timeout)


@pytest.fixture(scope="module")
def dual_fabric(tmp_path_factory):
    rendered = cu.render({"routeReflector": {"enabled": True, "addresses": [f"{RR}/24"],
                                             "addresses6": [f"{RR6}/64"], "clientRanges6": [SUBNET6]},
                          "ipPool": {"cidr": "10.244.0.0/16"}, "ipv6Pool": {"cidr": "fd00:10::/48", "blockSize": 122}})
    text = rendered.get("ConfigMap", "routed-route-reflector")["data"]["bird-0.conf"]
    docs = list(yaml.safe_load_all(rendered.get("ConfigMap", "routed-resources")["data"]["resources.yaml"]))
    reflector = next(d for d in docs if d["kind"] == "Node")
    with module_cluster(tmp_path_factory.mktemp("chart-rr6")) as cluster:
        cluster.apply({"kind": "IPPool", "metadata": {"name": "v4"}, "spec": {"cidr": "10.244.0.0/16"}})
        cluster.apply({"kind": "IPPool", "metadata": {"name": "v6"}, "spec": {"cidr": "fd00:10::/48", "blockSize": 122}})
        cluster.apply({"kind": "BGPConfiguration", "metadata": {"name": "default"},
                       "spec": {"asNumber": AS, "nodeToNodeMeshEnabled": False}})
        cluster.apply({k: v for k, v in reflector.items() if k != "apiVersion"})  # the chart's reflector Node
        rr = cluster.add_router("rr", lambda ns, wd, spec: DualChartBird(ns, wd, spec, text), RouterSpec(RR, AS))
        a, b = (cluster.add_node(name, i, subnet6=SUBNET6) for name, i in (("a", 1), ("b", 2)))
        for node in (a, b):
            cluster.wait(lambda: {(p["address"], p["state"]) for p in node.peers()} == {(RR, "up"), (RR6, "up")},
                         what=f"{node.name}'s IPv4 and IPv6 sessions with the reflector, and no other")
        yield cluster, rr, a, b


def test_a_dual_stack_reflector_carries_ipv6_blocks_over_ipv6_sessions(dual_fabric):
    cluster, rr, a, b = dual_fabric
    pods = {node.name: node.add_pod("p", DUAL) for node in (a, b)}
    blocks = {}
    for node in (a, b):
        cluster.wait(lambda: "blackhole fd00:10:" in node.ns.run("ip", "-6", "route", "show", "proto", "201").stdout,
                     what=f"{node.name}'s IPv6 block")
        out = node.ns.run("ip", "-6", "route", "show", "proto", "201").stdout
        blocks[node.name] = next(line.split()[1] for line in out.splitlines() if line.startswith("blackhole fd00:10:"))
    # Reflected with the next hop kept: each node reaches the other's IPv6 block directly.
    for node, other in ((a, b), (b, a)):
        cluster.wait(lambda: f"{blocks[other.name]} via {other.ip6} dev eth0"
                     in node.ns.run("ip", "-6", "route", "show", "proto", "202").stdout,
                     what=f"{node.name} to learn {other.name}'s IPv6 block through the reflector")
    (pod_a, ip_a), (pod_b, ip_b) = pods["a"], pods["b"]
    ip6 = {name: pod.run("ip", "-6", "-o", "addr", "show", "dev", "eth0", "scope", "global").stdout.split()[3]
           .split("/")[0] for name, (pod, _) in pods.items()}
    cluster.wait(lambda: ping(pod_a.run, ip6["b"]) and ping(pod_b.run, ip6["a"]),
                 what="pods to ping each other over IPv6")
    assert ping(pod_a.run, ip_b) and ping(pod_b.run, ip_a)  # and IPv4 still
    # At the reflector: each IPv6 block from its node's IPv6 session, next hop that node.
    table = rr.birdc("show", "route", "table", "master6")
    for node in (a, b):
        assert re.search(rf"^{re.escape(blocks[node.name])}\s.*\[node6_\S+ .*\n\s+via {re.escape(node.ip6)} ",
                         table, re.M), table
