"""routed.dataplane.bulk against the real kernel, inside throw-away network namespaces.

Every check reads the kernel's routes back with ``ip -j route`` (iproute2, not our own
parser), except where ``current`` itself is under test.
"""

from __future__ import annotations

import ipaddress
import socket

import pytest

from routed.dataplane import bulk
from routed.dataplane import rtnl as codec
from routed.dataplane.rtnl import Route, Rtnl
from routed.dataplane.constants import ROUTE_PROTO, ROUTE_PROTO_BGP
from routed.dataplane.errors import NetnsNotFound
from tests.netns.nsutil import ip as ip_run, ip_json, require_root
from tests.support.netns import Netns

pytestmark = pytest.mark.root

GW = "192.0.2.9"
GW2 = "192.0.2.10"
GW6 = "fd00:2::9"


@pytest.fixture
def ns():
    """A node netns with veth0 (192.0.2.1/24, fd00:2::1/64) whose peer sits in a second
    netns holding the gateways' addresses, so "via 192.0.2.9" is a connected next hop."""
    require_root()
    node, gw = Netns("bulk"), Netns("bulkgw")
    try:
        node.run("ip", "link", "add", "veth0", "type", "veth", "peer", "name", "veth1", "netns", gw.name)
        node.run("ip", "addr", "add", "192.0.2.1/24", "dev", "veth0")
        node.run("ip", "addr", "add", "fd00:2::1/64", "dev", "veth0", "nodad")
        node.run("ip", "link", "set", "veth0", "up")
        gw.run("ip", "addr", "add", f"{GW}/24", "dev", "veth1")
        gw.run("ip", "addr", "add", f"{GW2}/24", "dev", "veth1")
        gw.run("ip", "link", "set", "veth1", "up")
        yield node.name
    finally:
        node.delete()
        gw.delete()


def blocks(n: int, base: str = "10.64.0.0/10", size: int = 26) -> list[str]:
    out = []
    for i, net in enumerate(ipaddress.ip_network(base).subnets(new_prefix=size)):
        if i == n:
            break
        out.append(str(net))
    return out


def kernel(ns: str, *args: str, proto: int = ROUTE_PROTO_BGP) -> dict[str, dict]:
    """dst -> route, as iproute2 shows the routes of ``proto`` in the main table.
    (Filtered here, not with "proto N": ip -j then leaves "protocol" out.)"""
    out = {}
    for r in ip_json(ns, *args, "route", "show"):
        if r.get("protocol") == str(proto):
            assert r["dst"] not in out, f"two routes to {r['dst']}"
            out[r["dst"]] = r
    return out


# --------------------------------------------------------------------------- pure parts


def test_route_is_normalised_and_validated():
    assert Route("fd00:0:0::/64", gateway="FD00::0009").dst == "fd00::/64"
    assert Route("fd00:0:0::/64", gateway="FD00::0009").gateway == "fd00::9"
    assert Route("10.1.0.0/26", gateway="192.0.2.9") == Route("10.1.0.0/26", "192.0.2.9")
    assert str(Route("10.1.0.0/26", "192.0.2.9", "vxlan.routed", onlink=True)) == \
        "10.1.0.0/26 via 192.0.2.9 dev vxlan.routed onlink"
    assert str(Route("10.1.0.0/26", kind="blackhole")) == "blackhole 10.1.0.0/26"
    for bad in (
        lambda: Route("10.1.0.5/26", gateway=GW),  # host bits
        lambda: Route("10.1.0.0/33", gateway=GW),
        lambda: Route("10.1.0.0/26", gateway=GW6),  # mixed families
        lambda: Route("10.1.0.0/26"),  # unicast with no next hop
        lambda: Route("10.1.0.0/26", gateway=GW, kind="blackhole"),
        lambda: Route("10.1.0.0/26", gateway=GW, kind="unreachable"),
        lambda: Route("not-a-cidr", gateway=GW),
    ):
        with pytest.raises(ValueError):
            bad()


def test_plan_sync_never_touches_other_protos():
    mine_same = Route("10.1.0.0/26", GW)
    mine_moved = Route("10.2.0.0/26", GW)
    mine_extra = Route("10.3.0.0/26", GW)
    static = Route("10.4.0.0/26", GW, proto=4)
    local = Route("10.5.0.0/26", kind="blackhole", proto=ROUTE_PROTO)
    kernel_routes = [mine_same, Route("10.2.0.0/26", GW2, "veth0"), mine_extra, static, local]
    desired = [Route("10.1.0.0/26", GW), mine_moved, Route("10.4.0.0/26", GW2), Route("10.6.0.0/26", GW)]
    replace, delete, refused = bulk.plan_sync(desired, kernel_routes, ROUTE_PROTO_BGP)
    assert replace == [mine_moved, Route("10.6.0.0/26", GW)]
    assert delete == [mine_extra]
    assert [r for r, _ in refused] == [Route("10.4.0.0/26", GW2)]
    assert "proto 4" in refused[0][1]
    with pytest.raises(ValueError):
        bulk.plan_sync([local], [], ROUTE_PROTO_BGP)


def test_plan_sync_of_one_kind_leaves_the_other_kinds_of_its_proto():
    # The block blackholes share proto 201 with the pods' /32 host routes: the
    # blackhole sync deletes only blackholes, and never replaces a pod's route.
    block = Route("10.7.0.0/26", kind="blackhole", proto=ROUTE_PROTO)
    gone = Route("10.7.0.64/26", kind="blackhole", proto=ROUTE_PROTO)
    pod = Route("10.7.0.5/32", dev="cali1", proto=ROUTE_PROTO)
    pod_block = Route("10.7.1.1/32", dev="cali2", proto=ROUTE_PROTO)  # a /32 block held by a pod
    want = [block, Route("10.7.0.128/26", kind="blackhole", proto=ROUTE_PROTO),
            Route("10.7.1.1/32", kind="blackhole", proto=ROUTE_PROTO)]
    replace, delete, refused = bulk.plan_sync(want, [block, gone, pod, pod_block], ROUTE_PROTO, "blackhole")
    assert replace == [Route("10.7.0.128/26", kind="blackhole", proto=ROUTE_PROTO)]
    assert delete == [gone]
    assert [r.dst for r, _ in refused] == ["10.7.1.1/32"] and "cali2" in refused[0][1]
    with pytest.raises(ValueError):  # a sync of blackholes takes only blackholes
        bulk.plan_sync([pod], [], ROUTE_PROTO, "blackhole")


def test_sync_of_blackholes_goes_through_the_bulk_path(ns):
    ip_run(ns, "route", "add", "10.8.0.5/32", "dev", "veth0", "proto", str(ROUTE_PROTO))
    want = {Route(dst, kind="blackhole", proto=ROUTE_PROTO) for dst in blocks(1500)}
    result = bulk.sync(ns, want, proto=ROUTE_PROTO, kind="blackhole")
    assert set(result.added) == want and result.removed == [] and result.failed == []
    assert bulk.current(ns, ROUTE_PROTO, kind="blackhole") == want
    result = bulk.sync(ns, [], proto=ROUTE_PROTO, kind="blackhole")
    assert set(result.removed) == want
    assert bulk.current(ns, ROUTE_PROTO) == {Route("10.8.0.5/32", dev="veth0", proto=ROUTE_PROTO)}


# --------------------------------------------------------------------------- apply


def test_5000_routes_land(ns):
    routes = [Route(dst, gateway=GW, dev="veth0") for dst in blocks(5000)]
    assert bulk.apply(ns, replace=routes) == []

    got = kernel(ns)
    assert len(got) == 5000
    for r in routes:
        k = got[r.dst]
        assert (k["gateway"], k["dev"], k.get("type", "unicast")) == (GW, "veth0", "unicast")
    assert bulk.current(ns) == set(routes)
    # Applying the same again changes nothing and fails nothing.
    assert bulk.apply(ns, replace=routes) == []
    assert len(kernel(ns)) == 5000


def test_replace_changes_the_gateway(ns):
    routes = [Route(dst, gateway=GW, dev="veth0") for dst in blocks(200)]
    assert bulk.apply(ns, replace=routes) == []
    moved = [Route(r.dst, gateway=GW2, dev="veth0") for r in routes[:50]]
    assert bulk.apply(ns, replace=moved) == []

    got = kernel(ns)
    assert len(got) == 200  # replaced, not added next to the old ones
    assert {got[r.dst]["gateway"] for r in routes[:50]} == {GW2}
    assert {got[r.dst]["gateway"] for r in routes[50:]} == {GW}


def test_delete_a_subset_and_again(ns):
    routes = [Route(dst, gateway=GW, dev="veth0") for dst in blocks(3000)]
    assert bulk.apply(ns, replace=routes) == []
    gone, kept = routes[:1000], routes[1000:]
    assert bulk.apply(ns, delete=gone) == []
    got = kernel(ns)
    assert set(got) == {r.dst for r in kept}
    # Deleting what is already gone is not a failure, and touches nothing else.
    assert bulk.apply(ns, delete=gone) == []
    assert set(kernel(ns)) == {r.dst for r in kept}


def test_delete_leaves_other_protos_alone(ns):
    """A delete names its proto: the kernel skips a route of another proto to the same
    destination (which counts as already gone)."""
    ip_run(ns, "route", "add", "10.70.0.0/26", "via", GW, "proto", "static")
    ip_run(ns, "route", "add", "blackhole", "10.71.0.0/26", "proto", str(ROUTE_PROTO))
    assert bulk.apply(ns, delete=[Route("10.70.0.0/26", GW), Route("10.71.0.0/26", kind="blackhole")]) == []
    assert "10.70.0.0/26" in kernel(ns, proto="static")
    assert "10.71.0.0/26" in kernel(ns, proto=ROUTE_PROTO)


def test_a_bad_route_fails_alone(ns):
    good = [Route(dst, gateway=GW, dev="veth0") for dst in blocks(400)]
    unreachable = Route("10.200.0.0/26", gateway="198.51.100.9")  # not on any connected subnet
    no_device = Route("10.201.0.0/26", gateway=GW, dev="nosuch0")
    batch = good[:200] + [unreachable] + good[200:300] + [no_device] + good[300:]

    failed = dict(bulk.apply(ns, replace=batch))

    assert set(failed) == {unreachable, no_device}
    assert failed[unreachable].startswith("10.200.0.0/26 via 198.51.100.9: Network is unreachable")
    assert failed[no_device] == "10.201.0.0/26 via 192.0.2.9 dev nosuch0: No such device"
    assert "\n" not in failed[unreachable]
    got = kernel(ns)
    assert set(got) == {r.dst for r in good}


def test_ipv6_routes(ns):
    routes = [Route(dst, gateway=GW6, dev="veth0") for dst in blocks(500, "fd10::/48", 64)]
    routes += [
        Route("fd20::/64", kind="blackhole"),
        Route("fd21::/64", gateway="fd99::1", dev="veth0", onlink=True),
    ]
    assert bulk.apply(ns, replace=routes) == []

    got = kernel(ns, "-6")
    assert len(got) == 502
    assert got["fd10::/64"]["gateway"] == GW6 and got["fd10::/64"]["dev"] == "veth0"
    assert got["fd20::/64"]["type"] == "blackhole"
    assert got["fd21::/64"]["gateway"] == "fd99::1" and "onlink" in got["fd21::/64"]["flags"]
    assert bulk.current(ns, family=socket.AF_INET6) == set(routes)
    assert bulk.current(ns, family=socket.AF_INET) == set()

    moved = [Route(r.dst, gateway="fd00:2::a", dev="veth0") for r in routes[:100]]
    assert bulk.apply(ns, replace=moved) == []
    got = kernel(ns, "-6")  # (kernel() asserts one route per destination)
    assert len(got) == 502 and {got[r.dst]["gateway"] for r in moved} == {"fd00:2::a"}

    assert bulk.apply(ns, delete=routes) == []
    assert kernel(ns, "-6") == {}
    assert bulk.apply(ns, delete=routes) == []


def test_blackhole_onlink_and_device_routes_v4(ns):
    routes = [
        Route("10.80.0.0/26", kind="blackhole"),
        Route("10.81.0.0/26", gateway="203.0.113.7", dev="veth0", onlink=True),  # not a connected subnet
        Route("10.82.0.0/26", dev="veth0"),  # no gateway: scope link
        Route("10.83.0.0/26", gateway=GW, dev="veth0", table=100),
    ]
    assert bulk.apply(ns, replace=routes) == []
    got = kernel(ns)
    assert got["10.80.0.0/26"]["type"] == "blackhole"
    assert got["10.81.0.0/26"]["gateway"] == "203.0.113.7" and "onlink" in got["10.81.0.0/26"]["flags"]
    assert got["10.82.0.0/26"]["scope"] == "link" and "gateway" not in got["10.82.0.0/26"]
    assert "10.83.0.0/26" not in got
    assert ip_json(ns, "route", "show", "table", "100")[0]["gateway"] == GW
    assert bulk.current(ns) == set(routes)


def test_lost_acks_are_recovered(ns, monkeypatch):
    """With a receive buffer far too small for a batch's acks the kernel drops acks
    (ENOBUFS); the unanswered requests are sent again and every route still lands."""
    monkeypatch.setattr(codec, "RCVBUF", 4096)
    routes = [Route(dst, gateway=GW, dev="veth0") for dst in blocks(2000)]
    bad = Route("10.200.0.0/26", gateway="198.51.100.9")
    with Rtnl(ns) as rtnl:
        failed = bulk.apply_with(rtnl, replace=routes + [bad])
        assert rtnl.resent > 0  # acks really were lost
    assert [r for r, _ in failed] == [bad]  # and errors still map to their route
    assert len(kernel(ns)) == 2000
    with Rtnl(ns) as rtnl:
        assert bulk.apply_with(rtnl, delete=routes) == []
        assert rtnl.resent > 0
    assert kernel(ns) == {}


def test_missing_netns_is_one_clear_error():
    require_root()
    with pytest.raises(NetnsNotFound, match="rt-no-such-netns"):
        bulk.apply("rt-no-such-netns", replace=[Route("10.1.0.0/26", kind="blackhole")])


# --------------------------------------------------------------------------- sync


def test_sync_only_removes_its_own_proto(ns):
    ip_run(ns, "route", "add", "blackhole", "10.90.0.0/26", "proto", str(ROUTE_PROTO))
    ip_run(ns, "route", "add", "10.91.0.0/24", "via", GW, "proto", "static")
    old = [Route(dst, gateway=GW, dev="veth0") for dst in blocks(1000)]
    assert bulk.apply(ns, replace=old) == []

    new = [Route(dst, gateway=GW2, dev="veth0") for dst in blocks(500)]  # same first 500, moved
    new += [Route(dst, gateway=GW) for dst in blocks(300, "10.128.0.0/16")]  # new ones, no dev
    result = bulk.sync(ns, new)

    assert result.failed == []
    assert set(result.added) == set(new)
    assert set(result.removed) == set(old[500:])
    got = kernel(ns)
    assert set(got) == {r.dst for r in new}
    assert {got[r.dst]["gateway"] for r in new[:500]} == {GW2}
    assert got[new[-1].dst]["dev"] == "veth0"  # the kernel chose the device
    # The node's own route (201) and the administrator's (static) are still there.
    assert "10.90.0.0/26" in kernel(ns, proto=ROUTE_PROTO)
    assert "10.91.0.0/24" in kernel(ns, proto="static")

    # Converged: a second sync finds nothing to do (a route without dev matches any dev).
    again = bulk.sync(ns, new)
    assert (again.added, again.removed, again.failed) == ([], [], [])

    # To empty: every 202 route goes, nothing else.
    empty = bulk.sync(ns, [])
    assert len(empty.removed) == 800
    assert kernel(ns) == {}
    assert "10.90.0.0/26" in kernel(ns, proto=ROUTE_PROTO)
    assert "10.91.0.0/24" in kernel(ns, proto="static")


def test_sync_refuses_to_replace_another_protos_route(ns):
    ip_run(ns, "route", "add", "blackhole", "10.90.0.0/26", "proto", str(ROUTE_PROTO))
    ip_run(ns, "route", "add", "10.91.0.0/24", "via", GW, "proto", "static")
    clash_local = Route("10.90.0.0/26", gateway=GW2)
    clash_static = Route("10.91.0.0/24", gateway=GW2)
    fine = Route("10.92.0.0/26", gateway=GW2)

    result = bulk.sync(ns, [clash_local, clash_static, fine])

    assert result.added == [fine]
    assert {r for r, _ in result.failed} == {clash_local, clash_static}
    reasons = dict(result.failed)
    assert "proto 201" in reasons[clash_local] and "not replacing" in reasons[clash_local]
    assert kernel(ns, proto=ROUTE_PROTO)["10.90.0.0/26"]["type"] == "blackhole"
    assert kernel(ns, proto="static")["10.91.0.0/24"]["gateway"] == GW
    assert set(kernel(ns)) == {"10.92.0.0/26"}


def test_sync_reports_a_bad_route_and_does_the_rest(ns):
    desired = [Route(dst, gateway=GW) for dst in blocks(100)] + [Route("10.200.0.0/26", gateway="198.51.100.9")]
    result = bulk.sync(ns, desired)
    assert [r for r, _ in result.failed] == [desired[-1]]
    assert "Network is unreachable" in result.failed[0][1]
    assert len(result.added) == 100
    assert set(kernel(ns)) == {r.dst for r in desired[:-1]}
