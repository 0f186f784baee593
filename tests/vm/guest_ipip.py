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
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

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
        return ip(self.ns, *args)


# Without KVM every process costs: `ip -n` and nsenter --net are much cheaper than
# `ip netns exec` (which also makes a mount namespace and remounts /sys).
def run(*cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({result.returncode}): {result.stderr}")
    return result


def ip(ns: Netns, *args: str) -> str:
    return run("ip", "-n", ns.name, *args).stdout


def batch(ns: Netns, commands: list[str]) -> None:
    result = subprocess.run(["ip", "-n", ns.name, "-batch", "-"], input="\n".join(commands) + "\n",
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise AssertionError(f"ip -n {ns.name} -batch failed: {result.stderr}\n{commands}")


def in_ns(ns: Netns, *cmd: str) -> list[str]:
    return ["nsenter", f"--net={ns.path}", *cmd]


def _sysctl(ns: Netns, *settings: str) -> None:
    run(*in_ns(ns, "sysctl", "-q", "-w", *settings))


def _make_node(ns: Netns, ip: str, block: str, pod: Netns, pod_ip: str) -> Node:
    """The node's side of a pod, as routed's CNI ADD leaves it (plain `ip` here)."""
    cali = f"cali{secrets.token_hex(5)}"[:15]
    node = Node(ns=ns, ip=ip, block=block, pod=pod, pod_ip=pod_ip, cali=cali)
    # The pod: host end created in the node with the peer straight in the pod netns.
    # One `ip -batch` per namespace: each process is expensive in the VM.
    batch(ns, [
        f"addr add {ip}/24 dev eth0",
        "link set eth0 up",
        # A node has a default route; proxy ARP answers for 169.254.1.1 only when routable.
        "route add default dev eth0",
        f"link add {cali} type veth peer name eth0 netns {pod.name}",
    ])
    _sysctl(ns, "net.ipv4.ip_forward=1",
            f"net.ipv4.conf.{cali}.proxy_arp=1", f"net.ipv4.neigh.{cali}.proxy_delay=0")
    batch(ns, [f"link set {cali} up", f"route add {pod_ip}/32 dev {cali} scope link"])
    batch(pod, [
        f"link set eth0 mtu {TUNNEL_MTU} up",
        f"addr add {pod_ip}/32 dev eth0",
        "route add 169.254.1.1 dev eth0 scope link",
        "route add default via 169.254.1.1 dev eth0 onlink",
    ])
    return node


def program_ipip(node: Node, peer: Node) -> None:
    """Program `node` toward `peer`'s block exactly as routed's BGP controller does for a
    learned route of an ipipMode Always pool: the route decision (bgp.decide), the
    tunnel device (encap.ensure_ipip) and the kernel route (bulk, proto 202).
    (Imports inside: importing takes seconds in this KVM-less VM.)"""
    import ipaddress

    from bgp import decide
    from routed.dataplane import bulk, encap

    pool = decide.PoolView(ipaddress.ip_network("10.10.0.0/16"), ipip="Always", vxlan="Never")
    route = decide.kernel_route(decide.Learned(peer.block, peer.ip, peer.ip), [pool],
                                ipaddress.ip_interface(f"{node.ip}/24").network, "eth0")
    assert route is not None and route.dev == "tunl0" and route.onlink
    encap.ensure_ipip(node.ns.name, mtu=TUNNEL_MTU)
    failed = bulk.apply(node.ns.name, replace=[route])
    assert not failed, failed


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
        ip(node_a, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0",
           "netns", node_b.name)
        a = _make_node(node_a, "192.0.2.1", "10.10.1.0/26", pod_a, "10.10.1.2")
        b = _make_node(node_b, "192.0.2.2", "10.10.2.0/26", pod_b, "10.10.2.2")
        for n in (a, b):
            if run("ip", "-n", n.ns.name, "link", "show", "tunl0", check=False).returncode != 0:
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
    """tcpdump on a netns interface: started before the traffic, it exits by itself once
    it has seen `count` packets (or is stopped after a timeout), then its lines are read."""

    def __init__(self, ns: Netns, ifname: str, bpf: str, count: int, workdir: Path):
        self.log = workdir / f"tcpdump-{ns.name}-{ifname}.err"
        with open(self.log, "w") as err:
            # --immediate-mode: every packet is handed over at once, none left in the ring.
            self.proc = subprocess.Popen(
                in_ns(ns, "tcpdump", "--immediate-mode", "-l", "-nn", "-c", str(count),
                      "-i", ifname, bpf),
                stdout=subprocess.PIPE, stderr=err, text=True,
            )
        # tcpdump says "listening on …" on stderr once the capture is attached.
        deadline = time.monotonic() + 30  # no KVM: starting a process takes a while
        while time.monotonic() < deadline and self.proc.poll() is None:
            if "listening on" in self.log.read_text():
                return
            time.sleep(0.05)
        self.lines(timeout=0)
        pytest.fail(f"tcpdump in {ns.name} on {ifname} did not start: {self.log.read_text()}",
                    pytrace=False)

    def lines(self, timeout: float) -> list[str]:
        try:
            out, _ = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.terminate()  # the tcpdump we started
            try:
                out, _ = self.proc.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                out, _ = self.proc.communicate()
        return out.splitlines()


def ping(src: Node, dst_ip: str, count: int) -> subprocess.CompletedProcess:
    return run(*in_ns(src.pod, "ping", "-c", str(count), "-i", "0.2", "-W", "3", dst_ip),
               check=False)


def pings_on_the_wire(a: Node, b: Node, a_count: int, b_count: int, workdir: Path) -> list[str]:
    """Pod A pings pod B a_count times, then B pings A b_count times (both must succeed),
    while tcpdump on A's link to B takes 2 * (a_count + b_count) IPv4 packets: its lines."""
    capture = Capture(a.ns, "eth0", "ip", 2 * (a_count + b_count), workdir)
    try:
        a_to_b = ping(a, b.pod_ip, a_count)
        b_to_a = ping(b, a.pod_ip, b_count)
    finally:
        lines = capture.lines(timeout=15)
    assert a_to_b.returncode == 0, f"pod A cannot ping pod B:\n{a_to_b.stdout}{a_to_b.stderr}"
    assert b_to_a.returncode == 0, f"pod B cannot ping pod A:\n{b_to_a.stdout}{b_to_a.stderr}"
    return lines


def test_pods_on_two_nodes_talk_through_ipip(two_nodes, tmp_path):
    a, b = two_nodes
    program_ipip(a, b)
    program_ipip(b, a)

    # The kernel's route to the far pod goes through the tunnel, to the far node.
    [route] = json.loads(a.ip_cmd("-j", "route", "get", b.pod_ip))
    assert (route["dev"], route.get("gateway")) == ("tunl0", b.ip), route
    for n in (a, b):
        [link] = json.loads(n.ip_cmd("-j", "link", "show", "tunl0"))
        assert link["mtu"] == TUNNEL_MTU and "UP" in link["flags"], link

    before = {n.ns.name: tunl0_packets(n) for n in (a, b)}
    a_count, b_count = 5, 2
    # Everything IPv4 between the nodes except ARP: the pods' pings, each way, 2 packets each.
    lines = pings_on_the_wire(a, b, a_count, b_count, tmp_path)

    # Tunnel counters: every echo request leaves A's tunl0 and enters B's, and back.
    sent = a_count + b_count
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

    text = "tcpdump on the node link:\n" + "\n".join(lines)
    assert seen(a.ip, b.ip, a.pod_ip, b.pod_ip, "request") == a_count, text
    assert seen(b.ip, a.ip, b.pod_ip, a.pod_ip, "reply") == a_count, text
    assert seen(b.ip, a.ip, b.pod_ip, a.pod_ip, "request") == b_count, text
    assert seen(a.ip, b.ip, a.pod_ip, b.pod_ip, "reply") == b_count, text
    assert len(lines) == 2 * (a_count + b_count), text  # nothing else, nothing unencapsulated
