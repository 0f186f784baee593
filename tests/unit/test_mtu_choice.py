"""The MTU choice (routed/dataplane/mtu.py): pure, no root."""

from __future__ import annotations

import pytest

from routed import resources as r
from routed.dataplane import mtu


def pool(name, cidr, **spec):
    return r.parse({"apiVersion": "routed.io/v1", "kind": "IPPool", "metadata": {"name": name},
                    "spec": {"cidr": cidr, **spec}})


@pytest.mark.parametrize("encapsulation, family, overhead", [
    ("vxlan", 4, 50), ("vxlan", 6, 70), ("ipip", 4, 20), ("wireguard", 4, 60), ("wireguard", 6, 80)])
def test_overhead_table(encapsulation, family, overhead):
    assert mtu.tunnel_mtu(9000, encapsulation, family) == 9000 - overhead
    assert mtu.tunnel_mtu(1500, encapsulation, family) == 1500 - overhead


def test_ipip_has_no_ipv6_underlay():
    with pytest.raises(ValueError, match="no ipip over IPv6"):
        mtu.tunnel_mtu(1500, "ipip", 6)


def test_a_tiny_uplink_is_refused_not_given_to_pods():
    with pytest.raises(ValueError, match="below the minimum 576"):
        mtu.tunnel_mtu(600, "vxlan")


@pytest.mark.parametrize("uplink, used, pod", [
    (9000, {"vxlan"}, 8950), (1400, {"vxlan"}, 1350), (1500, {"ipip"}, 1480),
    (1500, {"ipip", "vxlan"}, 1450),  # a pod's packet may take either: the smaller fits both
    (9000, set(), 9000),  # no encapsulation: the uplink's own
])
def test_pods_get_the_uplink_less_the_largest_overhead_in_use(uplink, used, pod):
    chosen = mtu.choose(uplink, used)
    assert (chosen.pod, chosen.source, chosen.uplink) == (pod, "derived", uplink)
    assert (chosen.vxlan, chosen.ipip, chosen.wireguard) == (uplink - 50, uplink - 20, uplink - 60)


def test_an_explicit_mtu_wins_for_pods_and_tunnels_still_follow_the_uplink():
    chosen = mtu.choose(9000, {"vxlan"}, explicit=1400)
    assert (chosen.pod, chosen.source, chosen.vxlan) == (1400, "explicit", 8950)


def test_an_unreadable_uplink_counts_as_ethernet():
    assert mtu.choose(None, {"vxlan"}).pod == 1450


def test_ipv6_underlay():
    chosen = mtu.choose(1500, {"vxlan"}, family=6)
    assert (chosen.pod, chosen.vxlan, chosen.wireguard) == (1430, 1430, 1420)


def test_pool_encapsulations_skip_never_and_disabled_pools():
    pools = [pool("a", "10.1.0.0/16", vxlanMode="CrossSubnet"), pool("b", "10.2.0.0/16"),
             pool("c", "10.3.0.0/16", ipipMode="Always", disabled=True)]
    assert mtu.pool_encapsulations(pools) == {"vxlan"}
    assert mtu.pool_encapsulations(pools[1:]) == set()
    assert mtu.pool_encapsulations([pool("d", "10.4.0.0/16", ipipMode="Always")]) == {"ipip"}


def test_as_dict_is_what_node_status_shows():
    assert mtu.choose(1400, {"vxlan"}).as_dict() == {
        "uplink": 1400, "pod": 1350, "source": "derived", "encapsulations": ["vxlan"],
        "tunnels": {"vxlan": 1350, "ipip": 1380, "wireguard": 1340}}
