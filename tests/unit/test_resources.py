"""routed.resources: validation errors are one line naming the field; valid input is
normalised, defaulted and survives a round trip through to_dict()."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from routed.errors import InvalidResource
from routed.resources import (
    KINDS,
    BGPConfiguration,
    BGPPeer,
    IPAMConfig,
    IPPool,
    IPPoolSpec,
    Node,
    ObjectMeta,
    check_pool_overlap,
    check_pool_update,
    load_documents,
    parse,
    resolve_kind,
)

V = "routed.io/v1"


def doc(kind: str, spec: dict | None = None, name: str = "x", **top) -> dict:
    d = {"apiVersion": V, "kind": kind, "metadata": {"name": name}, **top}
    if spec is not None:
        d["spec"] = spec
    return d


def pool(cidr: str = "10.0.0.0/16", name: str = "pool-a", **spec) -> dict:
    return doc("IPPool", {"cidr": cidr, **spec}, name=name)


def peer(**spec) -> dict:
    return doc("BGPPeer", {"peerIP": "192.0.2.1", "asNumber": 65001, **spec}, name="rr1")


def node(**bgp) -> dict:
    return doc("Node", {"bgp": {"ipv4Address": "10.0.0.5/24", **bgp}}, name="node-1")


def with_meta(d: dict, **meta) -> dict:
    return {**d, "metadata": {**d["metadata"], **meta}}


def error_of(d) -> str:
    with pytest.raises(InvalidResource) as info:
        parse(d)
    return str(info.value)


# --- invalid input --------------------------------------------------------------------

# (id, document, the field the message must name, a fragment it must contain)
INVALID = [
    # IPPool.cidr
    ("cidr-garbage", pool("10.0.0.300/16"), "spec.cidr", '"10.0.0.300/16" is not a valid CIDR'),
    ("cidr-words", pool("not-a-cidr/8"), "spec.cidr", "not a valid CIDR"),
    ("cidr-no-prefix", pool("10.0.0.0"), "spec.cidr", "no prefix length"),
    ("cidr-host-bits", pool("10.0.0.1/16"), "spec.cidr", "(did you mean 10.0.0.0/16?)"),
    ("cidr-host-bits-v6", pool("fd00::1/64"), "spec.cidr", "did you mean fd00::/64?"),
    ("cidr-small", pool("10.0.0.0/28"), "spec.cidr", "pool 10.0.0.0/28 is smaller than one block (/26)"),
    ("cidr-small-bs", pool("10.0.0.0/24", blockSize=23), "spec.cidr", "smaller than one block (/23)"),
    ("link-local-v4", pool("169.254.0.0/16"), "spec.cidr", "link-local"),
    ("link-local-inside", pool("169.254.1.0/24"), "spec.cidr", "link-local range 169.254.0.0/16"),
    ("link-local-cover", pool("169.0.0.0/8"), "spec.cidr", "link-local"),
    ("link-local-v6", pool("fe80::/64"), "spec.cidr", "link-local range fe80::/10"),
    ("loopback-v4", pool("127.0.0.0/16"), "spec.cidr", "loopback"),
    ("loopback-v6", pool("::1/128"), "spec.cidr", "loopback"),
    ("multicast-v4", pool("224.0.0.0/16"), "spec.cidr", "multicast"),
    ("multicast-v6", pool("ff02::/64"), "spec.cidr", "multicast"),
    ("cidr-not-string", pool(10), "spec.cidr", "valid string"),
    # IPPool.blockSize
    ("bs-v4-low", pool(blockSize=19), "spec.blockSize", "block size 19 is out of range for IPv4 (20-32)"),
    ("bs-v4-high", pool(blockSize=33), "spec.blockSize", "(20-32)"),
    ("bs-v6-low", pool("fd00::/48", blockSize=115), "spec.blockSize", "IPv6 (116-128)"),
    ("bs-v6-high", pool("fd00::/48", blockSize=129), "spec.blockSize", "IPv6 (116-128)"),
    ("bs-v6-size-on-v4", pool(blockSize=122), "spec.blockSize", "IPv4"),
    ("bs-string", pool(blockSize="26"), "spec.blockSize", "integer"),
    ("bs-bool", pool(blockSize=True), "spec.blockSize", "integer"),
    # IPPool encapsulation and selector
    ("ipip-and-vxlan", pool(ipipMode="Always", vxlanMode="CrossSubnet"), "spec.vxlanMode", "choose one"),
    ("ipip-v6", pool("fd00::/48", ipipMode="Always"), "spec.ipipMode", "IPv6"),
    ("ipip-bad-word", pool(ipipMode="always"), "spec.ipipMode", "'Never', 'Always' or 'CrossSubnet'"),
    ("nat-not-bool", pool(natOutgoing="yes"), "spec.natOutgoing", "boolean"),
    ("pool-selector", pool(nodeSelector="zone == "), "spec.nodeSelector", 'invalid selector "zone == "'),
    ("pool-selector-op", pool(nodeSelector="zone = 'a'"), "spec.nodeSelector", "position 5"),
    # envelope
    ("unknown-top", {**pool(), "status": {}}, "status", "unknown field"),
    ("unknown-spec", pool(natOutgoin=True), "spec.natOutgoin", "unknown field"),
    ("unknown-meta", with_meta(pool(), namespace="default"), "metadata.namespace", "unknown field"),
    ("unknown-nested", node(asnumber=1), "spec.bgp.asnumber", "unknown field"),
    (
        "unknown-deep",
        peer(password={"secretKeyRef": {"name": "s", "key": "k", "namespace": "x"}}),
        "spec.password.secretKeyRef.namespace",
        "unknown field",
    ),
    ("spec-missing", doc("IPPool"), "spec", "field is required"),
    ("cidr-missing", doc("IPPool", {}), "spec.cidr", "field is required"),
    ("api-version-wrong", {**pool(), "apiVersion": "projectcalico.org/v3"}, "apiVersion", '"routed.io/v1"'),
    ("api-version-missing", {k: v for k, v in pool().items() if k != "apiVersion"}, "apiVersion", "missing"),
    ("kind-unknown", doc("Pod", {}), "kind", 'unknown kind "Pod"; known: BGPConfiguration'),
    ("kind-case", doc("ippool", {}), "kind", 'did you mean "IPPool"?'),
    ("kind-missing", {"apiVersion": V, "metadata": {"name": "a"}}, "kind", "required"),
    # metadata
    ("name-missing", {**pool(), "metadata": {}}, "metadata.name", "field is required"),
    ("name-upper", pool(name="Pool-A"), "metadata.name", '"Pool-A" is not a valid name'),
    ("name-underscore", node() | {"metadata": {"name": "node_1"}}, "metadata.name", "not a valid name"),
    ("name-dash-end", pool(name="pool-"), "metadata.name", "not a valid name"),
    ("name-empty", pool(name=""), "metadata.name", "must not be empty"),
    ("name-too-long", pool(name="a" * 254), "metadata.name", "more than 253"),
    ("label-key", with_meta(pool(), labels={"bad key": "v"}), "metadata.labels", 'label key "bad key"'),
    ("label-prefix", with_meta(pool(), labels={"Ex_ample.com/a": "v"}), "metadata.labels", "prefix"),
    ("label-value", with_meta(pool(), labels={"zone": "a b"}), "metadata.labels", 'value "a b"'),
    ("label-long", with_meta(pool(), labels={"zone": "a" * 64}), "metadata.labels", "63"),
    ("label-not-str", with_meta(pool(), labels={"zone": True}), "metadata.labels.zone", "string"),
    ("label-key-echoed", with_meta(pool(), labels={"my_label": 1}), "metadata.labels.my_label", "string"),
    # AS numbers, wherever they appear
    ("as-0", peer(asNumber=0), "spec.asNumber", "out of range"),
    ("as-trans", peer(asNumber=23456), "spec.asNumber", "AS_TRANS"),
    ("as-2^32", peer(asNumber=2**32), "spec.asNumber", "4294967296 is out of range"),
    ("as-negative", peer(asNumber=-1), "spec.asNumber", "out of range"),
    ("as-abc", peer(asNumber="abc"), "spec.asNumber", '"abc" is not an AS number'),
    ("as-asdot-big", peer(asNumber="1.65536"), "spec.asNumber", "not an AS number"),
    ("as-asdot-trans", peer(asNumber="0.23456"), "spec.asNumber", "AS_TRANS"),
    ("as-float", peer(asNumber=1.5), "spec.asNumber", "not an AS number"),
    ("as-bool", peer(asNumber=True), "spec.asNumber", "not an AS number"),
    ("as-missing", doc("BGPPeer", {"peerIP": "192.0.2.1"}), "spec.asNumber", "required with peerIP"),
    ("as-config", doc("BGPConfiguration", {"asNumber": 0}, name="default"), "spec.asNumber", "range"),
    ("as-node", node(asNumber=23456), "spec.bgp.asNumber", "AS_TRANS"),
    # BGPPeer
    ("peer-ip", peer(peerIP="192.0.2.256"), "spec.peerIP", "not an IP address"),
    ("peer-ip-host", peer(peerIP="router.example.com"), "spec.peerIP", "not an IP address"),
    ("peer-port", peer(peerIP="192.0.2.1:70000"), "spec.peerIP", "port must be 1-65535"),
    ("peer-port-v6", peer(peerIP="[2001:db8::1]:x"), "spec.peerIP", "not an IP address"),
    ("inline-password", peer(password="hunter2"), "spec.password", "use password: {secretKeyRef"),
    ("password-no-key", peer(password={"secretKeyRef": {"name": "s"}}), "spec.password.secretKeyRef.key", "required"),
    ("password-key-path", peer(password={"secretKeyRef": {"name": "s", "key": "../../etc/shadow"}}),
     "spec.password.secretKeyRef.key", "not a Secret key"),
    ("password-key-dotdot", peer(password={"secretKeyRef": {"name": "s", "key": ".."}}),
     "spec.password.secretKeyRef.key", "not a Secret key"),
    ("password-key-absolute", peer(password={"secretKeyRef": {"name": "s", "key": "/etc/shadow"}}),
     "spec.password.secretKeyRef.key", "not a Secret key"),
    ("password-name-path", peer(password={"secretKeyRef": {"name": "../x", "key": "k"}}),
     "spec.password.secretKeyRef.name", "not a valid name"),
    ("keepalive-eq-hold", peer(holdTime=30, keepaliveTime=30), "spec.keepaliveTime", "less than hold time 30s"),
    ("keepalive-gt-hold", peer(holdTime="1m", keepaliveTime="2m"), "spec.keepaliveTime", "120s"),
    ("keepalive-given-hold-default", peer(keepaliveTime=20, holdTime=20), "spec.keepaliveTime", "less than"),
    ("peer-ip-missing", doc("BGPPeer", {"asNumber": 65001}, name="p"), "spec.peerIP", "or peerSelector"),
    ("peer-as-missing", doc("BGPPeer", {"peerIP": "192.0.2.1"}, name="p"), "spec.asNumber", "required with peerIP"),
    ("peer-selector-and-ip", peer(peerSelector="rr == 'true'"), "spec.peerSelector", "not both"),
    ("peer-selector-bad", doc("BGPPeer", {"peerSelector": "rr = 'x'"}, name="p"), "spec.peerSelector",
     "invalid selector"),
    ("community-value", doc("BGPConfiguration", {"communities": [{"name": "a", "value": "65536:1"}]}, name="default"),
     "spec.communities[0].value", "at most 65535"),
    ("community-value-text", doc("BGPConfiguration", {"communities": [{"name": "a", "value": "no-export"}]},
                                 name="default"), "spec.communities[0].value", "aa:nn"),
    ("community-large", doc("BGPConfiguration", {"communities": [{"name": "a", "value": "1:2:4294967296"}]},
                            name="default"), "spec.communities[0].value", "at most 4294967295"),
    ("community-name", doc("BGPConfiguration", {"communities": [{"name": "a b", "value": "1:2"}]}, name="default"),
     "spec.communities[0].name", "not a community name"),
    ("community-twice", doc("BGPConfiguration", {"communities": [{"name": "a", "value": "1:2"},
                                                                 {"name": "a", "value": "1:3"}]}, name="default"),
     "spec.communities[1].name", "defined twice"),
    ("advertisement-unknown", doc("BGPConfiguration", {"prefixAdvertisements": [
        {"cidr": "10.0.0.0/8", "communities": ["1:2", "nosuch"]}]}, name="default"),
     "spec.prefixAdvertisements[0].communities[1]", '"nosuch" is neither a name in spec.communities'),
    ("advertisement-cidr", doc("BGPConfiguration", {"prefixAdvertisements": [
        {"cidr": "10.0.0.0/33", "communities": ["1:2"]}]}, name="default"), "spec.prefixAdvertisements[0].cidr", ""),
    ("advertisement-empty", doc("BGPConfiguration", {"prefixAdvertisements": [
        {"cidr": "10.0.0.0/8", "communities": []}]}, name="default"), "spec.prefixAdvertisements[0].communities", ""),
    ("keepalive-zero", peer(keepaliveTime=0), "spec.keepaliveTime", "at least 1s"),
    ("hold-2", peer(holdTime=2, keepaliveTime=1), "spec.holdTime", "0 (no keepalives) or 3-65535"),
    ("hold-big", peer(holdTime=65536), "spec.holdTime", "3-65535"),
    ("hold-text", peer(holdTime="ninety"), "spec.holdTime", "not a duration"),
    ("hold-fraction", peer(holdTime="90.5s"), "spec.holdTime", "whole number of seconds"),
    ("restart-big", peer(maxRestartTime=5000), "spec.maxRestartTime", "0-4095"),
    ("node-and-selector", peer(node="node-1", nodeSelector="all()"), "spec.nodeSelector", "not both"),
    ("peer-node-name", peer(node="Node 1"), "spec.node", "not a valid name"),
    ("peer-selector", peer(nodeSelector="has(rack"), "spec.nodeSelector", "position 8"),
    ("source-address", peer(sourceAddress="Auto"), "spec.sourceAddress", "'UseNodeIP' or 'None'"),
    ("max-prefixes", peer(maxPrefixes=-1), "spec.maxPrefixes", "greater than or equal to 0"),
    ("allowed-prefix", peer(allowedPrefixes=["10.0.0.0/8", "10.1.0.1/16"]), "spec.allowedPrefixes[1]", "did you mean 10.1.0.0/16?"),
    # BGPConfiguration
    ("bgpconfig-name", doc("BGPConfiguration", {}, name="global"), "metadata.name", '"node.<nodename>"'),
    ("bgpconfig-node-empty", doc("BGPConfiguration", {}, name="node."), "metadata.name", "not a valid name"),
    # A node.<name> one overrides listenPort, logSeverity, prefixAdvertisements (and communities) only.
    ("bgpconfig-node-as", doc("BGPConfiguration", {"asNumber": 65001}, name="node.n1"), "spec.asNumber",
     "Node's spec.bgp.asNumber"),
    ("bgpconfig-node-mesh", doc("BGPConfiguration", {"nodeToNodeMeshEnabled": False}, name="node.n1"),
     "spec.nodeToNodeMeshEnabled", 'set it on the "default" BGPConfiguration'),
    ("bgpconfig-node-wireguard", doc("BGPConfiguration", {"wireguard": "Required"}, name="node.n1"),
     "spec.wireguard", "cluster-wide"),
    ("listen-port-0", doc("BGPConfiguration", {"listenPort": 0}, name="default"), "spec.listenPort", "greater than or equal to 1"),
    ("listen-port-big", doc("BGPConfiguration", {"listenPort": 65536}, name="default"), "spec.listenPort", "65535"),
    ("log-severity", doc("BGPConfiguration", {"logSeverity": "Verbose"}, name="default"), "spec.logSeverity", "'Debug'"),
    ("mesh-not-bool", doc("BGPConfiguration", {"nodeToNodeMeshEnabled": "true"}, name="default"), "spec.nodeToNodeMeshEnabled", "boolean"),
    # IPAMConfig
    ("ipam-name", doc("IPAMConfig", {}, name="mine"), "metadata.name", 'must be named "default"'),
    ("ipam-max-blocks", doc("IPAMConfig", {"maxBlocksPerHost": -1}, name="default"), "spec.maxBlocksPerHost", "greater than or equal to 0"),
    ("ipam-strict", doc("IPAMConfig", {"strictAffinity": 1}, name="default"), "spec.strictAffinity", "boolean"),
    # Node
    ("node-v4-no-prefix", node(ipv4Address="10.0.0.5"), "spec.bgp.ipv4Address", "needs a prefix length"),
    ("node-v4-is-v6", node(ipv4Address="fd00::5/64"), "spec.bgp.ipv4Address", "not an IPv4 address"),
    ("node-v4-garbage", node(ipv4Address="10.0.0.500/24"), "spec.bgp.ipv4Address", "IPv4 address with prefix"),
    ("node-v4-missing", doc("Node", {"bgp": {}}), "spec.bgp.ipv4Address", "field is required"),
    ("node-v6-is-v4", node(ipv6Address="10.0.0.6/24"), "spec.bgp.ipv6Address", "not an IPv6 address"),
    ("node-rr-id", node(routeReflectorClusterID="fd00::1"), "spec.bgp.routeReflectorClusterID", "not an IPv4 address"),
    ("node-addresses", doc("Node", {"addresses": "10.0.0.5"}), "spec.addresses", "list"),
]


@pytest.mark.parametrize("d, field, fragment", [c[1:] for c in INVALID], ids=[c[0] for c in INVALID])
def test_invalid_resource_is_one_line_naming_the_field(d, field, fragment):
    message = error_of(d)
    assert "\n" not in message and len(message) < 300, message
    assert f"{field}:" in message or f"{field} " in message, message
    assert fragment in message, message
    for noise in ("pydantic", "Value error", "errors.pydantic.dev", "input_value"):
        assert noise not in message, message


def test_message_names_kind_and_resource():
    assert error_of(pool("10.0.0.1/16")) == (
        'IPPool "pool-a": spec.cidr: host bits set in 10.0.0.1/16 (did you mean 10.0.0.0/16?)'
    )
    assert error_of(pool("10.0.0.0/28")) == (
        'IPPool "pool-a": spec.cidr: pool 10.0.0.0/28 is smaller than one block (/26)'
    )


def test_only_first_error_is_shown_with_a_count_of_the_rest():
    message = error_of(pool("10.0.0.1/16", natOutgoing="no", mystery=1))
    assert message.startswith('IPPool "pool-a": spec.cidr: host bits set')
    assert message.endswith(" (and 2 more)")


@pytest.mark.parametrize("d", [None, [], "IPPool", 3], ids=repr)
def test_parse_rejects_non_mappings(d):
    assert "must be a mapping" in error_of(d)


# --- valid input: defaults and normalisation ------------------------------------------


def test_ippool_defaults_v4():
    p = parse(pool())
    assert isinstance(p, IPPool)
    s = p.spec
    assert (s.cidr, s.block_size, s.ipip_mode, s.vxlan_mode) == ("10.0.0.0/16", 26, "Never", "Never")
    assert (s.nat_outgoing, s.disabled, s.node_selector) == (False, False, "all()")
    assert str(p.network) == "10.0.0.0/16" and p.network.version == 4


def test_ippool_defaults_v6_and_normalised_cidr():
    p = parse(pool("FD00:0:0:0::/48"))
    assert p.spec.cidr == "fd00::/48"
    assert p.spec.block_size == 122


@pytest.mark.parametrize(
    "cidr, block_size",
    [("10.0.0.0/20", 20), ("10.0.0.0/16", 32), ("10.0.0.0/26", 26), ("fd00::/116", 116), ("fd00::/64", 128)],
)
def test_ippool_block_size_limits_accepted(cidr, block_size):
    assert parse(pool(cidr, blockSize=block_size)).spec.block_size == block_size


@pytest.mark.parametrize("ipip, vxlan", [("Always", "Never"), ("CrossSubnet", "Never"), ("Never", "Always"), ("Never", "CrossSubnet")])
def test_ippool_one_encapsulation_is_fine(ipip, vxlan):
    spec = parse(pool(ipipMode=ipip, vxlanMode=vxlan)).spec
    assert (spec.ipip_mode, spec.vxlan_mode) == (ipip, vxlan)


def test_ippool_v6_vxlan_is_fine():
    assert parse(pool("fd00::/48", vxlanMode="Always")).spec.vxlan_mode == "Always"


def test_empty_selector_is_accepted():
    assert parse(pool(nodeSelector="")).spec.node_selector == ""


def test_ipamconfig_defaults_without_spec():
    c = parse(doc("IPAMConfig", name="default"))
    assert isinstance(c, IPAMConfig)
    assert (c.spec.strict_affinity, c.spec.max_blocks_per_host, c.spec.auto_allocate_blocks) == (False, 0, True)


def test_bgpconfiguration_defaults_and_node_override():
    c = parse(doc("BGPConfiguration", name="default"))
    assert isinstance(c, BGPConfiguration)
    s = c.spec
    assert (s.as_number, s.node_to_node_mesh_enabled, s.listen_port, s.log_severity) == (64512, True, 179, "Info")
    assert c.node_name is None
    assert parse(doc("BGPConfiguration", {"logSeverity": "Debug"}, name="node.worker-1")).node_name == "worker-1"


def test_bgppeer_defaults():
    p = parse(peer())
    assert isinstance(p, BGPPeer)
    s = p.spec
    assert (s.node, s.node_selector, s.password) == (None, None, None)
    assert (s.hold_time, s.keepalive_time, s.graceful_restart, s.max_restart_time) == (90, 30, True, 120)
    assert (s.source_address, s.max_prefixes, s.allowed_prefixes) == ("UseNodeIP", 0, [])
    assert (str(s.address), s.port) == ("192.0.2.1", None)


@pytest.mark.parametrize(
    "text, address, port",
    [
        ("192.0.2.1", "192.0.2.1", None),
        ("192.0.2.1:1179", "192.0.2.1", 1179),
        ("2001:db8::1", "2001:db8::1", None),
        ("[2001:db8::1]:1179", "2001:db8::1", 1179),
        ("[2001:db8::1]", "2001:db8::1", None),
    ],
)
def test_peer_ip_forms(text, address, port):
    s = parse(peer(peerIP=text)).spec
    assert (s.peer_ip, str(s.address), s.port) == (text, address, port)


@pytest.mark.parametrize(
    "value, seconds",
    [(90, 90), ("90", 90), ("90s", 90), ("1m30s", 90), ("1.5m", 90), ("1h", 3600), ("3000ms", 3)],
)
def test_hold_time_durations(value, seconds):
    hold = parse(peer(holdTime=value, keepaliveTime=1)).spec.hold_time
    assert hold == seconds


@pytest.mark.parametrize("spec, hold, keepalive", [
    ({}, 90, 30), ({"keepaliveTime": "5s"}, 15, 5), ({"holdTime": 20}, 20, 6), ({"holdTime": 3}, 3, 1),
    ({"keepaliveTime": 30000}, 65535, 30000), ({"holdTime": 180, "keepaliveTime": 20}, 180, 20),
])
def test_hold_and_keepalive_time_follow_each_other(spec, hold, keepalive):
    # Calico's BGPPeer has keepaliveTime only: the hold time is three of them (RFC 4271's ratio).
    s = parse(peer(**spec)).spec
    assert (s.hold_time, s.keepalive_time) == (hold, keepalive)
    again = parse(parse(peer(**spec)).to_dict()).spec
    assert (again.hold_time, again.keepalive_time) == (hold, keepalive)


def test_hold_time_zero_disables_keepalive_check():
    s = parse(peer(holdTime="0s", keepaliveTime=60)).spec
    assert (s.hold_time, s.keepalive_time) == (0, 60)


@pytest.mark.parametrize(
    "value, number",
    [(1, 1), (64512, 64512), ("64512", 64512), ("1.10", 65546), ("0.1", 1), ("65535.65535", 2**32 - 1), (2**32 - 1, 2**32 - 1)],
)
def test_as_number_forms(value, number):
    assert parse(peer(asNumber=value)).spec.as_number == number


@given(st.integers(1, 2**32 - 1).filter(lambda n: n != 23456))
def test_asdot_is_high_and_low_16_bits(n):
    assert parse(peer(asNumber=f"{n >> 16}.{n & 0xFFFF}")).spec.as_number == n


def test_bgppeer_password_reference_and_selector():
    s = parse(peer(password={"secretKeyRef": {"name": "bgp-secrets", "key": "rr1"}}, nodeSelector="rack == 'a'")).spec
    assert (s.password.secret_key_ref.name, s.password.secret_key_ref.key) == ("bgp-secrets", "rr1")
    assert s.node_selector == "rack == 'a'"


def test_node_bgp_fields():
    n = parse(node(ipv6Address="fd00::5/64", asNumber="1.1", routeReflectorClusterID="244.0.0.1"))
    assert isinstance(n, Node)
    b = n.spec.bgp
    assert (b.ipv4_address, b.ipv6_address, b.as_number, b.route_reflector_cluster_id) == (
        "10.0.0.5/24",
        "fd00::5/64",
        65537,
        "244.0.0.1",
    )
    assert parse(doc("Node", name="bare")).spec.bgp is None


def test_yaml_timestamp_becomes_rfc3339_text():
    d = load_documents(
        "apiVersion: routed.io/v1\nkind: Node\nmetadata:\n  name: n1\n"
        "  creationTimestamp: 2024-05-01T10:00:00Z\n"
    )[0]
    assert parse(d).metadata.creation_timestamp == "2024-05-01T10:00:00Z"


# --- round trips ------------------------------------------------------------------------

META = {"name": "x", "labels": {}, "annotations": {}}

# (input, what to_dict() must give back: the input normalised, with defaults filled in)
ROUND_TRIPS = [
    (
        pool("10.0.0.0/16", name="x"),
        {
            "apiVersion": V, "kind": "IPPool", "metadata": META,
            "spec": {"cidr": "10.0.0.0/16", "blockSize": 26, "ipipMode": "Never", "vxlanMode": "Never",
                     "natOutgoing": False, "disabled": False, "nodeSelector": "all()"},
        },
    ),
    (
        with_meta(pool("2001:DB8::/64", name="x", blockSize=120, vxlanMode="CrossSubnet", natOutgoing=True,
                       disabled=True, nodeSelector="zone in {'a','b'}"),
                  labels={"example.com/team": "net"}, annotations={"note": "any text"},
                  resourceVersion="42", uid="u-1"),
        {
            "apiVersion": V, "kind": "IPPool",
            "metadata": {"name": "x", "labels": {"example.com/team": "net"}, "annotations": {"note": "any text"},
                         "resourceVersion": "42", "uid": "u-1"},
            "spec": {"cidr": "2001:db8::/64", "blockSize": 120, "ipipMode": "Never", "vxlanMode": "CrossSubnet",
                     "natOutgoing": True, "disabled": True, "nodeSelector": "zone in {'a','b'}"},
        },
    ),
    (
        doc("IPAMConfig", name="default"),
        {"apiVersion": V, "kind": "IPAMConfig", "metadata": META | {"name": "default"},
         "spec": {"strictAffinity": False, "maxBlocksPerHost": 0, "autoAllocateBlocks": True}},
    ),
    (
        doc("BGPConfiguration", {"asNumber": "1.10", "nodeToNodeMeshEnabled": False}, name="default"),
        {"apiVersion": V, "kind": "BGPConfiguration", "metadata": META | {"name": "default"},
         "spec": {"asNumber": 65546, "nodeToNodeMeshEnabled": False, "listenPort": 179, "logSeverity": "Info",
                  "maxPrefixes": 100000}},
    ),
    (
        doc("BGPPeer", {"peerIP": "[2001:db8::1]:1179", "asNumber": "65001", "node": "node-1",
                        "password": {"secretKeyRef": {"name": "s", "key": "k"}}, "holdTime": "3m",
                        "keepaliveTime": "1m", "allowedPrefixes": ["0.0.0.0/0", "2001:DB8::/32"]}),
        {"apiVersion": V, "kind": "BGPPeer", "metadata": META,
         "spec": {"peerIP": "[2001:db8::1]:1179", "asNumber": 65001, "node": "node-1",
                  "password": {"secretKeyRef": {"name": "s", "key": "k"}}, "holdTime": 180, "keepaliveTime": 60,
                  "gracefulRestart": True, "maxRestartTime": 120, "sourceAddress": "UseNodeIP", "maxPrefixes": 0,
                  "allowedPrefixes": ["0.0.0.0/0", "2001:db8::/32"]}},
    ),
    (
        doc("Node", {"bgp": {"ipv4Address": "10.0.0.5/24", "routeReflectorClusterID": "244.0.0.1"},
                     "addresses": ["10.0.0.5"]}, name="node-1.example.com"),
        {"apiVersion": V, "kind": "Node", "metadata": META | {"name": "node-1.example.com"},
         "spec": {"bgp": {"ipv4Address": "10.0.0.5/24", "routeReflectorClusterID": "244.0.0.1"},
                  "addresses": ["10.0.0.5"]}},
    ),
    (
        doc("NetworkPolicy", {"order": 10, "selector": "app == 'db'",
                              "ingress": [{"action": "Allow", "protocol": "TCP",
                                           "destination": {"ports": [5432, "http"]}}]}, name="x"),
        {"apiVersion": V, "kind": "NetworkPolicy", "metadata": META | {"namespace": "default"},
         "spec": {"order": 10, "selector": "app == 'db'", "types": ["Ingress"], "egress": [],
                  "ingress": [{"action": "Allow", "protocol": "TCP",
                               "source": {"nets": [], "notNets": [], "ports": [], "notPorts": []},
                               "destination": {"nets": [], "notNets": [], "ports": [5432, "http"],
                                               "notPorts": []}}]}},
    ),
    (
        doc("GlobalNetworkPolicy", {"egress": [{"action": "Deny", "protocol": "ICMP", "icmp": {"type": 8}}]},
            name="x"),
        {"apiVersion": V, "kind": "GlobalNetworkPolicy", "metadata": META,
         "spec": {"selector": "all()", "types": ["Egress"], "ingress": [],
                  "egress": [{"action": "Deny", "protocol": "ICMP", "icmp": {"type": 8},
                              "source": {"nets": [], "notNets": [], "ports": [], "notPorts": []},
                              "destination": {"nets": [], "notNets": [], "ports": [], "notPorts": []}}]}},
    ),
]


@pytest.mark.parametrize("given_doc, normalised", ROUND_TRIPS, ids=[d["kind"] + str(i) for i, (d, _) in enumerate(ROUND_TRIPS)])
def test_round_trip(given_doc, normalised):
    r = parse(given_doc)
    assert r.to_dict() == normalised
    assert parse(r.to_dict()) == r
    assert parse(normalised).to_dict() == normalised
    # What goes to etcd as JSON comes back equal.
    assert parse(json.loads(json.dumps(r.to_dict()))) == r


def test_every_kind_has_a_round_trip_case():
    assert {d["kind"] for d, _ in ROUND_TRIPS} == set(KINDS)


def test_python_names_build_the_same_resource():
    built = IPPool(metadata=ObjectMeta(name="pool-a"), spec=IPPoolSpec(cidr="10.0.0.0/16", nat_outgoing=True))
    assert built == parse(pool(natOutgoing=True))
    assert built.to_dict()["spec"]["natOutgoing"] is True


# --- loading documents ----------------------------------------------------------------

POOL_A = pool("10.0.0.0/16", name="a")
POOL_B = pool("10.1.0.0/16", name="b")


@pytest.mark.parametrize(
    "text",
    [
        "---\n# two pools\n" + "\n---\n".join(json.dumps(d) for d in (POOL_A, POOL_B)) + "\n---\n",
        "apiVersion: routed.io/v1\nkind: IPPool\nmetadata: {name: a}\nspec: {cidr: 10.0.0.0/16}\n"
        "---\n---\n"
        "apiVersion: routed.io/v1\nkind: IPPool\nmetadata:\n  name: b\nspec:\n  cidr: 10.1.0.0/16\n",
        json.dumps([POOL_A, POOL_B]),
        json.dumps({"apiVersion": "v1", "kind": "List", "items": [POOL_A, POOL_B]}),
        "kind: List\nitems:\n- " + json.dumps(POOL_A) + "\n- " + json.dumps(POOL_B) + "\n",
        "- " + json.dumps(POOL_A) + "\n- " + json.dumps(POOL_B) + "\n",
        json.dumps({"kind": "IPPoolList", "items": [POOL_A]}) + "\n---\n" + json.dumps(POOL_B),
    ],
    ids=["yaml-json-docs", "yaml-multi", "json-list", "json-kind-list", "yaml-kind-list", "yaml-list", "mixed"],
)
def test_load_documents(text):
    docs = load_documents(text)
    assert docs == [POOL_A, POOL_B]
    assert [parse(d).name for d in docs] == ["a", "b"]


def test_load_single_json_object():
    assert load_documents(json.dumps(POOL_A)) == [POOL_A]


def test_load_json_that_yaml_would_misread():
    # Tab indentation and "\/" are valid JSON but not valid YAML.
    text = '{\n\t"apiVersion": "routed.io\\/v1", "kind": "IPPool",\n\t"metadata": {"name": "a"}, "spec": {"cidr": "10.0.0.0/16"}}'
    assert load_documents(text) == [POOL_A]


def test_load_yaml_flow_mapping():
    text = "{apiVersion: routed.io/v1, kind: IPPool, metadata: {name: a}, spec: {cidr: 10.0.0.0/16}}"
    assert load_documents(text) == [POOL_A]


@pytest.mark.parametrize("text", ["", "   \n", "---\n", "# nothing\n---\n---\n", "[]"])
def test_load_nothing(text):
    assert load_documents(text) == []


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("kind: IPPool\nmetadata:\n  name: a\n   bad: indent\n", "invalid YAML at line 4"),
        ("kind: [unclosed\n", "invalid YAML at line 2"),
        ('{"kind": "IPPool"\n "x": 1}', "invalid JSON at line 2, column 2: Expecting ','"),
        ("[1, 2]", "document 1: expected a resource"),
        ("just a string\n", "expected a resource"),
    ],
)
def test_load_errors_are_one_line(text, fragment):
    with pytest.raises(InvalidResource) as info:
        load_documents(text)
    assert "\n" not in str(info.value)
    assert fragment in str(info.value)


# --- kinds -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "word, cls",
    [
        ("ippool", IPPool), ("IPPools", IPPool), ("pool", IPPool), ("Pools", IPPool),
        ("bgppeer", BGPPeer), ("BGPPeers", BGPPeer),
        ("bgpconfig", BGPConfiguration), ("bgpconfigs", BGPConfiguration),
        ("BGPConfiguration", BGPConfiguration), ("bgpconfigurations", BGPConfiguration),
        ("ipamconfig", IPAMConfig), ("IPAMConfigs", IPAMConfig),
        ("node", Node), ("Nodes", Node),
    ],
)
def test_resolve_kind(word, cls):
    assert resolve_kind(word) is cls


def test_resolve_kind_unknown_lists_the_known():
    with pytest.raises(InvalidResource, match=r'unknown resource type "pods"; known: bgpconfigurations, bgppeers'):
        resolve_kind("pods")


def test_kinds_table():
    assert set(KINDS) == {"IPPool", "IPAMConfig", "BGPConfiguration", "BGPPeer", "Node",
                          "NetworkPolicy", "GlobalNetworkPolicy"}
    assert all(cls.kind_name == kind for kind, cls in KINDS.items())
    assert KINDS["IPPool"].plural == "ippools"


# --- pool overlap and immutability ------------------------------------------------------


def P(cidr: str, name: str, **spec) -> IPPool:
    return parse(pool(cidr, name=name, **spec))


@pytest.mark.parametrize(
    "new, existing, message",
    [
        (P("10.0.0.0/16", "b"), [P("10.0.0.0/8", "a")],
         'IPPool "b": spec.cidr 10.0.0.0/16 overlaps IPPool "a" (10.0.0.0/8)'),
        (P("10.0.0.0/8", "b"), [P("192.168.0.0/16", "c"), P("10.200.0.0/16", "a")],
         'IPPool "b": spec.cidr 10.0.0.0/8 overlaps IPPool "a" (10.200.0.0/16)'),
        (P("fd00::/48", "b"), [P("fd00:0:0:ff::/64", "a")],
         'IPPool "b": spec.cidr fd00::/48 overlaps IPPool "a" (fd00:0:0:ff::/64)'),
        (P("10.0.0.0/16", "b"), [P("10.0.0.0/16", "a")],
         'IPPool "b": spec.cidr 10.0.0.0/16 overlaps IPPool "a" (10.0.0.0/16)'),
    ],
)
def test_overlap_is_refused(new, existing, message):
    with pytest.raises(InvalidResource) as info:
        check_pool_overlap(new, existing)
    assert str(info.value) == message


@pytest.mark.parametrize(
    "new, existing",
    [
        (P("10.0.0.0/16", "a"), [P("10.0.0.0/8", "a")]),  # an update of itself
        (P("10.1.0.0/16", "b"), [P("10.0.0.0/16", "a"), P("10.2.0.0/16", "c")]),
        (P("fd00:1::/48", "b"), [P("fd00::/48", "a"), P("10.0.0.0/8", "c")]),
        (P("10.0.0.0/16", "b"), [P("fd00::/48", "a")]),
        (P("10.0.0.0/16", "b"), []),
    ],
)
def test_no_overlap_passes(new, existing):
    check_pool_overlap(new, existing)


def test_cidr_is_immutable():
    with pytest.raises(InvalidResource) as info:
        check_pool_update(P("10.0.0.0/16", "a"), P("10.1.0.0/16", "a"))
    assert str(info.value) == (
        'IPPool "a": spec.cidr is immutable (10.0.0.0/16 → 10.1.0.0/16); '
        "create a new pool and disable this one"
    )


def test_block_size_is_immutable():
    with pytest.raises(InvalidResource, match=r"spec\.blockSize is immutable \(26 → 28\)"):
        check_pool_update(P("10.0.0.0/16", "a"), P("10.0.0.0/16", "a", blockSize=28))


def test_other_pool_fields_may_change():
    old = P("10.0.0.0/16", "a")
    check_pool_update(old, P("10.0.0.0/16", "a", disabled=True, natOutgoing=True, ipipMode="CrossSubnet",
                            nodeSelector="has(edge)"))
    check_pool_update(old, P("10.0.0.0/16", "a", blockSize=26))  # the default, written out
