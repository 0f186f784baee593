"""routed.dataplane.encap against the real kernel: two "nodes" (network namespaces
joined by a veth), each with a pod behind a cali veth, talking over VXLAN.

    pod1 10.65.1.2 ── cali ── node1 eth0 192.0.2.1 ──── veth ──── 192.0.2.2 eth0 node2 ── cali ── pod2 10.65.2.2
                             vxlan.routed                                vxlan.routed

Each node's default route leaves by an uplink veth that goes nowhere, so without the
VXLAN route a pod's packet for the other node's block is lost, never delivered by luck.
"""

from __future__ import annotations

import json
import subprocess
import time
from dataclasses import dataclass

import pytest

from routed.dataplane import bulk
from routed.dataplane.rtnl import Route
from routed.dataplane.encap import (
    VXLAN_DEV,
    ensure_ipip,
    ensure_vxlan,
    remove_vxlan,
    sync_vxlan_peers,
    vtep_mac,
)
from routed.dataplane.errors import DataplaneError
from routed.dataplane.names import host_veth_name
from routed.dataplane.pod import setup_pod
from tests.netns.nsutil import ip, ip_json, ping, require_root
from tests.support.netns import Netns

pytestmark = pytest.mark.root

NODE1, NODE2 = "192.0.2.1", "192.0.2.2"
BLOCK1, BLOCK2 = "10.65.1.0/26", "10.65.2.0/26"
POD1, POD2 = "10.65.1.2", "10.65.2.2"


@dataclass
class Node:
    ns: Netns
    ip: str
    pod: Netns | None = None
    pod_ip: str | None = None

    @property
    def name(self) -> str:
        return self.ns.name


def make_node(ns: Netns, address: str) -> None:
    """Forwarding on, and a default route out of an uplink veth pair whose both ends
    are in the node: proxy ARP for the pods' gateway needs a route, and traffic that
    the VXLAN route does not catch disappears there."""
    ns.run("ip", "link", "add", "uplink0", "type", "veth", "peer", "name", "uplink1")
    ns.run("ip", "link", "set", "uplink0", "up")
    ns.run("ip", "link", "set", "uplink1", "up")
    ns.run("ip", "route", "add", "default", "dev", "uplink0")
    ns.run("sysctl", "-qw", "net.ipv4.ip_forward=1")
    ns.run("ip", "addr", "add", f"{address}/24", "dev", "eth0")
    ns.run("ip", "link", "set", "eth0", "up")


def add_pod(node: Node, pod_ip: str) -> None:
    node.pod = Netns("pod")
    node.pod_ip = pod_ip
    setup_pod(node.name, node.pod.path, "eth0", host_veth_name("rt-encap", pod_ip), [f"{pod_ip}/32"])


@pytest.fixture
def nodes():
    require_root()
    made: list[Netns] = []
    try:
        ns1 = Netns("node1")
        made.append(ns1)
        ns2 = Netns("node2")
        made.append(ns2)
        ns1.run("ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", ns2.name)
        make_node(ns1, NODE1)
        make_node(ns2, NODE2)
        n1, n2 = Node(ns1, NODE1), Node(ns2, NODE2)
        add_pod(n1, POD1)
        made.append(n1.pod)
        add_pod(n2, POD2)
        made.append(n2.pod)
        yield n1, n2
    finally:
        for ns in reversed(made):
            ns.delete()


@pytest.fixture
def node():
    """One node netns with eth0 (192.0.2.1/24, its peer in the same netns) and no pods."""
    require_root()
    ns = Netns("vx")
    try:
        ns.run("ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth1")
        ns.run("ip", "link", "set", "eth1", "up")
        make_node(ns, NODE1)
        yield ns.name
    finally:
        ns.delete()


def vxlan_link(ns: str, name: str = VXLAN_DEV) -> dict:
    (link,) = ip_json(ns, "-d", "-s", "link", "show", name)
    return link


def peers_on(ns: str, dev: str = VXLAN_DEV) -> tuple[dict[str, str], dict[str, str]]:
    """(permanent neighbours ip -> mac, fdb entries mac -> dst) on ``dev``, as iproute2 shows them."""
    neigh = {n["dst"]: n["lladdr"] for n in ip_json(ns, "neigh", "show", "dev", dev) if "PERMANENT" in n.get("state", [])}
    out = subprocess.run(["bridge", "-n", ns, "-j", "fdb", "show", "dev", dev], check=True, capture_output=True, text=True).stdout
    fdb = {e["mac"]: e["dst"] for e in json.loads(out or "[]") if "dst" in e}
    return neigh, fdb


# --------------------------------------------------------------------------- pure


def test_vtep_mac_is_derived_from_the_node_address():
    assert vtep_mac("192.0.2.1") == "0e:52:c0:00:02:01"
    assert vtep_mac("10.255.0.17") == "0e:52:0a:ff:00:11"
    first = int(vtep_mac("192.0.2.1").split(":")[0], 16)
    assert first & 0x02 and not first & 0x01  # locally administered, unicast
    # IPv6 (the vxlan-v6.routed device): four bytes of the address's hash, the same everywhere.
    assert vtep_mac("fd00::1") == vtep_mac("FD00:0::1") != vtep_mac("fd00::2")
    assert vtep_mac("fd00::1").startswith("0e:56:") and len(vtep_mac("fd00::1").split(":")) == 6
    with pytest.raises(ValueError):
        vtep_mac("not-an-address")


# --------------------------------------------------------------------------- the device


def test_ensure_vxlan_creates_the_device(node):
    index = ensure_vxlan(node, NODE1, "eth0")

    link = vxlan_link(node)
    data = link["linkinfo"]["info_data"]
    assert link["ifindex"] == index
    assert link["linkinfo"]["info_kind"] == "vxlan"
    assert (data["id"], data["local"], data["port"], data["link"]) == (4096, NODE1, 4789, "eth0")
    assert data["learning"] is False
    assert link["address"] == vtep_mac(NODE1)
    assert link["mtu"] == 1450
    assert "UP" in link["flags"]


def test_ensure_vxlan_is_idempotent_and_repairs(node):
    index = ensure_vxlan(node, NODE1, "eth0")
    assert ensure_vxlan(node, NODE1, "eth0") == index

    ip(node, "link", "set", VXLAN_DEV, "down", "mtu", "1300", "address", "02:00:00:00:00:01")
    assert ensure_vxlan(node, NODE1, "eth0", mtu=1400) == index  # fixed in place
    link = vxlan_link(node)
    assert (link["mtu"], link["address"], "UP" in link["flags"]) == (1400, vtep_mac(NODE1), True)

    # A VNI cannot change on a live device: it is recreated (new ifindex).
    new_index = ensure_vxlan(node, NODE1, "eth0", vni=5000)
    assert new_index != index
    link = vxlan_link(node)
    assert link["linkinfo"]["info_data"]["id"] == 5000 and link["ifindex"] == new_index
    assert len([l for l in ip_json(node, "link", "show") if l["ifname"] == VXLAN_DEV]) == 1

    assert remove_vxlan(node) is True
    assert not [l for l in ip_json(node, "link", "show") if l["ifname"] == VXLAN_DEV]
    assert remove_vxlan(node) is False


def test_ensure_vxlan_leaves_a_foreign_device_alone(node):
    ip(node, "link", "add", VXLAN_DEV, "type", "veth", "peer", "name", "other0")
    with pytest.raises(DataplaneError, match="not a VXLAN device"):
        ensure_vxlan(node, NODE1, "eth0")
    with pytest.raises(DataplaneError, match="not a VXLAN device"):
        remove_vxlan(node)
    (link,) = ip_json(node, "-d", "link", "show", VXLAN_DEV)
    assert link["linkinfo"]["info_kind"] == "veth"


def test_ensure_vxlan_without_parent_is_a_clear_error(node):
    with pytest.raises(DataplaneError, match="parent device nosuch0 does not exist"):
        ensure_vxlan(node, NODE1, "nosuch0")
    assert not [l for l in ip_json(node, "link", "show") if l["ifname"] == VXLAN_DEV]


# --------------------------------------------------------------------------- peers


def test_sync_vxlan_peers_adds_and_removes_only_its_entries(node):
    ensure_vxlan(node, NODE1, "eth0")
    ip(node, "neigh", "add", "192.0.2.77", "lladdr", "02:00:00:00:00:77", "dev", "eth0", "nud", "permanent")

    added, removed = sync_vxlan_peers(node, ["192.0.2.2", "192.0.2.3"])
    assert (added, removed) == ({"192.0.2.2", "192.0.2.3"}, set())
    neigh, fdb = peers_on(node)
    assert neigh == {"192.0.2.2": vtep_mac("192.0.2.2"), "192.0.2.3": vtep_mac("192.0.2.3")}
    assert fdb == {vtep_mac("192.0.2.2"): "192.0.2.2", vtep_mac("192.0.2.3"): "192.0.2.3"}

    assert sync_vxlan_peers(node, ["192.0.2.3", "192.0.2.2"]) == (set(), set())  # converged

    # A wrong MAC (someone's edit) is put right.
    ip(node, "neigh", "replace", "192.0.2.3", "lladdr", "02:00:00:00:00:03", "dev", VXLAN_DEV, "nud", "permanent")
    assert sync_vxlan_peers(node, ["192.0.2.2", "192.0.2.3"]) == ({"192.0.2.3"}, set())
    assert peers_on(node)[0]["192.0.2.3"] == vtep_mac("192.0.2.3")

    # A node that is no longer listed loses both entries; nothing else changes.
    assert sync_vxlan_peers(node, ["192.0.2.3"]) == (set(), {"192.0.2.2"})
    neigh, fdb = peers_on(node)
    assert neigh == {"192.0.2.3": vtep_mac("192.0.2.3")}
    assert fdb == {vtep_mac("192.0.2.3"): "192.0.2.3"}
    assert peers_on(node, "eth0")[0] == {"192.0.2.77": "02:00:00:00:00:77"}

    assert sync_vxlan_peers(node, []) == (set(), {"192.0.2.3"})
    assert peers_on(node) == ({}, {})


def test_sync_vxlan_peers_without_device_is_a_clear_error(node):
    with pytest.raises(DataplaneError, match="does not exist"):
        sync_vxlan_peers(node, ["192.0.2.2"])


# --------------------------------------------------------------------------- end to end


def tx_rx(ns: str) -> tuple[int, int]:
    stats = vxlan_link(ns)["stats64"]
    return stats["tx"]["packets"], stats["rx"]["packets"]


def capture_vxlan(ns: str, src: str) -> subprocess.Popen:
    """tcpdump on the node's eth0 for VXLAN packets from ``src``; ready when it returns."""
    proc = subprocess.Popen(
        ["ip", "netns", "exec", ns, "tcpdump", "-i", "eth0", "-n", "-l", "-c", "1", "-v",
         f"udp port 4789 and src {src}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.monotonic() + 10
    line = ""
    while "listening on" not in line and time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line and proc.poll() is not None:
            break
    assert "listening on" in line, f"tcpdump did not start: {line}"
    return proc


def test_pods_talk_across_vxlan(nodes):
    n1, n2 = nodes
    for n in nodes:
        ensure_vxlan(n.name, n.ip, "eth0")
    # No route yet: the packet leaves by the dead uplink, the other pod is unreachable.
    assert not ping(n1.pod.name, POD2, tries=1)

    assert sync_vxlan_peers(n1.name, [NODE2]) == ({NODE2}, set())
    assert sync_vxlan_peers(n2.name, [NODE1]) == ({NODE1}, set())
    assert bulk.apply(n1.name, replace=[Route(BLOCK2, gateway=NODE2, dev=VXLAN_DEV, onlink=True)]) == []
    assert bulk.apply(n2.name, replace=[Route(BLOCK1, gateway=NODE1, dev=VXLAN_DEV, onlink=True)]) == []
    (route,) = [r for r in ip_json(n1.name, "route", "show", BLOCK2) if r.get("protocol") == "202"]
    assert (route["gateway"], route["dev"], "onlink" in route["flags"]) == (NODE2, VXLAN_DEV, True)

    tx1, rx1 = tx_rx(n1.name)
    tx2, rx2 = tx_rx(n2.name)
    capture = capture_vxlan(n2.name, NODE1)
    try:
        assert ping(n1.pod.name, POD2)
        out, _ = capture.communicate(timeout=10)
    finally:
        if capture.poll() is None:
            capture.kill()  # our own tcpdump, by its handle
            capture.wait()
    # On the wire between the nodes: UDP 4789 from node1 carrying pod1 -> pod2 ICMP.
    assert "VXLAN" in out and f"{POD1} > {POD2}" in out, out
    assert ping(n2.pod.name, POD1)

    # The packets went through the VXLAN devices, both ways.
    tx1b, rx1b = tx_rx(n1.name)
    tx2b, rx2b = tx_rx(n2.name)
    assert tx1b > tx1 and rx1b > rx1
    assert tx2b > tx2 and rx2b > rx2

    # Node1 forgets node2: its entries go, and the pods can no longer reach each other.
    assert sync_vxlan_peers(n1.name, []) == (set(), {NODE2})
    assert peers_on(n1.name) == ({}, {})
    assert not ping(n1.pod.name, POD2, tries=1)
    # Put back, it works again (the route was never touched).
    assert sync_vxlan_peers(n1.name, [NODE2]) == ({NODE2}, set())
    assert ping(n1.pod.name, POD2)


# --------------------------------------------------------------------------- IPIP


def test_ensure_ipip_on_a_kernel_without_ipip_says_so(node):
    with pytest.raises(DataplaneError) as info:
        ensure_ipip(node)
    assert str(info.value) == "this kernel has no IPIP support (ip link add type ipip: Unknown device type)"
    assert not [l for l in ip_json(node, "link", "show") if l["ifname"] == "tunl0"]
