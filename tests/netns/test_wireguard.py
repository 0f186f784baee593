"""Pod traffic between nodes over WireGuard (wireguard-go: this kernel has no module),
with real agents, etcd and ExaBGP in node namespaces."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import urllib.request

import pytest

from routed import resources as r
from routed.dataplane.constants import WIREGUARD_DEV, WIREGUARD_TABLE
from tests.conftest import _require
from tests.support.cluster import ROUTED, ROUTEDCTL, Cluster, _Named
from tests.support.wait import eventually

pytestmark = [pytest.mark.root, pytest.mark.etcd, pytest.mark.slow]


@pytest.fixture
def cluster(tmp_path, etcd, root):
    for tool in ("wg", "wireguard-go", "tcpdump"):
        _require(shutil.which(tool) is not None, f"{tool} (Debian packages wireguard-tools, wireguard-go, tcpdump)")
    c = Cluster(tmp_path, etcd)
    try:
        yield c
    finally:
        c.close()


def wireguard(node) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{node.agent.health_port}/wireguard", timeout=3) as resp:
        return json.loads(resp.read())


def peer_nodes(node) -> set[str]:
    try:
        return {p["node"] for p in wireguard(node)["peers"]}
    except OSError:
        return set()


def encrypted_route(node, ip: str) -> bool:
    return f"dev {WIREGUARD_DEV}" in node.ns.run("ip", "route", "get", ip).stdout


def reaches(pod, ip: str) -> bool:
    return pod.run("ping", "-c1", "-W2", ip, check=False).returncode == 0


def enable(cluster, mode: str = "Enabled") -> None:
    cluster.apply({"kind": "BGPConfiguration", "metadata": {"name": "default"}, "spec": {"wireguard": mode}})
    cluster.apply({"kind": "IPPool", "metadata": {"name": "pods"}, "spec": {"cidr": "10.244.0.0/16"}})


class Capture:
    """tcpdump on a node's uplink, to a file; the text of what it saw."""

    def __init__(self, node, path):
        self.path = path
        self.proc = subprocess.Popen(["ip", "netns", "exec", node.ns.name, "tcpdump", "-i", "eth0", "-nn", "-U", "--immediate-mode", "-Z", "root",
                                      "-w", str(path)], stderr=subprocess.PIPE, text=True)
        line = self.proc.stderr.readline()  # "listening on eth0 ..." once it captures
        assert "listening" in line, line

    def stop(self) -> str:
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(10)
        self.stats = self.proc.stderr.read()
        read = subprocess.run(["tcpdump", "-nn", "-r", str(self.path)], capture_output=True, text=True)
        assert read.returncode == 0, read.stderr
        return read.stdout


def test_pod_traffic_between_nodes_is_encrypted(cluster, tmp_path):
    enable(cluster)
    a, b = cluster.add_node("a", 1), cluster.add_node("b", 2)
    (pa, ip_a), (pb, ip_b) = a.add_pod("p"), b.add_pod("p")
    cluster.wait(lambda: peer_nodes(a) == {"b"} and peer_nodes(b) == {"a"}, what="a and b peers")
    cluster.wait(lambda: encrypted_route(a, ip_b) and encrypted_route(b, ip_a), what="pod routes via WireGuard")
    # The device follows the uplink less WireGuard's 60 bytes; no IPIP/VXLAN under it.
    assert f"mtu {1500 - 60}" in a.ns.run("ip", "link", "show", WIREGUARD_DEV).stdout
    capture = Capture(a, tmp_path / "a.pcap")
    try:
        cluster.wait(lambda: reaches(pa, ip_b) and reaches(pb, ip_a), what="pods reach each other")
        for _ in range(3):
            assert reaches(pa, ip_b) and reaches(pb, ip_a)
    finally:
        seen = capture.stop()
    assert ip_a not in seen and ip_b not in seen, f"pod addresses in clear on the wire:\n{seen[-2000:]}"
    tunnel = [line for line in seen.splitlines() if f"{a.ip}.51820 > {b.ip}.51820: UDP" in line]
    assert len(tunnel) >= 6, f"no WireGuard packets between the nodes:\n{seen[-2000:]}\n{capture.stats}"
    # Between the nodes: WireGuard (UDP 51820 both ends) and their BGP session (TCP 179), nothing else.
    between = [line for line in seen.splitlines() if " IP " in line and a.ip in line and b.ip in line]
    other = [line for line in between
             if not re.search(r"\.51820 > [\d.]+\.51820: UDP", line) and not re.search(r"\.179[ :>]", line)]
    assert not other, "node-to-node packets other than WireGuard and BGP:\n" + "\n".join(other[:20])
    # Handshakes and bytes, from the agent's document and routedctl node status.
    (peer,) = wireguard(a)["peers"]
    assert peer["node"] == "b" and peer["latestHandshake"] is not None and peer["rxBytes"] > 0
    status = a.status()
    assert status.returncode == 0, status.stderr
    assert "b" in status.stdout and "WireGuard" in status.stdout, status.stdout
    # Only our own rule and table: the main table has no route through the device.
    assert WIREGUARD_DEV not in a.ns.run("ip", "route", "show", "table", "main").stdout
    rules = a.ns.run("ip", "rule", "show").stdout
    assert f"lookup {WIREGUARD_TABLE} proto 201" in rules, rules


def test_restart_keeps_the_key_and_nodes_join_and_leave(cluster):
    enable(cluster)
    a, b = cluster.add_node("a", 1), cluster.add_node("b", 2)
    pa, _ = a.add_pod("p")
    cluster.wait(lambda: peer_nodes(a) == {"b"}, what="a peers with b")
    key_file = b.workdir / "state" / "wireguard" / "private.key"
    assert oct(os.stat(key_file).st_mode & 0o777) == "0o600"
    before = cluster.store.get(r.Node, "b").spec.wireguard.public_key
    b.agent.stop()
    b.agent.start()
    cluster.wait(lambda: peer_nodes(b) == {"a"}, what="b back with its peer")
    assert cluster.store.get(r.Node, "b").spec.wireguard.public_key == before
    # A new node joins: every node peers with it and its pods are reachable, encrypted.
    c = cluster.add_node("c", 3)
    _, ip_c = c.add_pod("p")
    cluster.wait(lambda: peer_nodes(a) == {"b", "c"} and peer_nodes(b) == {"a", "c"} and peer_nodes(c) == {"a", "b"},
                 what="c in every peer list")
    cluster.wait(lambda: encrypted_route(a, ip_c) and reaches(pa, ip_c), what="a's pod reaches c's pod")
    # A node removed leaves every peer list.
    c.stop()
    cluster.store.delete(r.Node, "c")
    cluster.wait(lambda: peer_nodes(a) == {"b"} and peer_nodes(b) == {"a"}, what="c gone from every peer list")


def test_an_opted_out_node_is_reached_in_clear_unless_required(cluster):
    enable(cluster)
    a = cluster.add_node("a", 1)
    b = cluster.add_node("b", 2, labels="routed.io/wireguard=Disabled")
    (pa, _), (_, ip_b) = a.add_pod("p"), b.add_pod("p")
    cluster.wait(lambda: wireguard(a)["enabled"] and not wireguard(b)["enabled"], what="a on, b off")
    cluster.wait(lambda: reaches(pa, ip_b), what="a's pod reaches b's in clear")
    assert not encrypted_route(a, ip_b) and peer_nodes(a) == set()
    enable(cluster, "Required")
    cluster.wait(lambda: not reaches(pa, ip_b), what="b's pods unreachable once encryption is required")


def test_rotate_key_gives_the_node_a_new_key_and_its_peers_follow(cluster):
    enable(cluster)
    a, b = cluster.add_node("a", 1), cluster.add_node("b", 2)
    (pa, _), (_, ip_b) = a.add_pod("p"), b.add_pod("p")
    cluster.wait(lambda: encrypted_route(a, ip_b) and reaches(pa, ip_b), what="a's pod reaches b's over WireGuard")
    old = cluster.store.get(r.Node, "b").spec.wireguard.public_key
    done = subprocess.run([ROUTEDCTL, "--etcd-endpoints", cluster.etcd.url, "node", "rotate-key", "b"],
                          capture_output=True, text=True)
    assert done.returncode == 0 and "rotation requested" in done.stdout, done.stderr

    def new_key() -> str | None:
        key = cluster.store.get(r.Node, "b").spec.wireguard.public_key
        return key if key != old else None

    key = cluster.wait(new_key, what="b publishes a new public key")
    cluster.wait(lambda: [p["publicKey"] for p in wireguard(a)["peers"]] == [key], what="a takes b's new key")
    cluster.wait(lambda: reaches(pa, ip_b), what="a's pod reaches b's with the new keys")
    # A restart does not rotate again: the request is remembered as done.
    b.agent.stop()
    b.agent.start()
    cluster.wait(lambda: peer_nodes(b) == {"a"}, what="b back with its peer")
    assert cluster.store.get(r.Node, "b").spec.wireguard.public_key == key
    bad = subprocess.run([ROUTEDCTL, "--etcd-endpoints", cluster.etcd.url, "node", "rotate-key", "nosuch"],
                         capture_output=True, text=True)
    assert bad.returncode != 0 and len(bad.stderr.strip().splitlines()) == 1 and "nosuch" in bad.stderr, bad.stderr


def echoes_received(pod) -> int:
    """Echo requests that reached the pod's own stack (Icmp InEchos of its netns)."""
    lines = [line.split() for line in pod.run("cat", "/proc/net/snmp").stdout.splitlines() if line.startswith("Icmp:")]
    return int(lines[1][lines[0].index("InEchos")])


def arrives(sender, pod, ip: str, source: str | None = None) -> bool:
    """Do pings from ``sender`` (a netns: anything with run()) reach ``pod`` at all?
    One-way, from the pod's counter: a reply may be dropped on its way back."""
    before = echoes_received(pod)
    sender.run("ping", "-c2", "-i0.2", "-W1", *(["-I", source] if source else []), ip, check=False)
    return echoes_received(pod) > before


def test_required_drops_clear_pod_traffic_arriving_from_outside_the_tunnel(cluster):
    """Required encrypts both ways: pods of a node without WireGuard, and pod addresses
    spoofed from outside the tunnel, no longer reach this node's pods in clear. What comes
    through wg.routed passes; host traffic (a node's own address) and BGP are untouched."""
    enable(cluster)
    a, b = cluster.add_node("a", 1), cluster.add_node("b", 2)
    c = cluster.add_node("c", 3, labels="routed.io/wireguard=Disabled")
    (pa, ip_a), (pb, ip_b), (pc, _) = a.add_pod("p"), b.add_pod("p"), c.add_pod("p")
    # Outside the tunnel: a host on the nodes' segment, claiming b's pod address.
    spoofer = _Named(cluster.add_netns("x", [("eth0", cluster.switch, "192.0.2.200/24")]))
    spoofer.run("ip", "addr", "add", f"{ip_b}/32", "dev", "lo")
    spoofer.run("ip", "route", "add", "10.244.0.0/16", "via", a.ip)
    # Enabled: all of it arrives (c in clear, the spoofed packets too): the probes work.
    cluster.wait(lambda: encrypted_route(b, ip_a) and reaches(pb, ip_a), what="b's pod reaches a's over WireGuard")
    cluster.wait(lambda: arrives(pc, pa, ip_a), what="c's pod reaches a's in clear")
    assert arrives(spoofer, pa, ip_a, source=ip_b)

    enable(cluster, "Required")
    cluster.wait(lambda: not arrives(pc, pa, ip_a), what="c's clear pod traffic dropped at a")
    assert not arrives(spoofer, pa, ip_a, source=ip_b), "a pod address spoofed outside the tunnel got in"
    assert reaches(pb, ip_a) and reaches(pa, ip_b), "traffic through wg.routed must pass"
    assert reaches(c.ns, ip_a), "c's host (its node address) must still reach a's pods"
    assert cluster.sessions_up(a, 2) and cluster.sessions_up(c, 2), "BGP between the nodes must stay up"

    enable(cluster)  # back to Enabled: the filter goes
    cluster.wait(lambda: arrives(pc, pa, ip_a), what="c's pod reaches a's in clear again")
    assert "routed-wireguard" not in a.ns.run("nft", "list", "tables").stdout

    # Required again, then the agent stopped: `routed cleanup-node` takes the filter away too.
    enable(cluster, "Required")
    cluster.wait(lambda: "routed-wireguard" in a.ns.run("nft", "list", "tables").stdout, what="a's filter back")
    a.agent.stop()
    cni_dirs = {name: a.workdir / f"cleanup-{name}" for name in ("conf", "bin")}
    for path in cni_dirs.values():
        path.mkdir()
    done = subprocess.run([ROUTED, "cleanup-node", "--netns", a.ns.name, "--conf-dir", str(cni_dirs["conf"]),
                           "--bin-dir", str(cni_dirs["bin"])], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "routed-wireguard" not in a.ns.run("nft", "list", "tables").stdout
    assert WIREGUARD_DEV not in a.ns.run("ip", "link", "show").stdout
