"""The pod dataplane against the real kernel, inside throw-away network namespaces."""

from __future__ import annotations

import ipaddress
import os
import statistics
import subprocess
import sys
import time

import pytest

from routed.agent.podnet import HostDataplane
from routed.dataplane import ROUTE_PROTO, bulk
from routed.dataplane.constants import HOST_VETH_MAC, POD_GATEWAY_V4, POD_GATEWAY_V6
from routed.dataplane.errors import InterfaceExists, NetnsNotFound, RouteConflict
from routed.dataplane.netns import in_netns
from routed.dataplane.rtnl import Route, Rtnl
from routed.dataplane import pod as podmod
from routed.dataplane.pod import (
    check_pod,
    delete_link,
    detach_pod,
    host_veth_name,
    host_veth_name_for_container,
    setup_pod,
    teardown_pod,
)
from routed.dataplane.sysctl import get_sysctls, set_sysctls
from tests.netns.nsutil import (
    HOST_V4,
    airgapped_host,  # noqa: F401  (fixture)
    HOST_V6,
    host,  # noqa: F401  (fixture)
    ip,
    ip_json,
    links,
    netns,  # noqa: F401  (fixture)
    nsexec,
    ping,
    read_sysctl,
    routes,
    wait_until,
)

pytestmark = pytest.mark.root


def _pod(host, netns, name, ips, mtu=1500, ifname="eth0"):
    """A fresh pod netns with setup_pod done; returns (netns name, path, PodInterface)."""
    ns = netns("pod")
    path = netns.path(ns)
    pi = setup_pod(host.name, path, ifname, host_veth_name("rt-test", name), ips, mtu=mtu)
    return ns, path, pi


def _our_routes(ns: str, *family: str) -> list[dict]:
    # Filtered here rather than with "proto 201": ip -j then leaves "protocol" out.
    return [r for r in ip_json(ns, *family, "route", "show") if r.get("protocol") == str(ROUTE_PROTO)]


def _cali_links(ns: str) -> list[str]:
    return [n for n in links(ns) if n.startswith("cali")]


# --------------------------------------------------------------------------- names


def test_host_veth_names_are_calico_names():
    assert host_veth_name("default", "nginx") == "calic440f455693"
    assert host_veth_name_for_container("abc123") == "cali6367c48dd19"
    assert len(host_veth_name("a-very-long-namespace", "a-very-long-pod-name-0123456789")) == 15


# --------------------------------------------------------------------------- setup


def test_setup_pod_ipv4(host, netns):
    ns, path, pi = _pod(host, netns, "v4", ["10.20.0.5/26"], mtu=1440)
    hname = pi.host_ifname

    # Pod side: /32 only, our MAC, MTU, up, lo up, the two routes.
    pod_links = links(ns)
    eth0 = pod_links["eth0"]
    assert eth0["address"] == pi.mac
    assert eth0["mtu"] == 1440
    assert "UP" in eth0["flags"]
    assert "UP" in pod_links["lo"]["flags"]
    addrs = ip_json(ns, "-4", "addr", "show", "dev", "eth0")[0]["addr_info"]
    assert [(a["local"], a["prefixlen"]) for a in addrs] == [("10.20.0.5", 32)]
    pod_routes = {(r["dst"], r.get("gateway"), r.get("scope")): r for r in routes(ns)}
    link_route = pod_routes[(POD_GATEWAY_V4, None, "link")]
    assert link_route["dev"] == "eth0"
    default = pod_routes[("default", POD_GATEWAY_V4, None)]
    assert default["dev"] == "eth0" and "onlink" in default["flags"]

    # Host side: fixed MAC, MTU, up, the peer of eth0, the /32 route with our proto.
    hl = links(host.name)[hname]
    assert hl["address"] == HOST_VETH_MAC == pi.host_mac
    assert hl["mtu"] == 1440
    assert "UP" in hl["flags"]
    assert hl["link_netnsid"] is not None
    [hr] = _our_routes(host.name)
    assert (hr["dst"], hr["dev"], hr["scope"], hr["protocol"]) == ("10.20.0.5", hname, "link", str(ROUTE_PROTO))

    # Sysctls of that interface, read in the host netns.
    assert read_sysctl(host.name, f"net/ipv4/conf/{hname}/proxy_arp") == "1"
    assert read_sysctl(host.name, f"net/ipv4/neigh/{hname}/proxy_delay") == "0"
    assert read_sysctl(host.name, f"net/ipv4/conf/{hname}/forwarding") == "1"

    assert pi.ips == [ipaddress.ip_interface("10.20.0.5/32")]
    assert pi.sandbox == path
    assert check_pod(host.name, path, "eth0", hname, ["10.20.0.5"], mtu=1440) == []


def test_two_pods_ping_each_other_and_the_host(host, netns):
    a, _, _ = _pod(host, netns, "a", ["10.20.0.1"])
    b, _, _ = _pod(host, netns, "b", ["10.20.0.2"])
    assert ping(a, "10.20.0.2")
    assert ping(b, "10.20.0.1")
    assert ping(a, HOST_V4)
    assert ping(b, HOST_V4)
    # The pods reached each other through the host: their gateway resolved (proxy ARP)
    # to the host veth's MAC.
    neigh = ip_json(a, "neigh", "show", POD_GATEWAY_V4)
    assert neigh and neigh[0]["lladdr"] == HOST_VETH_MAC


def test_pods_work_on_a_node_without_a_default_route(airgapped_host, netns):
    host = airgapped_host
    assert routes(host.name, "default") == [] and ip_json(host.name, "-6", "route", "show", "default") == []
    a, _, _ = _pod(host, netns, "ga", ["10.20.16.1", "fd00:20:16::1"])
    b, _, _ = _pod(host, netns, "gb", ["10.20.16.2", "fd00:20:16::2"])
    assert ping(a, "10.20.16.2")
    assert ping(b, "10.20.16.1")
    assert ping(a, HOST_V4)
    assert ping(b, HOST_V4)
    assert ping(a, "fd00:20:16::2")
    assert ping(a, HOST_V6)
    # The gateway resolves without proxy ARP: a permanent entry written at ADD.
    [neigh] = ip_json(a, "neigh", "show", POD_GATEWAY_V4)
    assert neigh["lladdr"] == HOST_VETH_MAC and "PERMANENT" in neigh["state"]


def test_dual_stack_pods(host, netns):
    a, path_a, pa = _pod(host, netns, "a6", ["10.20.1.1", "fd00:20::1"])
    # b's sandbox comes with IPv6 disabled, as Docker-style runtimes make them.
    b = netns("pod")
    nsexec(b, "sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1")
    nsexec(b, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1")
    setup_pod(host.name, netns.path(b), "eth0", host_veth_name("rt-test", "b6"),
              ["10.20.1.2/26", "fd00:20::2/122"])
    ha = pa.host_ifname

    addrs = ip_json(a, "-6", "addr", "show", "dev", "eth0", "scope", "global")[0]["addr_info"]
    # (ip -j leaves an empty {} for each address its scope filter dropped)
    assert [(x["local"], x["prefixlen"]) for x in addrs if x] == [("fd00:20::1", 128)]
    [d6] = ip_json(a, "-6", "route", "show", "default")
    assert (d6["gateway"], d6["dev"]) == (POD_GATEWAY_V6, "eth0")
    host6 = [r for r in _our_routes(host.name, "-6") if r["dev"] == ha]
    assert [r["dst"] for r in host6] == ["fd00:20::1"]
    assert read_sysctl(host.name, f"net/ipv6/conf/{ha}/proxy_ndp") == "1"
    assert read_sysctl(host.name, f"net/ipv6/conf/{ha}/forwarding") == "1"
    assert read_sysctl(host.name, f"net/ipv6/conf/{ha}/accept_dad") == "0"

    assert ping(a, "fd00:20::2")
    assert ping(b, "fd00:20::1")
    assert ping(a, HOST_V6)
    assert ping(a, "10.20.1.2")
    assert check_pod(host.name, path_a, "eth0", ha, ["10.20.1.1", "fd00:20::1"]) == []


def test_pod_netns_given_as_proc_path(host, netns):
    ns = netns("pod")
    holder = subprocess.Popen(["ip", "netns", "exec", ns, "sleep", "60"])
    try:
        path = f"/proc/{holder.pid}/ns/net"
        assert wait_until(lambda: os.stat(path).st_ino == os.stat(netns.path(ns)).st_ino)
        hname = host_veth_name("rt-test", "proc")
        setup_pod(host.name, path, "eth0", hname, ["10.20.2.1"])
        assert "eth0" in links(ns)
        assert check_pod(host.name, path, "eth0", hname, ["10.20.2.1"]) == []
        teardown_pod(host.name, path, hname)
        assert hname not in links(host.name)
    finally:
        holder.kill()
        holder.wait()


def test_missing_netns_raises_and_creates_nothing(host):
    path = "/var/run/netns/rt-missing" + os.urandom(4).hex()
    with pytest.raises(NetnsNotFound):
        setup_pod(host.name, path, "eth0", host_veth_name("rt-test", "x"), ["10.20.3.1"])
    assert not os.path.exists(path)
    assert _cali_links(host.name) == []


def test_existing_ifname_is_an_error_and_left_alone(host, netns):
    ns = netns("pod")
    ip(ns, "link", "add", "eth0", "type", "veth", "peer", "name", "other0")
    ip(ns, "addr", "add", "192.168.77.1/24", "dev", "eth0")
    nsexec(ns, "sysctl", "-qw", "net.ipv6.conf.eth0.disable_ipv6=1")
    before = (ip_json(ns, "addr", "show"), routes(ns), read_sysctl(ns, "net/ipv6/conf/eth0/disable_ipv6"))
    with pytest.raises(InterfaceExists):
        setup_pod(host.name, netns.path(ns), "eth0", host_veth_name("rt-test", "dup"),
                  ["10.20.4.1", "fd00:20:4::1"])
    assert (ip_json(ns, "addr", "show"), routes(ns), read_sysctl(ns, "net/ipv6/conf/eth0/disable_ipv6")) == before
    assert _cali_links(host.name) == []
    assert _our_routes(host.name) == []


def test_stale_host_veth_of_the_same_pod_is_replaced(host, netns):
    hname = host_veth_name("rt-test", "stale")
    ip(host.name, "link", "add", hname, "type", "veth", "peer", "name", "leftover0")
    ns = netns("pod")
    setup_pod(host.name, netns.path(ns), "eth0", hname, ["10.20.5.1"])
    hl = links(host.name)
    assert "leftover0" not in hl and hl[hname]["address"] == HOST_VETH_MAC
    assert "eth0" in links(ns)


# --------------------------------------------------------------------------- rollback


def test_route_conflict_rolls_back_everything(host, netns):
    # Someone else routes the address already: a real, late failure (after the pod side
    # was configured), no mock involved.
    ip(host.name, "route", "add", "10.20.6.1/32", "dev", "uplink0", "proto", "static")
    ns = netns("pod")
    with pytest.raises(RouteConflict, match="uplink0"):
        setup_pod(host.name, netns.path(ns), "eth0", host_veth_name("rt-test", "rc"),
                  ["10.20.6.2", "10.20.6.1"])
    assert _cali_links(host.name) == []
    assert "eth0" not in links(ns)
    assert _our_routes(host.name) == []
    assert [r["dst"] for r in routes(host.name, "proto", "static")] == ["10.20.6.1"]


def test_failure_after_host_routes_rolls_back_everything(host, netns, monkeypatch):
    real = podmod._add_host_routes

    def add_then_fail(*args, **kwargs):
        real(*args, **kwargs)
        # the routes really were there
        assert len(_our_routes(host.name)) == 1 and len(_our_routes(host.name, "-6")) == 1
        raise RuntimeError("injected failure")

    monkeypatch.setattr(podmod, "_add_host_routes", add_then_fail)
    ns = netns("pod")
    with pytest.raises(RuntimeError, match="injected"):
        setup_pod(host.name, netns.path(ns), "eth0", host_veth_name("rt-test", "inj"),
                  ["10.20.7.1", "fd00:20:7::1"])
    assert _cali_links(host.name) == []
    assert "eth0" not in links(ns)
    assert _our_routes(host.name) == [] and _our_routes(host.name, "-6") == []


# --------------------------------------------------------------------------- teardown


def test_teardown_removes_everything_and_is_idempotent(host, netns):
    ns, path, pi = _pod(host, netns, "td", ["10.20.8.1", "fd00:20:8::1"])
    for _ in range(2):
        teardown_pod(host.name, path, pi.host_ifname, pi.ips)
        assert _cali_links(host.name) == []
        assert "eth0" not in links(ns)
        assert _our_routes(host.name) == [] and _our_routes(host.name, "-6") == []
    # containerd's second DEL: no netns at all.
    teardown_pod(host.name, "", pi.host_ifname)
    teardown_pod(host.name, None, pi.host_ifname, pi.ips)


def test_teardown_with_netns_path_gone(host, netns):
    # The path is unmounted but the netns lives on (a process still holds it): only the
    # addresses tell the veth is ours, and it is deleted.
    ns, path, pi = _pod(host, netns, "gone", ["10.20.9.1"])
    holder = subprocess.Popen(["ip", "netns", "exec", ns, "sleep", "60"])
    try:
        assert wait_until(lambda: os.path.exists(f"/proc/{holder.pid}/ns/net")
                          and os.stat(f"/proc/{holder.pid}/ns/net").st_ino == os.stat(path).st_ino)
        subprocess.run(["ip", "netns", "del", ns], check=True)
        assert not os.path.exists(path)
        teardown_pod(host.name, path, pi.host_ifname, pi.ips)
        assert _cali_links(host.name) == []
        assert _our_routes(host.name) == []
        teardown_pod(host.name, path, pi.host_ifname, pi.ips)
    finally:
        holder.kill()
        holder.wait()


def test_teardown_after_netns_destroyed(host, netns):
    ns, path, pi = _pod(host, netns, "dead", ["10.20.10.1"])
    subprocess.run(["ip", "netns", "del", ns], check=True)  # the kernel destroys the veth
    teardown_pod(host.name, path, pi.host_ifname, pi.ips)
    teardown_pod(host.name, path, pi.host_ifname)
    assert wait_until(lambda: _cali_links(host.name) == [] and _our_routes(host.name) == [])


def test_teardown_with_empty_path_uses_the_addresses(host, netns):
    ns, path, pi = _pod(host, netns, "empty", ["10.20.11.1"])
    teardown_pod(host.name, "", pi.host_ifname, ["10.20.11.1/26"])
    assert _cali_links(host.name) == [] and _our_routes(host.name) == []
    assert "eth0" not in links(ns)


def test_teardown_never_deletes_another_sandboxs_veth(host, netns):
    # A late DEL for an old sandbox of the same pod (same host veth name) must not cut
    # off the new sandbox.
    ns, path, pi = _pod(host, netns, "same-pod", ["10.20.12.2"])
    old = netns("old")
    teardown_pod(host.name, netns.path(old), pi.host_ifname, ["10.20.12.1"])
    teardown_pod(host.name, "", pi.host_ifname, ["10.20.12.1"])
    teardown_pod(host.name, None, pi.host_ifname)
    assert pi.host_ifname in links(host.name)
    assert check_pod(host.name, path, "eth0", pi.host_ifname, pi.ips) == []


def test_detach_frees_the_addresses_at_once_and_delete_link_finishes(host, netns):
    # The agent's split DEL: the host routes go
    # first, so the address can serve a new pod while the old veth still exists.
    ns, path, pi = _pod(host, netns, "split", ["10.20.14.1", "fd00:20:14::1"])
    index = detach_pod(host.name, path, pi.host_ifname, pi.ips)
    assert index == links(host.name)[pi.host_ifname]["ifindex"]
    assert _our_routes(host.name) == [] and _our_routes(host.name, "-6") == []
    assert "eth0" in links(ns)

    ns2 = netns("pod")
    other = host_veth_name("rt-test", "split2")
    setup_pod(host.name, netns.path(ns2), "eth0", other, ["10.20.14.1", "fd00:20:14::1"])
    assert {r["dev"] for r in _our_routes(host.name)} == {other}

    # Nothing left to detach of the first sandbox but its veth; a second detach finds
    # it again (idempotent), and another sandbox's DEL finds nothing of its own.
    assert detach_pod(host.name, path, pi.host_ifname, pi.ips) == index
    assert detach_pod(host.name, netns.path(ns2), pi.host_ifname) is None

    # delete_link acts in the netns it is given, whatever netns the calling thread is
    # in (here: the real host's, which it must not touch).
    delete_link(host.name, index, "cali-not-this")  # the index names another link now
    assert pi.host_ifname in links(host.name)
    delete_link(host.name, index, pi.host_ifname)
    assert pi.host_ifname not in links(host.name) and "eth0" not in links(ns)
    delete_link(host.name, index, pi.host_ifname)  # gone already: fine
    with in_netns(host.name):
        delete_link(None, index, pi.host_ifname)  # None: the calling thread's netns
    assert check_pod(host.name, netns.path(ns2), "eth0", other, ["10.20.14.1", "fd00:20:14::1"]) == []


def test_detach_of_an_old_sandbox_leaves_the_new_one_alone(host, netns):
    ns, path, pi = _pod(host, netns, "keep", ["10.20.15.2"])
    old = netns("old")
    assert detach_pod(host.name, netns.path(old), pi.host_ifname, ["10.20.15.1"]) is None
    assert detach_pod(host.name, "", pi.host_ifname, ["10.20.15.1"]) is None
    assert [r["dst"] for r in _our_routes(host.name)] == ["10.20.15.2"]
    assert check_pod(host.name, path, "eth0", pi.host_ifname, pi.ips) == []


def test_pod_dataplane_does_not_import_pyroute2():
    # Importing pyroute2 costs 200-300 ms; the CNI path does not need it any more.
    code = "import sys, routed.dataplane.pod; assert 'pyroute2' not in sys.modules, 'imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


# --------------------------------------------------------------------------- check


def test_check_pod_reports_drift(host, netns):
    ns, path, pi = _pod(host, netns, "drift", ["10.20.13.1", "fd00:20:13::1"], mtu=1400)
    args = (host.name, path, "eth0", pi.host_ifname, pi.ips)
    assert check_pod(*args, mtu=1400) == []

    ip(ns, "addr", "del", "10.20.13.1/32", "dev", "eth0")
    ip(ns, "addr", "add", "10.20.13.9/32", "dev", "eth0")
    ip(ns, "-6", "route", "del", "default")
    ip(host.name, "route", "del", "10.20.13.1/32")
    ip(ns, "neigh", "flush", "dev", "eth0", "nud", "permanent")
    nsexec(host.name, "sysctl", "-qw", f"net.ipv4.conf.{pi.host_ifname}.proxy_arp=0")
    diffs = check_pod(*args, mtu=1500)
    text = "\n".join(diffs)
    assert "lacks address 10.20.13.1/32" in text
    assert "unexpected address 10.20.13.9/32" in text
    assert f"default route via {POD_GATEWAY_V6}" in text
    assert "host route 10.20.13.1/32" in text
    assert "proxy_arp is 0" in text
    assert "MTU 1400, expected 1500" in text
    assert f"permanent neighbour {POD_GATEWAY_V4}" in text
    assert "fd00:20:13::1" not in text  # what is still right is not reported

    teardown_pod(host.name, path, pi.host_ifname)
    diffs = check_pod(*args)
    assert any("host veth" in d and "missing" in d for d in diffs)
    assert any("eth0 in" in d and "missing" in d for d in diffs)
    assert any("No such file" in d for d in check_pod(host.name, path + "-x", "eth0", pi.host_ifname, pi.ips))


# --------------------------------------------------------------------------- routes


def test_sync_blackholes_touches_only_its_own_routes(host, netns):
    # The agent's blackhole sync is the bulk sync, limited to proto-201 blackholes.
    ip(host.name, "route", "add", "blackhole", "10.50.0.0/26", "proto", "static")
    ip(host.name, "-6", "route", "add", "blackhole", "fd00:50::/122", "proto", "static")
    _pod(host, netns, "bh", ["10.60.0.5"])  # a proto-201 route of another type
    dataplane = HostDataplane(host.name)

    added, removed = dataplane.sync_blackholes({"10.60.0.0/26", "10.60.0.64/26", "fd00:60::/122"})
    assert added == {"10.60.0.0/26", "10.60.0.64/26", "fd00:60::/122"} and removed == set()
    ours = bulk.current(host.name, ROUTE_PROTO, kind="blackhole")
    assert ours == {Route(c, kind="blackhole", proto=ROUTE_PROTO) for c in added}
    bh4 = {r["dst"]: r["protocol"] for r in routes(host.name, "type", "blackhole")}
    assert bh4 == {"10.50.0.0/26": "static", "10.60.0.0/26": str(ROUTE_PROTO), "10.60.0.64/26": str(ROUTE_PROTO)}

    assert dataplane.sync_blackholes({"10.60.0.0/26", "10.60.0.64/26", "fd00:60::/122"}) == (set(), set())
    assert dataplane.sync_blackholes({"10.60.0.0/26"}) == (set(), {"10.60.0.64/26", "fd00:60::/122"})
    assert dataplane.sync_blackholes(set()) == (set(), {"10.60.0.0/26"})

    # Foreign blackholes and our pod route survive every sync.
    assert [r["dst"] for r in routes(host.name, "type", "blackhole")] == ["10.50.0.0/26"]
    assert [r["dst"] for r in ip_json(host.name, "-6", "route", "show", "type", "blackhole")] == ["fd00:50::/122"]
    assert [r["dst"] for r in _our_routes(host.name)] == ["10.60.0.5"]
    assert [r.dst for r in bulk.current(host.name, ROUTE_PROTO)] == ["10.60.0.5/32"]


def test_a_blackhole_never_replaces_a_pod_route(host, netns):
    # A /32 block whose one address is a pod's: the pod's route (same proto, another
    # kind) belongs to the pod, not to the blackhole sync; replacing it would cut the
    # pod off.
    ns, _, pi = _pod(host, netns, "bh32", ["10.60.1.7"])
    added, removed = HostDataplane(host.name).sync_blackholes({"10.60.1.7/32", "10.60.1.8/32"})
    assert (added, removed) == ({"10.60.1.8/32"}, set())
    assert [r["dst"] for r in _our_routes(host.name) if r.get("dev") == pi.host_ifname] == ["10.60.1.7"]
    assert ping(ns, HOST_V4)


# --------------------------------------------------------------------------- netns, sysctl


def test_in_netns_switches_the_thread_and_always_returns(netns):
    ns = netns("x")
    home = os.readlink("/proc/thread-self/ns/net")
    with in_netns(ns):
        assert os.stat("/proc/thread-self/ns/net").st_ino == os.stat(netns.path(ns)).st_ino
    assert os.readlink("/proc/thread-self/ns/net") == home
    with pytest.raises(ZeroDivisionError):
        with in_netns(netns.path(ns)):
            1 / 0
    assert os.readlink("/proc/thread-self/ns/net") == home
    with pytest.raises(FileNotFoundError):
        with in_netns("rt-no-such-netns"):
            pass
    assert os.readlink("/proc/thread-self/ns/net") == home


def test_sysctls_are_per_netns(netns):
    ns = netns("sys")
    with open("/proc/sys/net/ipv4/ip_forward") as f:
        real = f.read()  # only read: the real host's sysctls are never written
    set_sysctls(ns, {"net/ipv4/ip_forward": "1", "net.ipv4.conf.lo.accept_local": "1"})
    assert read_sysctl(ns, "net/ipv4/ip_forward") == "1"
    assert read_sysctl(ns, "net/ipv4/conf/lo/accept_local") == "1"
    assert get_sysctls(ns, ["net/ipv4/ip_forward", "net/ipv4/conf/nope0/forwarding"]) == {
        "net/ipv4/ip_forward": "1", "net/ipv4/conf/nope0/forwarding": None}
    with open("/proc/sys/net/ipv4/ip_forward") as f:
        assert f.read() == real


def test_a_socket_in_a_missing_netns_never_creates_it():
    name = "rt-missing" + os.urandom(4).hex()
    with pytest.raises(NetnsNotFound):
        Rtnl(name)
    assert not os.path.exists(f"/var/run/netns/{name}")


# --------------------------------------------------------------------------- speed


@pytest.mark.slow
def test_measure_setup_and_teardown(host, netns):
    """Not a timed assertion: prints the median cost per pod (run with -s)."""
    ns = netns("bench")
    path = netns.path(ns)
    hname = host_veth_name("rt-test", "bench")
    setups, teardowns = [], []
    for i in range(100):
        ipaddr = f"10.30.{i // 250}.{i % 250 + 1}"
        t0 = time.perf_counter()
        setup_pod(host.name, path, "eth0", hname, [ipaddr])
        t1 = time.perf_counter()
        teardown_pod(host.name, path, hname, [ipaddr])
        t2 = time.perf_counter()
        setups.append((t1 - t0) * 1000)
        teardowns.append((t2 - t1) * 1000)
    total = [s + t for s, t in zip(setups, teardowns)]
    print(
        f"\n100 pods: median setup {statistics.median(setups):.2f} ms, "
        f"teardown {statistics.median(teardowns):.2f} ms, "
        f"setup+teardown {statistics.median(total):.2f} ms per pod"
    )
    assert _cali_links(host.name) == [] and _our_routes(host.name) == []
