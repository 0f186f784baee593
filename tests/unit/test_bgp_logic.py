"""Peering, ExaBGP rendering and route decisions (pure)."""

from __future__ import annotations

import ipaddress

import pytest

from bgp import decide, exabgp, peers
from routed import resources as r
from routed.agent.bgp import announce_commands
from routed.errors import InvalidResource


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
    rendered = exabgp.render(me, got, "/usr/bin/python3 -m bgp.helper --socket /run/x.sock",
                             {"10.0.0.254": "s3cret"})
    text = rendered.text
    assert rendered.skipped == {}
    assert "run /usr/bin/python3 -m bgp.helper --socket /run/x.sock;" in text and "encoder json;" in text
    assert text.count("neighbor ") == 3 and "peer-as 65001;" in text and "hold-time 9;" in text
    assert 'md5-password "s3cret";' in text and text.count("md5-password") == 1
    assert "receive { parsed; update; notification; }" in text and "neighbor-changes;" in text
    assert "manual-eor true;" in text and "graceful-restart 120;" in text
    env = exabgp.environment(me)
    assert env["exabgp_tcp_bind"] == "10.0.0.1" and env["exabgp_daemon_user"] == "root"



@pytest.mark.parametrize("password", ['bad";password', "new\nline", "", "x" * 81, "a{b}", "back\\slash"])
def test_a_peer_with_a_bad_password_is_left_out_alone(password):
    me = peers.local_speaker(NODES[0], [])
    got = peers.desired_peers(NODES[0], NODES, [], [peer("tor", "10.0.0.254", 65001,
                                                         password={"secretKeyRef": {"name": "s", "key": "k"}})])
    rendered = exabgp.render(me, got, "x", {"10.0.0.254": password})
    assert list(rendered.skipped) == ["10.0.0.254"] and "MD5 password" in rendered.skipped["10.0.0.254"]
    assert "neighbor 10.0.0.254" not in rendered.text and "md5-password" not in rendered.text
    # The mesh neighbours are all there.
    assert "neighbor 10.0.0.2 {" in rendered.text and "neighbor 10.0.1.3 {" in rendered.text


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


class Owners:
    """IPAM's answer, as a table (ipam.origins.Origins in the agent)."""

    def __init__(self, table):
        self.table = table

    def originator(self, prefix):
        return self.table.get(prefix)


# a owns 10.244.1.0/26 and holds 10.244.2.9 (borrowed from b's block 10.244.2.0/26);
# this node is "me" at 10.0.0.9, owning 10.244.0.0/26.
OWNERS = Owners({"10.244.1.0/26": "a", "10.244.2.0/26": "b", "10.244.2.9/32": "a", "10.244.0.0/26": "me"})
NODE_ADDRESSES = {"a": "10.0.0.1", "b": "10.0.0.2", "me": "10.0.0.9", "c": "10.0.1.3"}
POLICY = decide.Policy(64512, POOLS, {"10.244.0.0/26"}, OWNERS, NODE_ADDRESSES)


@pytest.mark.parametrize("route, allowed, reason, words", [
    (decide.Learned("10.244.1.0/26", "10.0.0.1", "p", (65001, 64512)), (), "own-as", "own AS"),
    (decide.Learned("192.168.0.0/24", "10.0.0.2", "p"), (), "outside-pools", "outside every IP pool"),
    (decide.Learned("10.244.0.0/26", "10.0.0.2", "p"), (), "own-prefix", "own blocks"),
    (decide.Learned("nonsense", "10.0.0.2", "p"), (), "invalid", "not a valid"),
    # The hijacks: a pod's /32 or a /27 inside a pool, next hop the peer itself.
    (decide.Learned("10.244.1.5/32", "10.0.0.254", "10.0.0.254"), (), "next-hop-not-a-node", "no node's address"),
    (decide.Learned("10.244.7.0/27", "10.0.0.254", "10.0.0.254"), (), "next-hop-not-a-node", "10.0.0.254"),
    # allowedPrefixes never opens a pool to a peer.
    (decide.Learned("10.244.1.5/32", "10.0.0.254", "p"), ("10.244.0.0/16",), "next-hop-not-a-node", ""),
    # A node's address as next hop, but IPAM gives the prefix to nobody, or to another node.
    (decide.Learned("10.244.7.0/27", "10.0.0.1", "p"), (), "not-in-ipam", "no block or borrowed"),
    (decide.Learned("10.244.1.7/32", "10.0.0.1", "p"), (), "not-in-ipam", "10.244.1.7/32"),
    (decide.Learned("10.244.1.0/26", "10.0.0.2", "p"), (), "wrong-next-hop", "gives it to node a (10.0.0.1)"),
    (decide.Learned("10.244.2.9/32", "10.0.0.2", "p"), (), "wrong-next-hop", "not to b at next hop 10.0.0.2"),
])
def test_rejections(route, allowed, reason, words):
    why = decide.rejection(route, POLICY, allowed)
    assert why is not None and why.reason == reason and words in str(why), why
    assert why.reason in decide.REASONS


@pytest.mark.parametrize("route, allowed", [
    (decide.Learned("192.168.0.0/24", "10.0.0.2", "p"), ("192.168.0.0/16",)),  # outside pools, allowed
    (decide.Learned("10.244.1.0/26", "10.0.0.1", "10.0.0.1"), ()),          # a's block from a (mesh)
    (decide.Learned("10.244.1.0/26", "10.0.0.1", "10.0.0.100"), ()),        # through a reflector or ToR
    (decide.Learned("10.244.2.9/32", "10.0.0.1", "p"), ()),                 # borrowed, from its holder
    (decide.Learned("10.244.2.0/26", "10.0.0.2", "p"), ()),                 # b's block beside it
])
def test_acceptance(route, allowed):
    assert decide.rejection(route, POLICY, allowed) is None


def test_a_block_outside_every_pool_still_goes_to_its_node():
    """A pool deleted while its blocks hold pods: IPAM still knows who owns them."""
    policy = decide.Policy(64512, [], set(), OWNERS, NODE_ADDRESSES)
    assert decide.rejection(decide.Learned("10.244.1.0/26", "10.0.0.1", "p"), policy) is None
    assert decide.rejection(decide.Learned("10.244.1.0/26", "10.0.0.2", "p"), policy).reason == "wrong-next-hop"


def test_best_path():
    a = decide.Learned("10.244.1.0/26", "10.0.0.9", "x", (65001,))
    b = decide.Learned("10.244.1.0/26", "10.0.0.3", "y", ())
    assert decide.best([a, b]) is b


def test_announcements_are_batched():
    prefixes = [f"10.244.{i // 4}.{(i % 4) * 64}/26" for i in range(450)]
    commands = announce_commands("announce", prefixes)
    assert len(commands) == 3 and commands[0].startswith("announce attributes next-hop self nlri 10.244.0.0/26 ")
    assert sum(len(c.split("nlri ")[1].split()) for c in commands) == 450


def _update(peer, announce=(), withdraw=()):
    update = {"announce": {"ipv4 unicast": {peer: [{"nlri": p} for p in announce]}},
              "withdraw": {"ipv4 unicast": [{"nlri": p} for p in withdraw]}}
    return {"type": "update", "neighbor": {"address": {"peer": peer}, "message": {"update": update}}}


def test_the_helper_keeps_no_more_of_a_peer_than_the_agent_allows():
    import io
    import socket

    from bgp.helper import Relay

    relay = Relay("unused", io.StringIO(), io.StringIO())
    ours, theirs = socket.socketpair()
    ours.sendall(b'{"limits": {"10.0.0.254": 2}}\n{"command": "announce eor ipv4 unicast"}\n')
    ours.close()
    relay.read_commands(theirs)
    assert relay.view.limits == {"10.0.0.254": 2}
    assert relay.stdout.getvalue() == "announce eor ipv4 unicast\n"
    view = relay.view
    view.apply(_update("10.0.0.254", ["10.1.0.0/24", "10.2.0.0/24", "10.3.0.0/24"]))
    view.apply(_update("10.0.0.9", ["10.1.0.0/24", "10.2.0.0/24", "10.3.0.0/24"]))  # no limit
    assert sorted(view.routes["10.0.0.254"]) == ["10.1.0.0/24", "10.2.0.0/24"]
    assert len(view.routes["10.0.0.9"]) == 3
    # A withdrawal makes room; an update of a kept prefix is always taken.
    view.apply(_update("10.0.0.254", ["10.4.0.0/24", "10.1.0.0/24"], withdraw=["10.2.0.0/24"]))
    assert sorted(view.routes["10.0.0.254"]) == ["10.1.0.0/24", "10.4.0.0/24"]


def test_every_peer_has_a_receive_limit():
    """Mesh and reflector peers, and BGPPeers without maxPrefixes, get the BGPConfiguration's
    maxPrefixes (documented default), so no peer can grow the received table without bound."""
    rr = node("rr1", "10.0.0.100/24", rr="1.1.1.1")
    got = peers.desired_peers(NODES[0], NODES + [rr], [], [peer("tor", "10.0.0.254", 65001),
                                                           peer("small", "10.0.0.253", 65001, maxPrefixes=5)])
    limits = {p.kind if p.kind != "global" else p.name: p.max_prefixes for p in got}
    default = r.BGPConfiguration.model_validate({"metadata": {"name": "default"}}).spec.max_prefixes
    assert default > 0 and limits == {"route-reflector": default, "mesh": default, "tor": default, "small": 5}
    mesh = peers.desired_peers(NODES[0], NODES, [config(maxPrefixes=300)], [peer("tor", "10.0.0.254", 65001)])
    assert sorted((p.kind, p.max_prefixes) for p in mesh) == [("global", 300), ("mesh", 300), ("mesh", 300)]
    with pytest.raises(InvalidResource, match="maxPrefixes"):
        config(maxPrefixes=0)


def test_service_routes_are_not_installed_and_never_open_a_pool():
    """Other nodes' service announcements (for external routers) are set apart, not
    rejected as hostile; a service CIDR over a pool changes nothing inside the pool."""
    nets = tuple(ipaddress.ip_network(c) for c in ("10.96.0.0/12", "203.0.113.0/24", "10.0.0.0/8"))
    policy = decide.Policy(64512, POOLS, {"10.244.0.0/26"}, OWNERS, NODE_ADDRESSES, service_cidrs=nets)
    for prefix in ("10.96.0.0/12", "203.0.113.10/32", "10.96.0.10/32"):
        assert decide.rejection(decide.Learned(prefix, "10.0.0.1", "10.0.0.1"), policy).reason == decide.SERVICE
    # Inside the pools IPAM still decides: a's block is accepted, a /32 hijack is refused.
    assert decide.rejection(decide.Learned("10.244.1.0/26", "10.0.0.1", "10.0.0.1"), policy) is None
    assert decide.rejection(decide.Learned("10.244.1.5/32", "10.0.0.254", "p"), policy).reason == \
        "next-hop-not-a-node"
    assert decide.SERVICE not in decide.REASONS


def test_a_node_configuration_overrides_only_its_own_fields_of_the_default():
    """Calico's node.<name> BGPConfiguration: the default's AS, mesh switch, limits and
    communities still hold for that node (it replaced the default entirely: n3 fell back to
    AS 64512 and the mesh, while its cluster had AS 65000 and no mesh)."""
    default = config(asNumber=65000, nodeToNodeMeshEnabled=False, maxPrefixes=500, listenPort=1179,
                     communities=[{"name": "rack", "value": "65000:1"}, {"name": "dc", "value": "65000:9"}],
                     prefixAdvertisements=[{"cidr": "10.244.0.0/16", "communities": ["rack"]}])
    own = r.parse({"apiVersion": "routed.io/v1", "kind": "BGPConfiguration", "metadata": {"name": "node.n3"},
                   "spec": {"listenPort": 2179, "logSeverity": "Debug",
                            "communities": [{"name": "rack", "value": "65000:3"}]}})
    n3 = peers.config_for([default, own], "n3")
    assert (n3.as_number, n3.node_to_node_mesh_enabled, n3.max_prefixes) == (65000, False, 500)
    assert (n3.listen_port, n3.log_severity) == (2179, "Debug")
    # The default's prefixAdvertisements, with the node's own value of the community named "rack".
    assert n3.community_values() == [("10.244.0.0/16", ("65000:3",))]
    # Its own prefixAdvertisements replace the default's (naming its own communities, or values).
    own_ads = r.parse({"apiVersion": "routed.io/v1", "kind": "BGPConfiguration", "metadata": {"name": "node.n3"},
                       "spec": {"communities": [{"name": "rack", "value": "65000:3"}],
                                "prefixAdvertisements": [{"cidr": "10.244.0.0/17", "communities": ["rack"]},
                                                         {"cidr": "10.244.128.0/17", "communities": ["65000:7"]}]}})
    assert peers.config_for([default, own_ads], "n3").community_values() == [
        ("10.244.0.0/17", ("65000:3",)), ("10.244.128.0/17", ("65000:7",))]
    others = peers.config_for([default, own], "n1")
    assert (others.listen_port, others.log_severity, others.community_values()) == \
        (1179, "Info", [("10.244.0.0/16", ("65000:1",))])
    # The node's own AS still comes from its Node; its speaker listens where its override says.
    speaker = peers.local_speaker(node("n3", "10.0.0.3/24"), [default, own])
    assert (speaker.as_number, speaker.listen_port) == (65000, 2179)


def test_listen_port_of_each_node_is_where_its_peers_connect():
    n3 = node("n3", "10.0.0.3/24")
    configs = [config(listenPort=1179), r.parse({"apiVersion": "routed.io/v1", "kind": "BGPConfiguration",
                                                  "metadata": {"name": "node.n3"}, "spec": {"listenPort": 2179}})]
    got = peers.desired_peers(NODES[0], NODES + [n3], configs, [peer("by-ip", "10.0.0.3", 64512, node="a"),
                                                                  peer("router", "192.0.2.9", 65100)])
    assert [(p.address, p.kind, p.port) for p in got] == [
        ("10.0.0.2", "mesh", 1179), ("10.0.0.3", "node", 2179), ("10.0.1.3", "mesh", 1179),
        ("192.0.2.9", "global", 179)]
    assert peers.local_speaker(n3, configs).listen_port == 2179
    text = exabgp.render(peers.local_speaker(NODES[0], configs), got, "helper").text
    # ExaBGP connects to its own listen port (1179) unless told: the others are said.
    assert "connect 179;" in text and "connect 2179;" in text and "connect 1179;" not in text


def peer_selector(name, selector, **spec):
    return r.parse({"apiVersion": "routed.io/v1", "kind": "BGPPeer", "metadata": {"name": name},
                    "spec": {"peerSelector": selector, **spec}})


def test_peer_selector_peers_both_ends_with_their_own_as():
    a1 = node("a1", "10.0.0.1/24", asn=65001, labels={"rack": "a"})
    a2 = node("a2", "10.0.0.2/24", labels={"rack": "a"})
    b1 = node("b1", "10.0.0.3/24", labels={"rack": "b"})
    everyone = [a1, a2, b1]
    mesh_off = [config(nodeToNodeMeshEnabled=False, listenPort=1179)]
    to_rack_a = peer_selector("b-to-a", "rack == 'a'", nodeSelector="rack == 'b'", keepaliveTime=5)

    def seen(me):
        return [(p.address, p.as_number, p.kind, p.name, p.port, p.hold_time)
                for p in peers.desired_peers(me, everyone, mesh_off, [to_rack_a])]

    assert seen(b1) == [("10.0.0.1", 65001, "node", "b-to-a", 1179, 15), ("10.0.0.2", 64512, "node", "b-to-a", 1179, 15)]
    # a1 and a2 are selected: they answer b1, and only b1 (not each other).
    assert seen(a1) == [("10.0.0.3", 64512, "node", "b-to-a", 1179, 15)]
    assert seen(a2) == [("10.0.0.3", 64512, "node", "b-to-a", 1179, 15)]
    within_a = peer_selector("rack-a", "rack == 'a'", nodeSelector="rack == 'a'")
    assert [p.address for p in peers.desired_peers(a1, everyone, mesh_off, [within_a])] == ["10.0.0.2"]
    assert peers.desired_peers(b1, everyone, mesh_off, [within_a]) == []


def test_source_address_none_renders_no_fixed_local_address():
    me = peers.local_speaker(NODES[0], [])
    got = peers.desired_peers(NODES[0], NODES, [config(nodeToNodeMeshEnabled=False)],
                              [peer("tor", "10.0.0.254", 65001, sourceAddress="None")])
    assert [p.source_address for p in got] == ["None"]
    text = exabgp.render(me, got, "helper").text
    assert "local-address auto;" in text and "router-id 10.0.0.1;" in text
    mesh = exabgp.render(me, peers.desired_peers(NODES[0], NODES, [], []), "helper").text
    assert "local-address auto" not in mesh and mesh.count("local-address 10.0.0.1;") == 2


def test_communities_go_with_every_prefix_inside_an_advertised_cidr():
    from bgp import communities

    spec = config(communities=[{"name": "rack", "value": "65001:100"}, {"name": "big", "value": "65001:7:8"}],
                  prefixAdvertisements=[{"cidr": "10.244.0.0/16", "communities": ["rack", "65001:20"]},
                                        {"cidr": "10.244.0.0/17", "communities": ["big", "rack"]},
                                        {"cidr": "10.96.0.10/32", "communities": ["65001:9"]}]).spec
    got = communities.attributes(["10.244.1.0/26", "10.244.200.0/26", "10.96.0.10/32", "10.97.0.0/26",
                                  "10.244.0.0/16"], spec.community_values())
    assert got == {"10.244.1.0/26": " community [65001:20 65001:100] large-community [65001:7:8]",
                   "10.244.200.0/26": " community [65001:20 65001:100]",
                   "10.96.0.10/32": " community [65001:9]", "10.97.0.0/26": "",
                   "10.244.0.0/16": " community [65001:20 65001:100]"}
    lines = announce_commands("announce", list(got), got)
    assert "announce attributes next-hop self nlri 10.97.0.0/26" in lines
    assert ("announce attributes next-hop self community [65001:20 65001:100] nlri 10.244.0.0/16 10.244.200.0/26"
            in lines)
    assert len(lines) == 4


def test_a_peer_ip_that_is_a_nodes_own_makes_that_node_answer():
    # Calico's automatic reverse peering: b answers a, whose BGPPeer names b's address and AS.
    a_to_b = peer("a-to-b", "10.0.0.2", 64512, node="a")
    mesh_off = [config(nodeToNodeMeshEnabled=False)]
    assert [(p.address, p.name) for p in peers.desired_peers(NODES[0], NODES, mesh_off, [a_to_b])] == \
        [("10.0.0.2", "a-to-b")]
    assert [(p.address, p.name) for p in peers.desired_peers(NODES[1], NODES, mesh_off, [a_to_b])] == \
        [("10.0.0.1", "a-to-b")]
    assert peers.desired_peers(NODES[2], NODES, mesh_off, [a_to_b]) == []
    # Another AS than b's: a router that happens to have that address, not b.
    assert peers.desired_peers(NODES[1], NODES, mesh_off, [peer("x", "10.0.0.2", 65000, node="a")]) == []


def test_peer_selector_peers_over_both_families_where_both_ends_have_them():
    def dual(name, v4, v6, rack):
        return r.parse({"apiVersion": "routed.io/v1", "kind": "Node", "metadata": {"name": name, "labels": {"rack": rack}},
                        "spec": {"bgp": {"ipv4Address": v4, "ipv6Address": v6}}})

    a1, a2 = dual("a1", "10.0.0.1/24", "fd00::1/64", "a"), dual("a2", "10.0.0.2/24", "fd00::2/64", "a")
    v4_only = node("a3", "10.0.0.3/24", labels={"rack": "a"})
    within_a = peer_selector("rack-a", "rack == 'a'", nodeSelector="rack == 'a'")
    mesh_off = [config(nodeToNodeMeshEnabled=False)]
    assert [p.address for p in peers.desired_peers(a1, [a1, a2, v4_only], mesh_off, [within_a])] == \
        ["10.0.0.2", "10.0.0.3", "fd00::2"]
    assert [p.address for p in peers.desired_peers(v4_only, [a1, a2, v4_only], mesh_off, [within_a])] == \
        ["10.0.0.1", "10.0.0.2"]
    # A BGPPeer by peerIP is answered over its own family only.
    by_v6 = peer("a1-to-a2", "fd00::2", 64512, node="a1")
    assert [p.address for p in peers.desired_peers(a2, [a1, a2], mesh_off, [by_v6])] == ["fd00::1"]
