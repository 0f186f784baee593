"""WireGuard's pure parts: who peers with whom, what our table holds, wg's config and dump."""

from __future__ import annotations

import base64

import pytest
from pyroute2.netlink.rtnl.fibmsg import fibmsg

from routed import resources as r
from routed.agent.wireguard import cluster_mode, plan
from routed.dataplane import rtnl
from routed.dataplane import wireguard as wg
from routed.errors import InvalidResource

KEY_A = base64.b64encode(bytes(range(32))).decode()
KEY_B = base64.b64encode(bytes(range(1, 33))).decode()


def node(name, ip, key=None, endpoint=None, labels=None):
    spec = {"bgp": {"ipv4Address": f"{ip}/24"}}
    if key:
        spec["wireguard"] = {"publicKey": key, "endpoint": endpoint or f"{ip}:51820"}
    return r.parse({"apiVersion": r.API_VERSION, "kind": "Node",
                    "metadata": {"name": name, "labels": labels or {}}, "spec": spec})


PREFIXES = {"a": {"10.0.0.0/26", "10.0.1.5/32"}, "b": {"10.0.1.0/26"}, "c": {"10.0.2.0/26"}}


def routes_text(routes):
    return sorted(str(x) for x in routes)


def test_peers_are_the_participating_nodes_with_their_ipam_prefixes():
    nodes = [node("a", "192.0.2.1", KEY_A), node("b", "192.0.2.2", KEY_B), node("c", "192.0.2.3")]
    peers, routes, skipped = plan("a", "Enabled", nodes, lambda n: PREFIXES.get(n, set()))
    assert [(p.node, p.allowed_ips) for p in peers] == [("b", ("10.0.1.0/26", "192.0.2.2/32"))]
    # b's block through the device, except the /32 a holds in it; c (no key) stays in clear.
    assert routes_text(routes) == ["10.0.1.0/26 dev wg.routed table 201", "throw 10.0.0.0/26 table 201",
                                   "throw 10.0.1.5/32 table 201"]
    assert skipped == []


def test_required_drops_what_would_go_in_clear_and_opt_out_is_honoured():
    nodes = [node("a", "192.0.2.1", KEY_A), node("b", "192.0.2.2", KEY_B, labels={"routed.io/wireguard": "Disabled"}),
             node("c", "192.0.2.3")]
    peers, routes, _ = plan("a", "Required", nodes, lambda n: PREFIXES.get(n, set()))
    assert peers == []
    assert "blackhole 10.0.1.0/26 table 201" in routes_text(routes)
    assert "blackhole 10.0.2.0/26 table 201" in routes_text(routes)


def test_an_endpoint_elsewhere_than_the_node_is_left_out():
    nodes = [node("a", "192.0.2.1", KEY_A), node("b", "192.0.2.2", KEY_B, endpoint="198.51.100.9:51820")]
    peers, _, skipped = plan("a", "Enabled", nodes, lambda n: PREFIXES.get(n, set()))
    assert peers == [] and "198.51.100.9" in skipped[0]


def test_cluster_mode_defaults_to_disabled():
    assert cluster_mode([]) == ("Disabled", 51820)
    config = r.parse({"apiVersion": r.API_VERSION, "kind": "BGPConfiguration", "metadata": {"name": "default"},
                      "spec": {"wireguard": "Enabled", "wireguardListenPort": 5000}})
    assert cluster_mode([config]) == ("Enabled", 5000)


@pytest.mark.parametrize("key", ["", "abc", base64.b64encode(bytes(31)).decode(), KEY_A + "x"])
def test_a_bad_public_key_is_refused(key):
    with pytest.raises(InvalidResource, match="not a WireGuard key"):
        node("b", "192.0.2.2", key or "=")


def test_config_and_dump():
    peer = wg.Peer("b", KEY_B, "192.0.2.2:51820", ("10.0.1.0/26",), "192.0.2.2/32")
    text = wg.render_config(KEY_A, 51820, [peer])
    assert "AllowedIPs = 10.0.1.0/26, 192.0.2.2/32" in text and "ListenPort = 51820" in text
    dump = (f"{KEY_A}\t{KEY_A}\t51820\toff\n"
            f"{KEY_B}\t(none)\t192.0.2.2:51820\t10.0.1.0/26,192.0.2.2/32\t990\t100\t200\toff\n")
    shown = wg.parse_dump(dump, now=1000)
    assert shown["listenPort"] == 51820
    assert shown["peers"] == [{"publicKey": KEY_B, "endpoint": "192.0.2.2:51820",
                               "allowedIPs": ["10.0.1.0/26", "192.0.2.2/32"], "latestHandshake": 10,
                               "rxBytes": 100, "txBytes": 200}]


def test_our_rule_as_pyroute2_reads_it():
    message = rtnl.add_rule(rtnl.Rule(99, 201, 201))
    msg = fibmsg(message)
    msg.decode()
    assert (msg["action"], msg.get_attr("FRA_PRIORITY"), msg.get_attr("FRA_TABLE"),
            msg.get_attr("FRA_PROTOCOL")) == (1, 99, 201, 201)


def _kernel_rule(*attrs: tuple[int, bytes]) -> memoryview:
    """An RTM_NEWRULE payload as a dump returns it: header, then attributes."""
    import socket
    body = rtnl.RTMSG.pack(socket.AF_INET, 0, 0, 0, 201, 0, 0, rtnl.FR_ACT_TO_TBL, 0)
    return memoryview(body + b"".join(rtnl.pack_attr(kind, value) for kind, value in attrs))


def test_our_rule_is_recognised_as_debians_kernel_dumps_it():
    """Linux 6.1 (Debian 12) dumps FRA_SUPPRESS_PREFIXLEN = -1 (unset) with every rule: still
    our rule (else cleanup never finds it to delete). A set suppress_prefixlength (wg-quick's
    `lookup main suppress_prefixlength 0`) is someone else's rule."""
    ours = [(rtnl.FRA_TABLE, rtnl.U32.pack(201)), (rtnl.FRA_PRIORITY, rtnl.U32.pack(99)),
            (rtnl.FRA_PROTOCOL, bytes([201]))]
    unset = rtnl.U32.pack(0xFFFFFFFF)
    assert rtnl.parse_rule(_kernel_rule(*ours)) == rtnl.Rule(99, 201, 201)
    assert rtnl.parse_rule(_kernel_rule(*ours, (rtnl.FRA_SUPPRESS_PREFIXLEN, unset),
                                        (rtnl.FRA_SUPPRESS_IFGROUP, unset))) == rtnl.Rule(99, 201, 201)
    assert rtnl.parse_rule(_kernel_rule(*ours, (rtnl.FRA_SUPPRESS_PREFIXLEN, rtnl.U32.pack(0)))) is None


def test_the_ingress_filter_drops_clear_pod_traffic_to_local_pods_only():
    script = wg.ingress_filter(["10.0.1.0/26", "10.0.9.3/32", "fd00:1::/122"], ["10.0.0.0/16", "fd00:1::/48"])
    lines = [line.strip() for line in script.splitlines()]
    # One transaction replacing only our table.
    assert lines[:3] == ["table inet routed-wireguard", "delete table inet routed-wireguard",
                         "table inet routed-wireguard {"]
    assert "set local4 { type ipv4_addr; flags interval; auto-merge; elements = { 10.0.1.0/26, 10.0.9.3/32 } }" in lines
    assert "set pools6 { type ipv6_addr; flags interval; auto-merge; elements = { fd00:1::/48 } }" in lines
    chain = lines[lines.index("chain ingress {") + 1:]
    assert chain[:3] == ["type filter hook forward priority filter - 10; policy accept;",
                         'iifname "wg.routed" accept', 'iifname "cali*" accept']
    assert chain[3:5] == ["ip daddr @local4 ip saddr @pools4 counter drop",
                          "ip6 daddr @local6 ip6 saddr @pools6 counter drop"]
    # A family without local pods (or pools) gets no rule and no empty set.
    v4_only = wg.ingress_filter(["10.0.1.0/26"], ["10.0.0.0/16", "fd00:1::/48"])
    assert "ip6" not in v4_only and "pools6" not in v4_only
