"""Dual stack as pure logic (issue 15): IPv6 node addresses are checked, nodes with IPv6
addresses get a second (IPv6) mesh session, ExaBGP sessions carry their own family from
the matching source address, and an IPv6 route passes the same hijack checks as IPv4."""

from __future__ import annotations

import ipaddress

import pytest

from bgp import decide
from bgp.exabgp import environment, render
from bgp.order import link_local_first
from bgp.peers import LocalSpeaker, Peer, desired_peers, local_speaker
from routed import resources as r
from routed.agent.node import parse_node_ip6
from routed.errors import RoutedError


def node(name, v4, v6=None, **bgp):
    spec = {"ipv4Address": v4, **({"ipv6Address": v6} if v6 else {}), **bgp}
    return r.parse({"apiVersion": "routed.io/v1", "kind": "Node", "metadata": {"name": name},
                    "spec": {"bgp": spec}})


@pytest.mark.parametrize("text", ["2001:db8::5", "fe80::1/64", "ff02::1/64", "::1/128", "::/0",
                                  "::ffff:10.0.0.1/128", "10.0.0.5/24", "2001:db8::5/129", "junk", ""])
def test_hostile_ipv6_node_addresses_are_refused_in_one_line(text):
    with pytest.raises(RoutedError) as err:
        parse_node_ip6(text)
    assert "\n" not in str(err.value) and "--node-ip6" in str(err.value)


def test_a_global_ipv6_node_address_is_kept_with_its_prefix():
    assert parse_node_ip6("2001:DB8::5/64") == "2001:db8::5/64"


def test_dual_stack_nodes_mesh_over_both_families_single_stack_ones_over_ipv4():
    a = node("a", "192.0.2.1/24", "2001:db8::1/64")
    b = node("b", "192.0.2.2/24", "2001:db8::2/64")
    c = node("c", "192.0.2.3/24")  # IPv4 only
    got = [(p.address, p.kind, p.name) for p in desired_peers(a, [a, b, c], [], [])]
    assert got == [("192.0.2.2", "mesh", "b"), ("192.0.2.3", "mesh", "c"), ("2001:db8::2", "mesh", "b")]
    # An IPv4-only node has nothing to talk IPv6 from: no IPv6 session to b.
    assert [p.address for p in desired_peers(c, [a, b, c], [], [])] == ["192.0.2.1", "192.0.2.2"]


def test_a_route_reflector_with_an_ipv6_address_reflects_both_families():
    a = node("a", "192.0.2.1/24", "2001:db8::1/64")
    rr = node("rr", "192.0.2.100/24", "2001:db8::100/64", routeReflectorClusterID="244.0.0.1")
    assert [(p.address, p.kind) for p in desired_peers(a, [a, rr], [], [])] == [
        ("192.0.2.100", "route-reflector"), ("2001:db8::100", "route-reflector")]


def test_exabgp_ipv6_session_from_the_ipv6_address_with_its_own_family():
    speaker = local_speaker(node("a", "192.0.2.1/24", "2001:db8::1/64"), [])
    assert speaker.address6 == "2001:db8::1"
    rendered = render(speaker, [Peer("192.0.2.2", 64512, "mesh", "b"), Peer("2001:db8::2", 64512, "mesh", "b")],
                      "helper")
    assert rendered.skipped == {}
    v4, v6 = rendered.text.split("neighbor 192.0.2.2 {")[1].split("neighbor 2001:db8::2 {")
    assert "local-address 192.0.2.1;" in v4 and "family { ipv4 unicast; }" in v4 and "ipv6" not in v4
    assert "local-address 2001:db8::1;" in v6 and "family { ipv6 unicast; }" in v6
    assert "router-id 192.0.2.1;" in v6  # a router ID is a 32-bit number whatever the session
    assert environment(speaker)["exabgp_tcp_bind"] == "192.0.2.1 2001:db8::1"
    assert environment(LocalSpeaker("a", "192.0.2.1", 64512))["exabgp_tcp_bind"] == "192.0.2.1"


class Owners:
    def __init__(self, table):
        self.table = table

    def originator(self, prefix):
        return self.table.get(prefix)


POOLS = [decide.PoolView(ipaddress.ip_network("fd00:10::/48"), "Never", "Never"),
         decide.PoolView(ipaddress.ip_network("fd00:20::/48"), "Never", "Always"),
         decide.PoolView(ipaddress.ip_network("fd00:30::/48"), "Never", "CrossSubnet")]
OWNERS = Owners({"fd00:10::/122": "a", "fd00:10::40/122": "b", "fd00:10::45/128": "a", "10.244.1.0/26": "a"})
POLICY = decide.Policy(64512, POOLS, set(), OWNERS, {"a": "10.0.0.1", "b": "10.0.0.2"},
                       {"a": "2001:db8::1", "b": "2001:db8::2"})


@pytest.mark.parametrize("prefix, next_hop, reason", [
    ("fd00:10::/122", "2001:db8::1", None),                  # a's block via a's IPv6 address
    ("fd00:10::45/128", "2001:db8::1", None),                # a's borrowed address
    ("fd00:10::/122", "2001:db8::2", "wrong-next-hop"),      # a's block via b: a hijack
    ("fd00:10::40/122", "2001:db8::1", "wrong-next-hop"),
    ("fd00:10::/122", "2001:db8::99", "next-hop-not-a-node"),
    ("fd00:10::80/122", "2001:db8::1", "not-in-ipam"),
    ("fd00:10::/122", "10.0.0.1", "invalid"),                 # IPv6 block, IPv4 next hop
    ("10.244.1.0/26", "2001:db8::1", "invalid"),              # and the other way round
    ("2001:db8:99::/48", "2001:db8::1", "outside-pools"),
])
def test_ipv6_routes_pass_the_same_hijack_checks_as_ipv4(prefix, next_hop, reason):
    why = decide.rejection(decide.Learned(prefix, next_hop, "p"), POLICY)
    assert (why and why.reason) == reason, why


@pytest.mark.parametrize("prefix, next_hop, expected", [
    ("fd00:10::/122", "2001:db8::1", ("eth0", False)),          # Never, on-link: direct
    ("fd00:10::/122", "2001:db8:1::1", None),                   # Never, elsewhere: the fabric
    ("fd00:20::/122", "2001:db8::1", ("vxlan-v6.routed", True)),  # VXLAN Always: over IPv6
    ("fd00:30::/122", "2001:db8::1", ("eth0", False)),          # CrossSubnet, on-link
    ("fd00:30::/122", "2001:db8:1::1", ("vxlan-v6.routed", True)),
])
def test_ipv6_kernel_routes_per_pool_mode(prefix, next_hop, expected):
    subnets = (ipaddress.ip_network("10.0.0.0/24"), ipaddress.ip_network("2001:db8::/64"))
    got = decide.kernel_route(decide.Learned(prefix, next_hop, "p"), POOLS, subnets, "eth0")
    assert (None if got is None else (got.dev, got.onlink)) == expected


def test_the_global_next_hop_wins_over_a_link_local_one():
    by_hop = {"2001:db8::1": ["global"], "fe80::1": ["link-local"], "junk": ["x"]}
    assert [hop for hop, _ in link_local_first(by_hop)] == ["fe80::1", "2001:db8::1", "junk"]


@pytest.mark.parametrize("v6", ["fe80::1/64", "ff02::1/64", "::1/128", "::/0", "::ffff:10.0.0.1/128", "10.0.0.1/24",
                                "2001:db8::1"])
def test_a_node_resource_with_an_unroutable_ipv6_address_is_refused(v6):
    with pytest.raises(Exception) as err:
        node("a", "192.0.2.1/24", v6)
    assert "ipv6Address" in str(err.value) or "IPv6" in str(err.value), err.value
