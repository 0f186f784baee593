"""WireGuard through the kernel module, between two nodes — runs ONLY inside the VM
(tests/vm/run_in_vm.py), whose Debian kernel has the module this machine's lacks.

The agent's own controller (routed/agent/wireguard.py, class WireGuard) runs each node's
passes, on the in-memory KV instead of etcd (no etcd in the VM; the KV's semantics are
etcd's, checked in tests/integration): it makes the key, publishes it on the Node,
creates wg.routed through rtnetlink (link kind "wireguard": the kernel path, tried
before wireguard-go), sets the peers with `wg syncconf` and routes pod traffic into the
device through our table and rule. The nodes and pods are wired as in guest_ipip.py:

    pod A 10.10.1.2 ── node A eth0 192.0.2.1/24 ── veth ── 192.0.2.2/24 eth0 node B ── pod B 10.10.2.2
                       wg.routed (kernel)                     wg.routed (kernel)

A capture on the inter-node link sees the pods' pings only as UDP 51820 between the
node addresses, never a pod address.
"""

from __future__ import annotations

import json
import os

import pytest

from tests.support.netns import Netns
from tests.vm.guest_ipip import _make_node, _only_in_vm, ip, pings_on_the_wire  # noqa: F401 (fixture)

pytestmark = pytest.mark.vm

POOL = "10.10.0.0/16"
WG_MTU = 1500 - 60
PORT = 51820


@pytest.fixture
def cluster(tmp_path):
    """Two nodes with a pod each, registered in an in-memory datastore with WireGuard on;
    yields (nodes, controllers) and undoes everything."""
    # Imports here: each costs seconds in this KVM-less VM, and the host never collects this file.
    from ipam.allocator import IPAM
    from routed import resources as r
    from routed.agent.wireguard import WireGuard
    from routed.datastore.memory import MemoryKV
    from routed.datastore.resources import ResourceStore

    kv = MemoryKV()
    store = ResourceStore(kv)
    store.apply(r.parse({"apiVersion": "routed.io/v1", "kind": "IPPool", "metadata": {"name": "pods"},
                         "spec": {"cidr": POOL}}))
    store.apply(r.parse({"apiVersion": "routed.io/v1", "kind": "BGPConfiguration", "metadata": {"name": "default"},
                         "spec": {"wireguard": "Enabled"}}))
    made: list[Netns] = []
    controllers = []
    try:
        node_a, node_b, pod_a, pod_b = (Netns(role) for role in ("wg-node-a", "wg-node-b", "wg-pod-a", "wg-pod-b"))
        made += [node_a, node_b, pod_a, pod_b]
        ip(node_a, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", node_b.name)
        nodes = []
        for name, ns, pod, address, pod_ip in (("node-a", node_a, pod_a, "192.0.2.1", "10.10.1.2"),
                                               ("node-b", node_b, pod_b, "192.0.2.2", "10.10.2.2")):
            IPAM(kv).assign_ip(pod_ip, f"net.{name}.eth0", name)  # the pod's block becomes the node's
            store.apply(r.parse({"apiVersion": "routed.io/v1", "kind": "Node", "metadata": {"name": name},
                                 "spec": {"bgp": {"ipv4Address": f"{address}/24"}}}))
            nodes.append(_make_node(ns, address, f"{pod_ip}/26", pod, pod_ip))
            state = tmp_path / name
            controllers.append(WireGuard(kv, store, ns.name, name, address, str(state), lambda: WG_MTU))
        yield nodes, controllers
    finally:
        errors = []
        for controller in controllers:
            try:
                controller.cleanup()
            except Exception as err:  # undo them all, then report
                errors.append(f"cleanup: {err}")
        for ns in reversed(made):
            try:
                ns.delete()
            except Exception as err:
                errors.append(str(err))
        if errors:
            raise RuntimeError("; ".join(errors))


def test_kernel_wireguard_carries_pod_traffic_encrypted(cluster, tmp_path):
    (a, b), controllers = cluster
    # Two rounds: each node publishes its key in its first pass and finds its peer's in the next.
    for _ in range(2):
        for controller in controllers:
            controller.sync()

    for node, controller in zip((a, b), controllers):
        assert controller.provider == "kernel", controller.provider  # the module, not wireguard-go
        [link] = json.loads(ip(node.ns, "-d", "-j", "link", "show", "wg.routed"))
        assert link["linkinfo"]["info_kind"] == "wireguard" and link["mtu"] == WG_MTU, link
        key = os.path.join(controller.dir, "private.key")
        assert oct(os.stat(key).st_mode & 0o777) == "0o600"
    # Pod traffic to the other node goes into the device, by our table (not the main one).
    [route] = json.loads(ip(a.ns, "-j", "route", "get", b.pod_ip))
    assert route["dev"] == "wg.routed", route
    assert "wg.routed" not in ip(a.ns, "route", "show", "table", "main")

    a_count, b_count = 5, 2
    packets = 2 * (a_count + b_count)  # the handshake may take two of them: still UDP 51820
    lines = pings_on_the_wire(a, b, a_count, b_count, tmp_path)

    text = "tcpdump on the node link:\n" + "\n".join(lines)
    assert len(lines) == packets, text
    tunnel = (f"IP {a.ip}.{PORT} > {b.ip}.{PORT}: UDP", f"IP {b.ip}.{PORT} > {a.ip}.{PORT}: UDP")
    assert all(any(t in line for t in tunnel) for line in lines), text
    assert not any(pod_ip in line for line in lines for pod_ip in (a.pod_ip, b.pod_ip)), text

    # The agent's /wireguard document: the peer by name, a handshake, bytes both ways.
    status = controllers[0].status()
    assert status["provider"] == "kernel", status
    [peer] = status["peers"]
    assert peer["node"] == "node-b" and peer["latestHandshake"] is not None, status
    assert peer["rxBytes"] > 0 and peer["txBytes"] > 0, status

    # cleanup() takes it all away: device, rule, table.
    controllers[0].cleanup()
    assert "wg.routed" not in ip(a.ns, "link", "show")
    assert "lookup 201" not in ip(a.ns, "rule", "show")
