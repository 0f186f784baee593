"""A pod's network interface, Calico style: a veth with no bridge, /32 and /128
addresses, a link-local gateway that exists nowhere, and one host route per address.

    pod netns                                   host netns
    eth0  10.0.0.5/32  ──────── veth ────────  cali1a2b3c4d5e6  (ee:ee:ee:ee:ee:ee)
    169.254.1.1 dev eth0 scope link             10.0.0.5 dev cali1a2b3c4d5e6 scope link proto 201
    default via 169.254.1.1 dev eth0 onlink     proxy_arp=1: answers ARP for 169.254.1.1
    169.254.1.1 lladdr ee:ee:ee:ee:ee:ee          (when the host has a route to it)
        permanent: no ARP needed at all

The host end is created in the host netns with the peer placed straight into the pod
netns (one RTM_NEWLINK), so nothing is moved afterwards and nothing has to be created
inside the pod and renamed. The pod end's MAC is chosen here and its ifindex read from
the host end's IFLA_LINK, so on the common path the pod netns is written to, never queried.

The "host" netns is a parameter: None is the calling thread's netns (the agent), a
name is a named netns (tests). Netlink goes over rtnl.py, one socket in the host netns
and one in the pod netns per call, the requests of a step sent together (setup_pod:
three round trips).
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field

from routed.dataplane import rtnl
from routed.dataplane.constants import HOST_VETH_MAC, POD_GATEWAY_V4, POD_GATEWAY_V6, ROUTE_PROTO
from routed.dataplane.errors import DataplaneError, InterfaceExists, NetnsNotFound, RouteConflict
from routed.dataplane.names import host_veth_name, host_veth_name_for_container
from routed.dataplane.netns import in_netns, open_netns
from routed.dataplane.rtnl import LOOPBACK_IFINDEX, Link, Route, Rtnl
from routed.dataplane.sysctl import get_sysctls, host_veth_sysctls, set_sysctls

log = logging.getLogger(__name__)

__all__ = [
    "PodInterface",
    "setup_pod",
    "teardown_pod",
    "detach_pod",
    "delete_link",
    "check_pod",
    "pod_addresses",
    "host_veth_name",
    "host_veth_name_for_container",
]

IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface


@dataclass
class PodInterface:
    host_ifname: str
    ifname: str
    mac: str  # the pod end's MAC (what the CNI result reports for the sandbox interface)
    host_mac: str
    ips: list[IPInterface] = field(default_factory=list)
    sandbox: str = ""  # the pod netns path (CNI_NETNS)
    mtu: int = 1500


def pod_addresses(ips: Iterable) -> list[IPInterface]:
    """The pod's addresses as /32 and /128, whatever prefix IPAM handed out (the block's
    prefix must not appear on the pod: its neighbours are reached through the host)."""
    out: list[IPInterface] = []
    for ip in ips:
        addr = ipaddress.ip_interface(ip).ip
        iface = ipaddress.ip_interface(f"{addr}/{addr.max_prefixlen}")
        if iface not in out:
            out.append(iface)
    return out


def _family(ip: IPInterface) -> int:
    return socket.AF_INET if ip.version == 4 else socket.AF_INET6


def _random_mac() -> str:
    """Locally administered, unicast; what the kernel would pick, but known without a
    netlink round trip into the pod netns."""
    b = bytearray(os.urandom(6))
    b[0] = (b[0] & 0xFE) | 0x02
    return ":".join(f"{x:02x}" for x in b)


def _open_pod_netns(path: str) -> int:
    if not path:
        raise NetnsNotFound("no pod netns path given")
    try:
        return open_netns(path)
    except OSError as err:
        raise NetnsNotFound(f"pod netns {path}: {err.strerror}", errno=err.errno) from err


def _pod_socket(pod_fd: int, path: str) -> Rtnl:
    """A socket in the pod netns: created with this thread inside it, and bound to it
    for good (the thread goes back at once)."""
    try:
        with in_netns(pod_fd):
            return Rtnl(None)
    except OSError as err:  # EINVAL: the path is not a netns
        raise NetnsNotFound(f"open netlink in pod netns {path}: {err.strerror}", errno=err.errno) from err


def _run(sock: Rtnl, steps: list[tuple[str, bytes]]) -> None:
    """Send every step's request at once; raise for the first one (in order) that
    failed, naming it."""
    for (what, _), answer in zip(steps, sock.exchange([request for _, request in steps])):
        answer.check(what)


# --------------------------------------------------------------------------- setup


def setup_pod(
    host_netns: str | None,
    pod_netns_path: str,
    ifname: str,
    host_ifname: str,
    ips: Iterable,
    mtu: int = 1500,
) -> PodInterface:
    """Create and configure the pod's veth. All or nothing: on any failure after the veth
    exists it is deleted (its routes go with it) and the error re-raised.

    Raises InterfaceExists (nothing touched) when ``ifname`` is already in the pod netns,
    NetnsNotFound, RouteConflict when another interface already routes a pod address,
    DataplaneError for any other failed step.

    Netlink round trips: create + read the veth (one send), the pod side (one send),
    the host routes (one send).
    """
    addrs = pod_addresses(ips)
    if not addrs:
        raise ValueError("setup_pod needs at least one address")
    v4 = any(a.version == 4 for a in addrs)
    v6 = any(a.version == 6 for a in addrs)
    pod_mac = _random_mac()

    pod_fd = _open_pod_netns(pod_netns_path)
    try:
        with _pod_socket(pod_fd, pod_netns_path) as pod, Rtnl(host_netns) as host:
            read = _create_veth(host, pod, pod_fd, pod_netns_path, ifname, host_ifname, pod_mac, mtu)
            host_link = None
            try:
                host_link = read.check(f"read {host_ifname}").link()
                # A veth reports its peer's ifindex as IFLA_LINK: the pod end's index
                # without asking the pod netns.
                if host_link is None or host_link.peer is None:
                    raise DataplaneError(f"read {host_ifname}: no peer ifindex in the answer")
                # Before the pod end comes up: the host end has no carrier until then, so
                # no traffic and no IPv6 address generation (see accept_dad) before these.
                set_sysctls(host_netns, host_veth_sysctls(host_ifname, ipv4=v4, ipv6=v6))
                if v6:
                    # Docker-style runtimes create sandboxes with disable_ipv6=1 (then
                    # inherited by our interface). Only our own interface is changed.
                    set_sysctls(pod_fd, {f"net/ipv6/conf/{ifname}/disable_ipv6": "0"})
                _configure_pod_side(pod, host_link.peer, ifname, pod_netns_path, addrs, v4, v6)
                _add_host_routes(host, host_link.index, host_ifname, addrs)
            except BaseException:
                _rollback(host, host_ifname, host_link.index if host_link else None)
                raise
    finally:
        os.close(pod_fd)
    return PodInterface(
        host_ifname=host_ifname,
        ifname=ifname,
        mac=pod_mac,
        host_mac=HOST_VETH_MAC,
        ips=addrs,
        sandbox=pod_netns_path,
        mtu=mtu,
    )


def _create_veth(host: Rtnl, pod: Rtnl, pod_fd, path, ifname, host_ifname, pod_mac, mtu) -> rtnl.Answer:
    """Create the pair; returns the answer to reading the host end back, asked in the
    same send (check it: the veth exists from here on, even if that read failed)."""
    requests = [
        # Up at once: it has no carrier until the pod end is up, so this is safe and
        # saves a round trip.
        rtnl.new_veth(host_ifname, ifname, pod_fd, mtu=mtu, address=HOST_VETH_MAC,
                      peer_address=pod_mac, up=True),
        rtnl.get_link(name=host_ifname),
    ]
    what = f"create veth {host_ifname} <-> {ifname} in {path}"
    created, read = host.exchange(requests)
    if created.errno != errno.EEXIST:
        created.check(what)
        return read
    # EEXIST: one of the two names is taken. Which one decides what to do; asked only on
    # this error path so the common case costs nothing.
    if pod.link(name=ifname) is not None:
        raise InterfaceExists(f"interface {ifname} already exists in {path}", errno=errno.EEXIST)
    # The host name is taken (``read`` is its holder). It derives from namespace/pod, so
    # it is a leftover of an earlier sandbox of this same pod whose DEL never came
    # (Calico deletes it too); the current sandbox cannot own it, its ifname was free a
    # moment ago.
    stale = read.link()
    if stale is not None and stale.kind != "veth":
        raise DataplaneError(f"{what}: {host_ifname} exists and is not a veth", errno=errno.EEXIST)
    if stale is not None:
        host.request(rtnl.del_link(index=stale.index)).check(
            f"delete stale {host_ifname}", ignore=(errno.ENODEV,))
    created, read = host.exchange(requests)
    created.check(what)
    return read


def _configure_pod_side(pod: Rtnl, index: int, ifname, path, addrs, v4, v6) -> None:
    """Everything inside the pod netns, in one send (the kernel applies the requests in
    this order, so the v6 default route does find the link up)."""
    where = f"{ifname} in {path}"
    steps = [
        (f"set {where} up", rtnl.set_link(index, up=True)),
        (f"set lo up in {path}", rtnl.set_link(LOOPBACK_IFINDEX, up=True)),
    ]
    for a in addrs:
        # NODAD for v6: the address is ours by IPAM; DAD would keep it unusable ~1 s.
        steps.append((f"add {a} to {where}",
                      rtnl.add_address(index, str(a.ip), a.network.prefixlen, nodad=a.version == 6)))
    if v4:
        # The gateway's MAC is known (every host veth has HOST_VETH_MAC): a permanent
        # entry instead of ARP. Proxy ARP answers for 169.254.1.1 only while the host has
        # a route to it, so a node without a default route (air-gapped) would leave the
        # pod unable to reach anything (Calico #3270). Proxy ARP stays on for pods whose
        # entry someone flushes.
        steps.append((f"add neighbour {POD_GATEWAY_V4} lladdr {HOST_VETH_MAC} dev {where}",
                      rtnl.set_neighbour(index, POD_GATEWAY_V4, HOST_VETH_MAC)))
        steps.append((f"add route {POD_GATEWAY_V4} dev {where}",
                      rtnl.route_add(Route(f"{POD_GATEWAY_V4}/32", dev=ifname, proto=ROUTE_PROTO), index)))
        steps.append((f"add default route via {POD_GATEWAY_V4} dev {where}",
                      rtnl.route_add(Route("0.0.0.0/0", gateway=POD_GATEWAY_V4, dev=ifname, onlink=True,
                                           proto=ROUTE_PROTO), index)))
    if v6:
        # Needs the link up (ENETDOWN otherwise), hence after "set up".
        steps.append((f"add default route via {POD_GATEWAY_V6} dev {where}",
                      rtnl.route_add(Route("::/0", gateway=POD_GATEWAY_V6, dev=ifname, proto=ROUTE_PROTO),
                                     index)))
    _run(pod, steps)


def _add_host_routes(host: Rtnl, host_index: int, host_ifname: str, addrs) -> None:
    """``<ip> dev <host veth> scope link proto ROUTE_PROTO`` for every address, in one
    send. Not "replace": a route to this address through another interface means
    another pod holds it (an IPAM bug or a leftover); taking it over would cut that pod
    off silently. Same rule as Calico's CNI plugin."""
    routes = [Route(f"{a.ip}/{a.network.prefixlen}", dev=host_ifname, proto=ROUTE_PROTO) for a in addrs]
    answers = host.exchange([rtnl.route_add(route, host_index) for route in routes])
    for a, answer in zip(addrs, answers):
        dst = f"{a.ip}/{a.network.prefixlen}"
        if answer.errno != errno.EEXIST:
            answer.check(f"add route {dst} dev {host_ifname}")
            continue
        others = [r for r in _routes_to(host, a) if r.dev != host_ifname]
        if others:
            other = others[0]
            raise RouteConflict(
                f"route to {dst} already exists via {other.dev or other.kind} "
                f"(proto {other.proto}); not adding one via {host_ifname}",
                errno=errno.EEXIST,
            )


def _is_route_to(route: Route, a: IPInterface) -> bool:
    return route.prefixlen == a.network.prefixlen and ipaddress.ip_address(route.address) == a.ip


def _routes_to(sock: Rtnl, a: IPInterface) -> list[Route]:
    """The main table's routes to exactly ``a`` (a dump of its family: error paths only)."""
    return [r for r in sock.routes(_family(a), table=254) if _is_route_to(r, a)]


def _rollback(host: Rtnl, host_ifname: str, host_index: int | None) -> None:
    """Delete what setup_pod created. Deleting the host end deletes the pod end and
    every route through either; errors here must not hide the original one."""
    try:
        request = rtnl.del_link(index=host_index) if host_index is not None else rtnl.del_link(name=host_ifname)
        host.request(request).check(f"delete {host_ifname}", ignore=(errno.ENODEV,))
    except Exception:
        log.exception("rollback: could not delete %s", host_ifname)


# --------------------------------------------------------------------------- teardown


def teardown_pod(
    host_netns: str | None,
    pod_netns_path: str | None,
    host_ifname: str,
    ips: Iterable | None = None,
) -> None:
    """Detach the pod (detach_pod) and delete its veth (delete_link). Idempotent: a
    missing veth, a missing or empty netns path, a second call are all fine."""
    with Rtnl(host_netns) as host:
        index = _detach(host, pod_netns_path, host_ifname, ips)
        if index is not None:
            _delete_link(host, index, host_ifname)


def detach_pod(
    host_netns: str | None,
    pod_netns_path: str | None,
    host_ifname: str,
    ips: Iterable | None = None,
) -> int | None:
    """The fast half of a teardown: remove our host routes through the pod's veth, so its
    addresses may be given out again at once. Returns the veth's index for delete_link
    (the slow half: the kernel takes 15-20 ms to delete a veth), or None when there is
    nothing of this sandbox to delete.

    The host name derives from namespace/pod, so an interface of that name may belong to
    a *newer* sandbox of the same pod when a late DEL arrives for an old one. The veth is
    therefore touched only when it is provably this sandbox's:
    - the netns path is usable: the veth's peer lives in that netns;
    - otherwise: it carries our (proto ROUTE_PROTO) host route for one of ``ips``.
    With neither a netns nor ``ips`` nothing is touched: a sandbox whose netns is gone
    has lost its veth with it (the kernel destroys both ends with the netns).

    Netlink round trips: the veth and the netns id (one send), its routes (a dump),
    deleting them (one send).
    """
    with Rtnl(host_netns) as host:
        return _detach(host, pod_netns_path, host_ifname, ips)


def _detach(host: Rtnl, pod_netns_path: str | None, host_ifname: str, ips) -> int | None:
    fd = None
    if pod_netns_path:
        try:
            fd = open_netns(pod_netns_path)
        except OSError:
            fd = None  # gone: only the addresses can tell (below)
    try:
        requests = [rtnl.get_link(name=host_ifname)]
        if fd is not None:
            # The kernel names the peer's netns by an id local to the host netns
            # (IFLA_LINK_NETNSID); RTM_GETNSID gives the id of the sandbox's netns. Asked
            # after the link, whose answer gives the peer's netns an id if it had none.
            requests.append(rtnl.get_nsid(fd))
        answers = host.exchange(requests)
    finally:
        if fd is not None:
            os.close(fd)
    link = answers[0].check(f"read {host_ifname}", ignore=(errno.ENODEV,)).link()
    if link is None:
        return None
    if link.kind != "veth":
        return None  # not ours whatever its name
    # EINVAL (not a netns file): no id, fall through to the addresses.
    nsid = answers[1].nsid() if fd is not None else None
    ours = host.routes(oif=link.index, proto=ROUTE_PROTO, ifnames={link.index: link.name})
    if not _is_this_sandbox(link, nsid, ours, ips):
        return None
    answers = host.exchange([rtnl.route_delete(route, link.index) for route in ours])
    for route, answer in zip(ours, answers):
        answer.check(f"delete the host route {route.dst} of {host_ifname}",
                     ignore=(errno.ESRCH, errno.ENOENT, errno.ENODEV))
    return link.index


def _is_this_sandbox(link: Link, nsid: int | None, ours: list[Route], ips) -> bool:
    if nsid is not None:
        # -1 (no id) cannot match: the peer's netns always has one.
        return nsid == link.peer_netnsid
    if ips:
        return any(_is_route_to(r, a) for a in pod_addresses(ips) for r in ours)
    return False


def delete_link(host_netns: str | None, index: int, host_ifname: str) -> None:
    """Delete the veth at index (both ends go), if it still is the one named host_ifname."""
    with Rtnl(host_netns) as host:
        _delete_link(host, index, host_ifname)


def _delete_link(host: Rtnl, index: int, host_ifname: str) -> None:
    link = host.link(index=index)
    if link is None or link.name != host_ifname:
        return  # gone already, or the index now names something else
    host.request(rtnl.del_link(index=index)).check(f"delete {host_ifname}", ignore=(errno.ENODEV,))


# --------------------------------------------------------------------------- check


def check_pod(
    host_netns: str | None,
    pod_netns_path: str,
    ifname: str,
    host_ifname: str,
    ips: Iterable,
    mtu: int | None = None,
) -> list[str]:
    """What differs from what setup_pod would have made, one line each; [] when nothing."""
    addrs = pod_addresses(ips)
    v4 = any(a.version == 4 for a in addrs)
    v6 = any(a.version == 6 for a in addrs)
    diffs: list[str] = []

    # Host side.
    with Rtnl(host_netns) as sock:
        host = sock.link(name=host_ifname)
        ours = (sock.routes(oif=host.index, proto=ROUTE_PROTO, ifnames={host.index: host.name})
                if host is not None else [])
    if host is None:
        diffs.append(f"host veth {host_ifname} is missing")
    else:
        if host.kind != "veth":
            diffs.append(f"{host_ifname} is not a veth")
        if host.address != HOST_VETH_MAC:
            diffs.append(f"{host_ifname} has MAC {host.address}, expected {HOST_VETH_MAC}")
        if not host.up:
            diffs.append(f"{host_ifname} is down")
        if mtu is not None and host.mtu != mtu:
            diffs.append(f"{host_ifname} has MTU {host.mtu}, expected {mtu}")
        for a in addrs:
            if not any(_is_route_to(r, a) for r in ours):
                diffs.append(f"host route {a.ip}/{a.network.prefixlen} dev {host_ifname} "
                             f"proto {ROUTE_PROTO} is missing")
        try:
            wanted = host_veth_sysctls(host_ifname, ipv4=v4, ipv6=v6)
            for key, value in get_sysctls(host_netns, wanted).items():
                if value != wanted[key]:
                    diffs.append(f"sysctl {key} is {value}, expected {wanted[key]}")
        except OSError as err:
            diffs.append(f"cannot read sysctls of {host_ifname}: {err.strerror}")

    # Pod side.
    try:
        pod_fd = _open_pod_netns(pod_netns_path)
    except NetnsNotFound as err:
        diffs.append(str(err))
        return diffs
    try:
        with _pod_socket(pod_fd, pod_netns_path) as pod:
            diffs += _check_pod_side(pod, pod_netns_path, ifname, host, addrs, v4, v6, mtu)
    except NetnsNotFound as err:
        diffs.append(str(err))
    finally:
        os.close(pod_fd)
    return diffs


def _check_pod_side(pod: Rtnl, path, ifname, host: Link | None, addrs, v4, v6, mtu) -> list[str]:
    diffs: list[str] = []
    where = f"{ifname} in {path}"
    got, got_lo = pod.exchange([rtnl.get_link(name=ifname), rtnl.get_link(index=LOOPBACK_IFINDEX)])
    link = got.check(f"read {where}", ignore=(errno.ENODEV,)).link()
    if link is None:
        return [f"{where} is missing"]
    index = link.index
    if host is not None and (link.peer != host.index or host.peer != index):
        diffs.append(f"{where} is not the peer of {host.name}")
    if not link.up:
        diffs.append(f"{where} is down")
    if mtu is not None and link.mtu != mtu:
        diffs.append(f"{where} has MTU {link.mtu}, expected {mtu}")
    lo = got_lo.check(f"read lo in {path}").link()
    if lo is None or not lo.up:
        diffs.append(f"lo in {path} is down")

    have = {
        ipaddress.ip_interface(f"{m.address}/{m.prefixlen}")
        for m in pod.addresses(index=index)
        if m.scope == 0  # global: leaves out the kernel's fe80:: link-local
    }
    for a in addrs:
        if a not in have:
            diffs.append(f"{where} lacks address {a}")
    for a in sorted(have - set(addrs), key=str):
        diffs.append(f"{where} has unexpected address {a}")

    routes = pod.routes(oif=index, table=254, ifnames={index: ifname})

    def has(dst, gateway=None):
        return any(r.dst == dst and r.gateway == gateway for r in routes)

    if v4:
        if not has(f"{POD_GATEWAY_V4}/32"):
            diffs.append(f"route {POD_GATEWAY_V4} dev {where} is missing")
        if not has("0.0.0.0/0", POD_GATEWAY_V4):
            diffs.append(f"default route via {POD_GATEWAY_V4} dev {where} is missing")
        if not any(n.address == POD_GATEWAY_V4 and n.mac == HOST_VETH_MAC and n.permanent
                   for n in pod.neighbours(socket.AF_INET, index)):
            diffs.append(f"permanent neighbour {POD_GATEWAY_V4} lladdr {HOST_VETH_MAC} dev {where} is missing")
    if v6 and not has("::/0", POD_GATEWAY_V6):
        diffs.append(f"default route via {POD_GATEWAY_V6} dev {where} is missing")
    return diffs
