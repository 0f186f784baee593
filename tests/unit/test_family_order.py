"""Mixed address families never crash an ordering: IPv4 and IPv6 prefixes and peers sort
together (IPv4 first, then by address), as a dual-stack node or an IPv6 BGPPeer needs."""

from __future__ import annotations

from routed import resources as r
from routed.agent.bgp import announce_commands
from bgp.peers import desired_peers

MIXED_PREFIXES = ["fd00:10::/122", "10.244.1.0/26", "2001:db8::/64", "10.244.0.0/26", "10.9.0.0/16"]


def test_announce_commands_order_both_families_ipv4_first():
    # One family a line: ExaBGP reads a mixed nlri list as one family.
    v4, v6 = announce_commands("announce", MIXED_PREFIXES)
    assert v4.split("nlri ")[1].split() == ["10.9.0.0/16", "10.244.0.0/26", "10.244.1.0/26"]
    assert v6.split("nlri ")[1].split() == ["2001:db8::/64", "fd00:10::/122"]


def node(name, address):
    return r.parse({"apiVersion": "routed.io/v1", "kind": "Node", "metadata": {"name": name},
                    "spec": {"bgp": {"ipv4Address": address}}})


def peer(name, address, asn=65001):
    return r.parse({"apiVersion": "routed.io/v1", "kind": "BGPPeer", "metadata": {"name": name},
                    "spec": {"peerIP": address, "asNumber": asn}})


def test_desired_peers_with_an_ipv6_peer_keep_every_ipv4_peer():
    me, other = node("a", "192.0.2.1/24"), node("b", "192.0.2.2/24")
    peers = desired_peers(me, [me, other], [], [peer("v6", "2001:db8::1"), peer("tor", "192.0.2.254"),
                                                 peer("v6b", "fd00::1")])
    assert [p.address for p in peers] == ["192.0.2.2", "192.0.2.254", "2001:db8::1", "fd00::1"]


def test_exabgp_leaves_out_a_peer_of_the_other_family_not_the_whole_file():
    from bgp.exabgp import render
    from bgp.peers import LocalSpeaker, Peer

    speaker = LocalSpeaker("a", "192.0.2.1", 64512, 179, "info")
    rendered = render(speaker, [Peer("192.0.2.2", 64512, "mesh", "b"), Peer("2001:db8::1", 65001, "global", "v6")],
                      "helper")
    assert "neighbor 192.0.2.2 {" in rendered.text and "2001:db8::1" not in rendered.text
    assert "IPv6" in rendered.skipped["2001:db8::1"] and "IPv4" in rendered.skipped["2001:db8::1"]
