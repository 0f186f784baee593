"""Peering, ExaBGP rendering and route decisions (pure)."""

from __future__ import annotations

import ipaddress

import pytest

from bgp import decide, exabgp, peers
from routed import resources as r
from routed.agent.bgp import announce_commands


def node(name, ip, asn=None, rr=None, labels=None):
    bgp = {"ipv4Address": ip, **({"asNumber": asn} if asn else {}), **({"routeReflectorClusterID": rr} if rr else {})}
    return r.parse({"apiVersion": "routed.io/v1", "kind": "Node",
                    "metadata": {"name": name, "labels": labels or {}}, "spec": {"bgp": bgp}})


def config(**spec):
    return r.parse({"apiVersion": "routed.io/v1", "kind": "BGPConfiguration", "metadata": {"name": "default"},
                    "spec": spec})


def peer(name, ip, asn, **spec):
    return r.parse({"apiVersion": "routed.io/v1", "kind": "BGPPeer", "metadata": {"name": name},
                    "spec": {"peerIP": ip, "asNumber": asn, **spec}})


NODES = [node("a", "10.0.0.1/24", labels={"rack": "1"}), node("b", "10.0.0.2/24"), node("c", "10.0.1.3/24")]


def test_full_mesh():
    got = peers.desired_peers(NODES[0], NODES, [], [])
    assert [(p.address, p.kind, p.as_number) for p in got] == [("10.0.0.2", "mesh", 64512), ("10.0.1.3", "mesh", 64512)]


def test_mesh_off_route_reflectors_and_peers():
    rr = node("rr1", "10.0.0.100/24", asn=64512, rr="1.1.1.1")
    tor = peer("tor-rack1", "10.0.0.254", 65001, nodeSelector="rack == '1'", password={"secretKeyRef": {"name": "bgp", "key": "tor"}})
    everywhere = peer("upstream", "192.0.2.9", 65100)
    just_b = peer("b-only", "10.0.0.253", 65002, node="b")
    got = peers.desired_peers(NODES[0], NODES + [rr], [config(nodeToNodeMeshEnabled=False, asNumber=64600)],
                              [tor, everywhere, just_b])
    assert [(p.address, p.kind, p.as_number) for p in got] == [
        ("10.0.0.100", "route-reflector", 64512), ("10.0.0.254", "node", 65001), ("192.0.2.9", "global", 65100)]
    assert got[1].password_ref == ("bgp", "tor")
    assert peers.local_speaker(NODES[0], [config(asNumber=64600)]).as_number == 64600
    assert peers.local_speaker(node("x", "10.0.0.9/24", asn=65123), [config(asNumber=64600)]).as_number == 65123


def test_a_reflector_does_not_mesh_and_nobody_peers_with_itself():
    rr = node("rr1", "10.0.0.100/24", rr="1.1.1.1")
    assert [p.kind for p in peers.desired_peers(rr, NODES + [rr], [], [])] == []
    assert all(p.address != "10.0.0.1" for p in peers.desired_peers(NODES[0], NODES, [], [peer("self", "10.0.0.1", 1)]))


def test_rendered_exabgp_configuration():
    me = peers.local_speaker(NODES[0], [])
    got = peers.desired_peers(NODES[0], NODES, [], [peer("tor", "10.0.0.254", 65001, holdTime=9, keepaliveTime=3,
                                                         password={"secretKeyRef": {"name": "s", "key": "k"}})])
    text = exabgp.render(me, got, "/usr/bin/python3 -m bgp.helper --socket /run/x.sock", {"10.0.0.254": "s3cret"})
    assert "run /usr/bin/python3 -m bgp.helper --socket /run/x.sock;" in text and "encoder json;" in text
    assert text.count("neighbor ") == 3 and "peer-as 65001;" in text and "hold-time 9;" in text
    assert 'md5-password "s3cret";' in text and text.count("md5-password") == 1
    assert "receive { parsed; update; notification; }" in text and "neighbor-changes;" in text
    assert "manual-eor true;" in text and "graceful-restart 120;" in text
    env = exabgp.environment(me)
    assert env["exabgp_tcp_bind"] == "10.0.0.1" and env["exabgp_daemon_user"] == "root"
    with pytest.raises(ValueError):
        exabgp.render(me, got, "x", {"10.0.0.254": 'bad";password'})


POOLS = [decide.PoolView(ipaddress.ip_network("10.244.0.0/16"), "Never", "CrossSubnet"),
         decide.PoolView(ipaddress.ip_network("10.245.0.0/16"), "Always", "Never"),
         decide.PoolView(ipaddress.ip_network("10.246.0.0/16"), "Never", "Never")]
SUBNET = ipaddress.ip_network("10.0.0.0/24")


@pytest.mark.parametrize("prefix, next_hop, expected", [
    ("10.244.1.0/26", "10.0.0.2", ("eth0", False)),          # CrossSubnet, same subnet: direct
    ("10.244.1.0/26", "10.0.1.3", ("vxlan.routed", True)),   # CrossSubnet, other subnet: VXLAN
    ("10.245.1.0/26", "10.0.0.2", ("tunl0", True)),          # IPIP Always
    ("10.246.1.0/26", "10.0.0.2", ("eth0", False)),          # Never, same subnet
    ("10.246.1.0/26", "10.0.1.3", None),                     # Never, elsewhere: the fabric routes it
])
def test_route_per_pool_mode(prefix, next_hop, expected):
    got = decide.kernel_route(decide.Learned(prefix, next_hop, "p"), POOLS, SUBNET, "eth0")
    assert (None if got is None else (got.dev, got.onlink)) == expected
    if got is not None:
        assert got.gateway == next_hop and got.proto == 202


@pytest.mark.parametrize("route, allowed, reason", [
    (decide.Learned("10.244.1.0/26", "10.0.0.2", "p", (65001, 64512)), (), "own AS"),
    (decide.Learned("192.168.0.0/24", "10.0.0.2", "p"), (), "outside every IP pool"),
    (decide.Learned("10.244.0.0/26", "10.0.0.2", "p"), (), "own blocks"),
    (decide.Learned("nonsense", "10.0.0.2", "p"), (), "not a valid"),
])
def test_rejections(route, allowed, reason):
    why = decide.rejection(route, 64512, POOLS, allowed, {"10.244.0.0/26"})
    assert why is not None and reason.split()[0] in why


def test_acceptance_and_best_path():
    ok = decide.Learned("192.168.0.0/24", "10.0.0.2", "p")
    assert decide.rejection(ok, 64512, POOLS, ("192.168.0.0/16",), set()) is None
    a = decide.Learned("10.244.1.0/26", "10.0.0.9", "x", (65001,))
    b = decide.Learned("10.244.1.0/26", "10.0.0.3", "y", ())
    assert decide.best([a, b]) is b


def test_announcements_are_batched():
    prefixes = [f"10.244.{i // 4}.{(i % 4) * 64}/26" for i in range(450)]
    commands = announce_commands("announce", prefixes)
    assert len(commands) == 3 and commands[0].startswith("announce attributes next-hop self nlri 10.244.0.0/26 ")
    assert sum(len(c.split("nlri ")[1].split()) for c in commands) == 450
