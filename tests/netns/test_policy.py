"""Network policy with real traffic: a real agent and etcd, nine pods (namespaces x, y, z
× pods a, b, c) added through the CNI shim, servers on 80/81 TCP, UDP (and SCTP) in every pod;
the conformance table's cases are applied one after the other and every pair is probed.
SCTP probes are not run here when the kernel has no SCTP (the reference evaluator still
checks them in tests/unit/test_policy_logic.py); tests/vm/guest_policy_sctp.py runs every
case with an SCTP probe, with the same cluster (tests/support/policy_cluster.py), in a VM
whose kernel has SCTP."""

from __future__ import annotations

import json

import pytest

from routed.datastore import keys
from routed.dataplane.names import host_veth_name
from routed.policy import nft
from tests.support import netpol
from tests.support.agent import cni
from tests.support.netns import Netns
from tests.support.policy_cluster import NODE_IP, Pod, has_sctp, install, matrix, policy_cluster

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with policy_cluster(tmp_path_factory.mktemp("policy")) as c:
        yield c


def test_without_policy_every_pod_reaches_every_other(cluster):
    install(cluster, netpol.Case("none", [], []))
    assert matrix(cluster, netpol.Probe(80, "TCP", netpol.Reachability(True))) == []
    assert matrix(cluster, netpol.Probe(81, "UDP", netpol.Reachability(True))) == []


@pytest.mark.parametrize("case", netpol.CASES, ids=[c.name for c in netpol.CASES])
def test_conformance_table_with_real_traffic(cluster, case):
    install(cluster, case)
    probes = [p for p in case.probes if p.protocol != "SCTP" or has_sctp()]
    wrong = [line for probe in probes for line in matrix(cluster, probe)]
    assert not wrong, wrong


def test_routed_policies_icmp_and_order(cluster):
    deny_ping = {"apiVersion": "routed.io/v1", "kind": "GlobalNetworkPolicy", "metadata": {"name": "no-ping"},
                 "spec": {"order": 10, "selector": "pod == 'a'",
                          "ingress": [{"action": "Deny", "protocol": "ICMP", "icmp": {"type": 8}},
                                      {"action": "Pass"}]}}
    deny_x = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
              "metadata": {"name": "deny", "namespace": "x"}, "spec": {"podSelector": {}, "ingress": []}}
    install(cluster, netpol.Case("icmp", [deny_ping, deny_x], []))
    yb = cluster.pods["y/b"].netns
    assert yb.run("ping", "-c1", "-W1", netpol.address("y/a"), check=False).returncode != 0
    assert yb.run("ping", "-c1", "-W1", netpol.address("y/c"), check=False).returncode == 0
    # y/a passes TCP on to the Kubernetes tier, where nothing selects it: open.
    assert cluster.pods["y/b"].probe("TCP", 80, [netpol.address("y/a")])[netpol.address("y/a")]
    # x/a: passed on, and Kubernetes' default deny of x closes it.
    assert not cluster.pods["y/b"].probe("TCP", 80, [netpol.address("x/a")])[netpol.address("x/a")]
    # The node itself still reaches every pod: host traffic is not policed.
    assert cluster.host.run("ping", "-c1", "-W1", netpol.address("x/a"), check=False).returncode == 0


def test_a_deleted_pod_leaves_every_set_and_an_unknown_cali_interface_is_closed(cluster):
    install(cluster, netpol.Case("sets", [netpol.knp("p", "x", {"pod": "a"},
                                                    ingress=[{"from": [netpol.pods(pod="b")]}])], []))
    table = cluster.host.run("nft", "list", "table", "inet", nft.TABLE).stdout
    iface = host_veth_name("x", "b")
    assert netpol.address("x/b") in table and f'"{iface}"' in table
    # An interface the agent never programmed: its traffic is dropped.
    assert 'oifname "cali*" oifname != @pods drop' in table
    netns = Netns("pol")
    try:
        conf = cluster.agent.conf(runtimeConfig={"IPs": ["10.66.9.9/32"]})
        code, _, raw = cni("ADD", conf, container="c-tmp", netns=netns.path, pod=("x", "tmp"))
        assert code == 0, raw
        # Programmed before ADD answered: the interface is already in the table.
        assert f'"{host_veth_name("x", "tmp")}"' in cluster.host.run("nft", "list", "set", "inet", nft.TABLE,
                                                                      "pods").stdout
        assert cni("DEL", conf, container="c-tmp", netns=netns.path, pod=("x", "tmp"))[0] == 0
        after = cluster.host.run("nft", "list", "table", "inet", nft.TABLE).stdout
        assert "10.66.9.9" not in after and host_veth_name("x", "tmp") not in after
        assert cluster.kv.get(keys.workload("node-1", "x", "tmp")) is None
    finally:
        netns.delete()


def _listing(host) -> dict:
    """The kernel's table, without what differs between equal tables: handles, the
    order of chains, sets and elements, and the digest comment."""
    out: dict = {}
    for item in json.loads(host.run("nft", "-j", "list", "table", "inet", nft.TABLE).stdout)["nftables"]:
        kind, obj = next(iter(item.items()))
        obj = {k: v for k, v in obj.items() if k not in ("handle", "comment")}
        if kind in ("set", "map"):
            obj["elem"] = sorted(json.dumps(e, sort_keys=True) for e in obj.get("elem", []))
        key = (kind, obj["chain"]) if kind == "rule" else (kind, obj.get("name"))
        out.setdefault(repr(key), []).append(obj)
    return out


def test_an_added_pod_programs_what_a_full_render_gives(cluster):
    # No pod has both p and q until the new one comes: its ADD creates a group chain. (q
    # selects x/c too, so that the digest _install waits for says the agent has q.)
    install(cluster, netpol.Case("incremental", [
        netpol.knp("p", "x", {"pod": "a"}, ingress=[{"from": [netpol.pods(pod="b")]}]),
        netpol.knp("q", "x", {"role": "new"}, ingress=[{"from": [netpol.pods(pod="c")]}])], [],
        pod_labels={"x/c": {"role": "new"}}))
    netns = Netns("pol")
    try:
        conf = cluster.agent.conf(runtimeConfig={"IPs": ["10.66.9.10/32"], "labels": {"pod": "a", "role": "new"}})
        code, _, raw = cni("ADD", conf, container="c-new", netns=netns.path, pod=("x", "new"))
        assert code == 0, raw
        incremental = _listing(cluster.host)  # that ADD re-renders nothing: tests/unit/test_policy_incremental.py
        from routed.policy.enforcer import PolicyEnforcer

        PolicyEnforcer(cluster.kv, cluster.store, "node-1", cluster.host.name).sync()  # the full render
        assert incremental == _listing(cluster.host)
        assert cni("DEL", conf, container="c-new", netns=netns.path, pod=("x", "new"))[0] == 0
    finally:
        netns.delete()


def test_host_traffic_bgp_kubelet_and_dns_are_never_policed(cluster):
    """Every pod denied everything, both ways (a routed GNP and Kubernetes default deny):
    the node's own traffic still flows. A peer (a ToR, or the upstream DNS) on a link of
    the node's reaches its BGP port (179 and a listenPort, 1790) and the kubelet's; the
    node queries DNS upstream and probes its pods; a pod still asks the node's DNS
    (node-local DNS on the host). Pod to pod is the control: closed."""
    deny_all = {"apiVersion": "routed.io/v1", "kind": "GlobalNetworkPolicy", "metadata": {"name": "deny-all"},
                "spec": {"selector": "all()", "types": ["Ingress", "Egress"],
                         "ingress": [{"action": "Deny"}], "egress": [{"action": "Deny"}]}}
    kube_deny = [netpol.knp(f"deny-{ns}", ns, {}, ingress=[], egress=[], types=["Ingress", "Egress"])
                 for ns in netpol.NAMESPACES]
    install(cluster, netpol.Case("host", [deny_all, *kube_deny], []))
    peer = Netns("polpeer")
    servers = []
    try:
        cluster.host.run("ip", "link", "add", "plat-up", "type", "veth", "peer", "name", "eth0", "netns", peer.name)
        cluster.host.run("ip", "addr", "add", "198.51.100.1/30", "dev", "plat-up")
        cluster.host.run("ip", "link", "set", "plat-up", "up")
        peer.run("ip", "addr", "add", "198.51.100.2/30", "dev", "eth0")
        peer.run("ip", "link", "set", "eth0", "up")
        node = Pod("node", cluster.host, (179, 1790, 10250, 53))
        upstream = Pod("peer", peer, (53,))
        servers += [node, upstream]
        for port in (179, 1790, 10250):
            assert upstream.probe("TCP", port, ["198.51.100.1"], timeout=2) == {"198.51.100.1": True}, port
        assert node.probe("UDP", 53, ["198.51.100.2"], timeout=2) == {"198.51.100.2": True}
        assert node.probe("TCP", 80, [netpol.address("x/a")], timeout=2) == {netpol.address("x/a"): True}
        xa = cluster.pods["x/a"]
        assert xa.probe("UDP", 53, [NODE_IP], timeout=2) == {NODE_IP: True}
        assert xa.probe("TCP", 80, [netpol.address("y/b")]) == {netpol.address("y/b"): False}  # the control
    finally:
        for s in servers:
            s.stop()
        cluster.host.run("ip", "link", "del", "plat-up", check=False)
        peer.delete()


def test_a_cali_interface_the_agent_never_programmed_carries_no_traffic(cluster):
    """The no-window guarantee at ADD, with packets: until the agent puts a pod's interface
    into @pods (in the transaction that programs its policy), the pod can neither reach nor
    be reached by other pods, even with no policy at all. The node still reaches it."""
    install(cluster, netpol.Case("none", [], []))
    netns, iface, addr = Netns("pol"), "cali0unprogram", "10.66.8.8"
    stranger = None
    try:
        cluster.host.run("ip", "link", "add", iface, "type", "veth", "peer", "name", "eth0", "netns", netns.name)
        cluster.host.run("sysctl", "-qw", f"net.ipv4.conf.{iface}.proxy_arp=1")
        cluster.host.run("ip", "link", "set", iface, "up")
        cluster.host.run("ip", "route", "add", f"{addr}/32", "dev", iface)
        netns.run("ip", "addr", "add", f"{addr}/32", "dev", "eth0")
        netns.run("ip", "link", "set", "eth0", "up")
        netns.run("ip", "route", "add", "169.254.1.1", "dev", "eth0")
        netns.run("ip", "route", "add", "default", "via", "169.254.1.1", "dev", "eth0")
        stranger = Pod("stranger", netns)
        assert cluster.host.run("ping", "-c1", "-W2", addr, check=False).returncode == 0  # the path works
        assert cluster.pods["x/a"].probe("TCP", 80, [addr]) == {addr: False}
        assert stranger.probe("TCP", 80, [netpol.address("x/a")]) == {netpol.address("x/a"): False}
        assert cluster.pods["y/b"].probe("TCP", 80, [netpol.address("x/a")]) == {netpol.address("x/a"): True}
    finally:
        if stranger:
            stranger.stop()
        cluster.host.run("ip", "link", "del", iface, check=False)
        netns.delete()
