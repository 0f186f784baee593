"""IPIP between two nodes, end to end — runs ONLY inside the VM (tests/vm/run_in_vm.py).

The name does not start with ``test_``, so the host's pytest run never collects this
file; run_in_vm passes it explicitly to the guest's pytest, with ``ROUTED_IN_VM=1``.

Topology (every piece a network namespace named ``rt-…``, removed at the end):

    pod A 10.10.1.2/32                                              pod B 10.10.2.2/32
      eth0 ── veth ── caliA   node A                 node B   caliB ── veth ── eth0
                              eth0 192.0.2.1/24 ─ veth ─ eth0 192.0.2.2/24
                              tunl0 (mtu 1480)           tunl0 (mtu 1480)
    node A: 10.10.1.2/32 dev caliA, 10.10.2.0/26 via 192.0.2.2 dev tunl0 onlink
    node B: 10.10.2.2/32 dev caliB, 10.10.1.0/26 via 192.0.2.1 dev tunl0 onlink

The pods are wired as Calico (and routed/dataplane/pod.py) wires them: a /32, the
gateway 169.254.1.1 that exists nowhere, answered by proxy ARP on the node's veth end.
The nodes share one L2 segment, so without the tunnel routes a route `via <node> dev
eth0` would do; the test proves the packets really go through tunl0: the tunnel
counters grow on both nodes, and a capture on the inter-node link sees only IP
protocol 4 carrying the pods' ICMP.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import select
import subprocess
import time
from dataclasses import dataclass

import pytest

from tests.support.netns import Netns

pytestmark = pytest.mark.vm

TUNNEL_MTU = 1480  # 1500 minus the 20-byte outer IPv4 header


@pytest.fixture(autouse=True)
def _only_in_vm():
    if not os.environ.get("ROUTED_IN_VM"):
        pytest.fail(
            "guest-only test: run it through tests/vm/run_in_vm.py (it needs the VM's ipip "
            "module; this machine's kernel has none)",
            pytrace=False,
        )
    if os.geteuid() != 0:
        pytest.fail("the guest tests need root", pytrace=False)


@dataclass
class Node:
    ns: Netns        # the node's host netns
    ip: str          # address on the inter-node link
    block: str       # the node's affine block
    pod: Netns       # one pod on this node
    pod_ip: str
    cali: str        # host end of the pod's veth

    def ip_cmd(self, *args: str) -> str:
        return self.ns.run("ip", *args).stdout


def _sysctl(ns: Netns, key: str, value: str) -> None:
    ns.run("sysctl", "-q", "-w", f"{key}={value}")


def _make_node(ns: Netns, ip: str, block: str, pod: Netns, pod_ip: str) -> Node:
    """The node's side of a pod, as routed's CNI ADD leaves it (plain `ip` here)."""
    cali = f"cali{secrets.token_hex(5)}"[:15]
    node = Node(ns=ns, ip=ip, block=block, pod=pod, pod_ip=pod_ip, cali=cali)
    _sysctl(ns, "net.ipv4.ip_forward", "1")
    ns.run("ip", "addr", "add", f"{ip}/24", "dev", "eth0")
    ns.run("ip", "link", "set", "eth0", "up")
    # A node has a default route; proxy ARP answers for 169.254.1.1 only when it is routable.
    ns.run("ip", "route", "add", "default", "dev", "eth0")
    # The pod: host end created in the node with the peer straight in the pod netns.
    ns.run("ip", "link", "add", cali, "type", "veth", "peer", "name", "eth0", "netns", pod.name)
    _sysctl(ns, f"net.ipv4.conf.{cali}.proxy_arp", "1")
    _sysctl(ns, f"net.ipv4.neigh.{cali}.proxy_delay", "0")
    ns.run("ip", "link", "set", cali, "up")
    ns.run("ip", "route", "add", f"{pod_ip}/32", "dev", cali, "scope", "link")
    pod.run("ip", "link", "set", "eth0", "mtu", str(TUNNEL_MTU), "up")
    pod.run("ip", "addr", "add", f"{pod_ip}/32", "dev", "eth0")
    pod.run("ip", "route", "add", "169.254.1.1", "dev", "eth0", "scope", "link")
    pod.run("ip", "route", "add", "default", "via", "169.254.1.1", "dev", "eth0", "onlink")
    return node


def program_ipip(node: Node, peer: Node) -> None:
    """What routed's dataplane does on `node` for IPIP toward `peer`'s block.

    SWAP POINT: this is plain `ip` for now. When routed.dataplane.encap.ensure_ipip and
    routed.dataplane.bulk.apply land, replace the two commands below with them (tunl0
    up at TUNNEL_MTU, then `peer.block via peer.ip dev tunl0 onlink` in node.ns.name);
    the test below checks only the kernel's state and traffic, not how it was set.
    """
    node.ip_cmd("link", "set", "tunl0", "mtu", str(TUNNEL_MTU), "up")
    node.ip_cmd("route", "replace", peer.block, "via", peer.ip, "dev", "tunl0", "onlink")


@pytest.fixture
def two_nodes():
    made: list[Netns] = []

    def netns(role: str) -> Netns:
        ns = Netns(role)
        made.append(ns)
        return ns

    try:
        node_a, node_b = netns("node-a"), netns("node-b")
        pod_a, pod_b = netns("pod-a"), netns("pod-b")
        # The inter-node link: one veth, `eth0` in both nodes.
        node_a.run("ip", "link", "add", "eth0", "type", "veth",
                   "peer", "name", "eth0", "netns", node_b.name)
        a = _make_node(node_a, "192.0.2.1", "10.10.1.0/26", pod_a, "10.10.1.2")
        b = _make_node(node_b, "192.0.2.2", "10.10.2.0/26", pod_b, "10.10.2.2")
        for n in (a, b):
            if n.ns.run("ip", "link", "show", "tunl0", check=False).returncode != 0:
                pytest.fail(f"no tunl0 in {n.ns.name}: is the ipip module loaded?", pytrace=False)
        yield a, b
    finally:
        errors = []
        for ns in reversed(made):
            try:
                ns.delete()
            except Exception as err:  # delete them all, then report
                errors.append(str(err))
        if errors:
            raise RuntimeError("; ".join(errors))


def tunl0_packets(node: Node) -> tuple[int, int]:
    """(rx, tx) packet counters of the node's tunl0."""
    [link] = json.loads(node.ip_cmd("-s", "-j", "link", "show", "tunl0"))
    stats = link["stats64"]
    return stats["rx"]["packets"], stats["tx"]["packets"]


class Capture:
    """tcpdump on a netns interface, started before the traffic and read after it."""

    def __init__(self, ns: Netns, ifname: str, bpf: str):
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", ns.name, "tcpdump", "-l", "-nn", "-i", ifname, bpf],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        # tcpdump says "listening on …" on stderr once the capture is attached.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stderr], [], [], 0.2)
            if ready and "listening on" in self.proc.stderr.readline():
                return
            if self.proc.poll() is not None:
                break
        self.stop()
        pytest.fail(f"tcpdump on {ns.name}/{ifname} did not start", pytrace=False)

    def stop(self) -> list[str]:
        if self.proc.poll() is None:
            self.proc.terminate()  # the tcpdump we started; it flushes and exits
        try:
            out, _ = self.proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
        return out.splitlines()


def ping(src: Node, dst_ip: str, count: int) -> subprocess.CompletedProcess:
    return src.pod.run("ping", "-c", str(count), "-i", "0.2", "-W", "2", dst_ip, check=False)


def test_pods_on_two_nodes_talk_through_ipip(two_nodes):
    a, b = two_nodes
    program_ipip(a, b)
    program_ipip(b, a)

    # The kernel's route to the far pod goes through the tunnel, to the far node.
    [route] = json.loads(a.ip_cmd("-j", "route", "get", b.pod_ip))
    assert (route["dev"], route.get("gateway")) == ("tunl0", b.ip), route
    [link] = json.loads(a.ip_cmd("-j", "link", "show", "tunl0"))
    assert link["mtu"] == TUNNEL_MTU and "UP" in link["flags"], link

    before = {n.ns.name: tunl0_packets(n) for n in (a, b)}
    everything = Capture(a.ns, "eth0", "icmp or ip proto 4")
    count = 5
    try:
        a_to_b = ping(a, b.pod_ip, count)
        b_to_a = ping(b, a.pod_ip, 2)
    finally:
        lines = everything.stop()
    assert a_to_b.returncode == 0, f"pod A cannot ping pod B:\n{a_to_b.stdout}{a_to_b.stderr}"
    assert b_to_a.returncode == 0, f"pod B cannot ping pod A:\n{b_to_a.stdout}{b_to_a.stderr}"

    # Tunnel counters: every echo request leaves A's tunl0 and enters B's, and back.
    sent = count + 2
    for n in (a, b):
        (rx0, tx0), (rx1, tx1) = before[n.ns.name], tunl0_packets(n)
        assert tx1 - tx0 >= sent and rx1 - rx0 >= sent, (
            f"{n.ns.name} tunl0 rx {rx0}->{rx1} tx {tx0}->{tx1}, expected >= {sent} each way"
        )

    # On the wire between the nodes: IPIP (outer node→node, inner pod→pod) and nothing bare.
    # tcpdump prints `IP 192.0.2.1 > 192.0.2.2: IP 10.10.1.2 > 10.10.2.2: ICMP echo request…`
    def seen(outer_src, outer_dst, inner_src, inner_dst, what):
        pat = re.compile(
            rf"IP {re.escape(outer_src)} > {re.escape(outer_dst)}: "
            rf"IP {re.escape(inner_src)} > {re.escape(inner_dst)}: ICMP echo {what}"
        )
        return sum(1 for line in lines if pat.search(line))

    text = "\n".join(lines)
    assert seen(a.ip, b.ip, a.pod_ip, b.pod_ip, "request") >= count, text
    assert seen(b.ip, a.ip, b.pod_ip, a.pod_ip, "reply") >= count, text
    assert seen(b.ip, a.ip, b.pod_ip, a.pod_ip, "request") >= 2, text
    bare = [line for line in lines if re.search(r"^\S+ IP 10\.10\.", line)]
    assert not bare, "pod traffic crossed the node link unencapsulated:\n" + "\n".join(bare)
