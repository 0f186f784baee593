"""Two subnets joined by a router, and VXLAN: with vxlanMode CrossSubnet, routes to nodes on
the same subnet are direct and routes to nodes behind the router go through vxlan.routed;
with vxlanMode Always, even a neighbour on the same L2 is reached through VXLAN.

    switch A 192.0.2.0/24       gw (.254 on both, forwarding)     switch B 198.51.100.0/24
      a1 .1   a2 .2  ------------------------------------------------  b1 .1

The router knows nothing of pod addresses: pod traffic between subnets can only cross
it encapsulated.
"""

from __future__ import annotations

import json

import pytest

from routed.lab import topology
from tests.bgp.routers import module_cluster, ping

pytestmark = [pytest.mark.root, pytest.mark.etcd, pytest.mark.slow]

VXLAN = "vxlan.routed"
SUBNET_A, SUBNET_B = "192.0.2.0/24", "198.51.100.0/24"
GW_A, GW_B = "192.0.2.254", "198.51.100.254"
ALWAYS = {"ipam": {"ipv4_pools": ["zz-always"]}}


@pytest.fixture(scope="module")
def racks(tmp_path_factory):
    with module_cluster(tmp_path_factory.mktemp("encap"), subnet=SUBNET_A) as cluster:
        cluster.apply({"kind": "IPPool", "metadata": {"name": "cross"},
                       "spec": {"cidr": "10.244.0.0/16", "vxlanMode": "CrossSubnet"}})
        # Only pods that name it use it ("cross" sorts first).
        cluster.apply({"kind": "IPPool", "metadata": {"name": "zz-always"},
                       "spec": {"cidr": "10.245.0.0/16", "vxlanMode": "Always"}})
        switch_b = cluster.add_switch("swb")
        cluster.add_netns("gw", [("eth0", cluster.switch, f"{GW_A}/24"), ("eth1", switch_b, f"{GW_B}/24")])
        a1 = cluster.add_node("a1", 1, gateway=GW_A)
        a2 = cluster.add_node("a2", 2, gateway=GW_A)
        b1 = cluster.add_node("b1", 1, switch=switch_b, subnet=SUBNET_B, gateway=GW_B)
        nodes = [a1, a2, b1]
        for node in nodes:
            cluster.wait(lambda: cluster.sessions_up(node, 2), what=f"{node.name}'s mesh sessions")
        pods = {node.name: node.add_pod("p") for node in nodes}
        pods.update({f"{node.name}-always": node.add_pod("q", ALWAYS) for node in (a1, a2)})
        yield cluster, {n.name: n for n in nodes}, pods


def block_of(node, pool_prefix: str) -> str:
    return next(b for b in node.blocks() if b.startswith(pool_prefix))


def vxlan_packets(node) -> tuple[int, int]:
    out = node.ns.run("ip", "-s", "-j", "link", "show", "dev", VXLAN).stdout
    stats = json.loads(out)[0]["stats64"]
    return stats["tx"]["packets"], stats["rx"]["packets"]


def wait_blocks(cluster, nodes, prefix):
    for node in nodes:
        cluster.wait(lambda: any(b.startswith(prefix) for b in node.blocks()), what=f"{node.name}'s {prefix} block")
    return {node.name: block_of(node, prefix) for node in nodes}


def test_cross_subnet_routes_are_direct_on_the_subnet_and_vxlan_across(racks):
    cluster, n, pods = racks
    a1, a2, b1 = n["a1"], n["a2"], n["b1"]
    blocks = wait_blocks(cluster, (a1, a2, b1), "10.244.")
    expected = {
        "a1": [f"{blocks['a2']} via {a2.ip} dev eth0", f"{blocks['b1']} via {b1.ip} dev {VXLAN} onlink"],
        "a2": [f"{blocks['a1']} via {a1.ip} dev eth0", f"{blocks['b1']} via {b1.ip} dev {VXLAN} onlink"],
        "b1": [f"{blocks['a1']} via {a1.ip} dev {VXLAN} onlink", f"{blocks['a2']} via {a2.ip} dev {VXLAN} onlink"],
    }
    for name, lines in expected.items():
        node = n[name]
        cluster.wait(lambda: all(line in node.routes() for line in lines), what=f"{name}: {lines}")
    assert b1.ip in a1.ns.run("bridge", "fdb", "show", "dev", VXLAN).stdout
    # Across the router: pods answer, and every packet went through the VXLAN devices.
    a1_tx, a1_rx = vxlan_packets(a1)
    b1_tx, b1_rx = vxlan_packets(b1)
    pod_a1, ip_a1 = pods["a1"]
    pod_b1, ip_b1 = pods["b1"]
    assert ping(pod_a1.run, ip_b1, count=5), f"a1 pod {ip_a1} -> b1 pod {ip_b1}"
    assert ping(pod_b1.run, ip_a1, count=5), f"b1 pod {ip_b1} -> a1 pod {ip_a1}"
    a1_tx2, a1_rx2 = vxlan_packets(a1)
    b1_tx2, b1_rx2 = vxlan_packets(b1)
    # Each side sent 5 echo requests through its VXLAN device and received the other's 5.
    assert a1_tx2 - a1_tx >= 5 and a1_rx2 - a1_rx >= 5, (a1_tx, a1_tx2, a1_rx, a1_rx2)
    assert b1_tx2 - b1_tx >= 5 and b1_rx2 - b1_rx >= 5, (b1_tx, b1_tx2, b1_rx, b1_rx2)
    pod_a2, ip_a2 = pods["a2"]
    assert ping(pod_a2.run, ip_b1, count=2)
    assert ping(pod_a1.run, ip_a2, count=2)
    # The router never routes a pod address itself: it has no route for the pools.
    assert "10.244." not in topology.ip("route", "show", netns=f"{cluster.prefix}gw").stdout


def test_vxlan_always_encapsulates_on_one_l2(racks):
    cluster, n, pods = racks
    a1, a2 = n["a1"], n["a2"]
    blocks = wait_blocks(cluster, (a1, a2), "10.245.")
    cluster.wait(lambda: f"{blocks['a2']} via {a2.ip} dev {VXLAN} onlink" in a1.routes(),
                 what="a1 to reach a2's Always block through VXLAN")
    cluster.wait(lambda: f"{blocks['a1']} via {a1.ip} dev {VXLAN} onlink" in a2.routes(),
                 what="a2 to reach a1's Always block through VXLAN")
    assert a2.ip in a1.ns.run("bridge", "fdb", "show", "dev", VXLAN).stdout
    before = vxlan_packets(a2)
    pod, src = pods["a1-always"]
    _, dst = pods["a2-always"]
    assert ping(pod.run, dst, count=5), f"{src} -> {dst}"
    after = vxlan_packets(a2)
    assert after[1] - before[1] >= 5 and after[0] - before[0] >= 5, (before, after)
    # The CrossSubnet pool's blocks between the same two nodes stay direct.
    assert f"{block_of(a2, '10.244.')} via {a2.ip} dev eth0" in a1.routes()
