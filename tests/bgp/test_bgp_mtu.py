"""The MTU follows the host: two nodes on one L2 whose uplinks have a 9000- or a 1400-byte
MTU, a vxlanMode Always pool, real agents and ExaBGP. The pods and the VXLAN devices get the
uplink's MTU less VXLAN's 50 bytes; a full-size packet with DF set crosses the tunnel with no
fragmentation anywhere, and one byte more is stopped in the pod itself (its MTU)."""

from __future__ import annotations

import json

import pytest

from tests.bgp.routers import module_cluster

pytestmark = [pytest.mark.root, pytest.mark.etcd, pytest.mark.slow]

VXLAN = "vxlan.routed"
DERIVE = {"mtu": 0}  # the conflist the chart writes by default


@pytest.fixture(scope="module", params=[9000, 1400], ids=["jumbo", "small"])
def pair(request, tmp_path_factory):
    uplink = request.param
    with module_cluster(tmp_path_factory.mktemp(f"mtu{uplink}")) as cluster:
        cluster.apply({"kind": "IPPool", "metadata": {"name": "vx"},
                       "spec": {"cidr": "10.244.0.0/16", "vxlanMode": "Always"}})
        a = cluster.add_node("a", 1, mtu=uplink, start=False)
        b = cluster.add_node("b", 2, mtu=uplink, start=False)
        for node in (a, b):
            node.agent.extra_args += ["--resync", "1"]  # the uplink-change test waits for a resync
            node.start()
        for node in (a, b):
            cluster.wait(lambda: cluster.sessions_up(node, 1), what=f"{node.name}'s mesh session")
        pods = {node.name: node.add_pod("p", DERIVE) for node in (a, b)}
        yield uplink, cluster, a, b, pods


def link_mtu(run, dev: str) -> int:
    return json.loads(run("ip", "-j", "link", "show", "dev", dev).stdout)[0]["mtu"]


def ip_stats(node) -> dict[str, int]:
    """The node namespace's IP counters (/proc/net/snmp is per netns)."""
    lines = [line.split() for line in node.ns.run("cat", "/proc/net/snmp").stdout.splitlines() if line.startswith("Ip:")]
    return dict(zip(lines[0][1:], map(int, lines[1][1:])))


def test_pods_and_the_tunnel_get_the_uplink_mtu_less_vxlan(pair):
    uplink, cluster, a, b, pods = pair
    for name, (pod, _) in pods.items():
        assert link_mtu(pod.run, "eth0") == uplink - 50, name
    for node in (a, b):
        cluster.wait(lambda: VXLAN in node.routes(), what=f"{node.name}'s VXLAN route")
        assert link_mtu(node.ns.run, VXLAN) == uplink - 50
        status = node.status("json")
        assert status.returncode == 0, status.stderr
        mtu = json.loads(status.stdout)["mtu"]
        assert mtu == {"uplink": uplink, "pod": uplink - 50, "source": "derived", "encapsulations": ["vxlan"],
                       "tunnels": {"vxlan": uplink - 50, "ipip": uplink - 20, "wireguard": uplink - 60}}
    table = a.status("table")
    assert f"MTU: uplink {uplink}, pods {uplink - 50} (derived" in table.stdout + table.stderr


def test_a_full_size_packet_crosses_unfragmented_and_one_byte_more_stops_in_the_pod(pair):
    uplink, cluster, a, b, pods = pair
    (pod_a, _), (_, ip_b) = pods["a"], pods["b"]
    pod_mtu = uplink - 50
    cluster.wait(lambda: VXLAN in a.routes() and VXLAN in b.routes(), what="VXLAN routes both ways")
    cluster.wait(lambda: pod_a.run("ping", "-c", "1", "-W", "1", ip_b, check=False).returncode == 0,
                 what="a small ping across")
    before_a, before_b = ip_stats(a), ip_stats(b)
    full = pod_a.run("ping", "-c", "3", "-W", "2", "-M", "do", "-s", str(pod_mtu - 28), ip_b, check=False)
    assert full.returncode == 0, full.stdout + full.stderr
    after_a, after_b = ip_stats(a), ip_stats(b)
    for key in ("FragCreates", "FragOKs", "FragFails", "ReasmReqds"):
        assert after_a[key] == before_a[key] and after_b[key] == before_b[key], (key, before_a, after_a, after_b)
    over = pod_a.run("ping", "-c", "1", "-W", "2", "-M", "do", "-s", str(pod_mtu - 27), ip_b, check=False)
    assert over.returncode != 0
    assert f"mtu={pod_mtu}" in over.stdout + over.stderr or "too long" in over.stdout + over.stderr, over


def test_the_tunnel_and_new_pods_follow_an_uplink_change(pair):
    uplink, cluster, a, b, pods = pair
    smaller = uplink - 100
    cluster.wait(lambda: VXLAN in a.routes(), what="a's VXLAN route")
    a.ns.run("ip", "link", "set", "eth0", "mtu", str(smaller))
    try:
        cluster.wait(lambda: link_mtu(a.ns.run, VXLAN) == smaller - 50, what=f"{VXLAN} to follow to {smaller - 50}")
        assert json.loads(a.status("json").stdout)["mtu"]["pod"] == smaller - 50
        pod, _ = a.add_pod("later", DERIVE)
        assert link_mtu(pod.run, "eth0") == smaller - 50
        # An explicit conflist MTU still wins over the derived one.
        pod, _ = a.add_pod("explicit", {"mtu": 1300})
        assert link_mtu(pod.run, "eth0") == 1300
    finally:
        a.ns.run("ip", "link", "set", "eth0", "mtu", str(uplink))
