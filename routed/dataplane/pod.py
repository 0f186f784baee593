"""A pod's network interface, Calico style: a veth with no bridge, /32 and /128
addresses, a link-local gateway that exists nowhere, and one host route per address.

    pod netns                                   host netns
    eth0  10.0.0.5/32  ──────── veth ────────  cali1a2b3c4d5e6  (ee:ee:ee:ee:ee:ee)
    169.254.1.1 dev eth0 scope link             10.0.0.5 dev cali1a2b3c4d5e6 scope link proto 201
    default via 169.254.1.1 dev eth0 onlink     proxy_arp=1: answers ARP for 169.254.1.1

The host end is created in the host netns with the peer placed straight into the pod
netns (one RTM_NEWLINK), so nothing is moved afterwards and nothing has to be created
inside the pod and renamed. The pod end's MAC is chosen here and its ifindex read from
the host end's IFLA_LINK, so on the common path the pod netns is written to, never queried.

The "host" netns is a parameter: None is the calling process's netns (the agent), a
name is a named netns (tests). ``ipr_host`` is an IPRoute opened in it by the caller.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import socket
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from pyroute2 import IPRoute, NetlinkError

from routed.dataplane.constants import HOST_VETH_MAC, POD_GATEWAY_V4, POD_GATEWAY_V6, ROUTE_PROTO
from routed.dataplane.errors import DataplaneError, InterfaceExists, NetnsNotFound, RouteConflict
from routed.dataplane.names import host_veth_name, host_veth_name_for_container
from routed.dataplane.netns import in_netns, open_netns
from routed.dataplane.netlink import step
from routed.dataplane.sysctl import get_sysctls, host_veth_sysctls, set_sysctls

log = logging.getLogger(__name__)

__all__ = [
    "PodInterface",
    "setup_pod",
    "teardown_pod",
    "check_pod",
    "pod_addresses",
    "host_veth_name",
    "host_veth_name_for_container",
]

IFF_UP = 0x1
IFA_F_NODAD = 0x02
RTNH_F_ONLINK = 0x04
RT_SCOPE_LINK = 253
LOOPBACK_IFINDEX = 1  # the kernel gives lo ifindex 1 in every netns

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


@contextmanager
def _pod_socket(pod_fd: int, path: str) -> Iterator[IPRoute]:
    """An IPRoute whose socket lives in the pod netns."""
    with step(f"open netlink in pod netns {path}", NetnsNotFound):
        with in_netns(pod_fd):
            ipr = IPRoute()
    try:
        yield ipr
    finally:
        ipr.close()


# --------------------------------------------------------------------------- setup


def setup_pod(
    ipr_host: IPRoute,
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
    """
    addrs = pod_addresses(ips)
    if not addrs:
        raise ValueError("setup_pod needs at least one address")
    v4 = any(a.version == 4 for a in addrs)
    v6 = any(a.version == 6 for a in addrs)
    pod_mac = _random_mac()

    pod_fd = _open_pod_netns(pod_netns_path)
    try:
        with _pod_socket(pod_fd, pod_netns_path) as ipr_pod:
            _create_veth(ipr_host, ipr_pod, pod_fd, pod_netns_path, ifname, host_ifname, pod_mac, mtu)
            host_index = None
            try:
                with step(f"read {host_ifname}"):
                    host_link = ipr_host.link("get", ifname=host_ifname)[0]
                host_index = host_link["index"]
                # A veth reports its peer's ifindex as IFLA_LINK: the pod end's index
                # without asking the pod netns.
                pod_index = host_link.get("link")
                # Before the pod end comes up: the host end has no carrier until then, so
                # no traffic and no IPv6 address generation (see accept_dad) before these.
                set_sysctls(host_netns, host_veth_sysctls(host_ifname, ipv4=v4, ipv6=v6))
                if v6:
                    # Docker-style runtimes create sandboxes with disable_ipv6=1 (then
                    # inherited by our interface). Only our own interface is changed.
                    set_sysctls(pod_fd, {f"net/ipv6/conf/{ifname}/disable_ipv6": "0"})
                _configure_pod_side(ipr_pod, pod_index, ifname, pod_netns_path, addrs, v4, v6)
                _add_host_routes(ipr_host, host_index, host_ifname, addrs)
            except BaseException:
                _rollback(ipr_host, host_ifname, host_index)
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


def _create_veth(ipr_host, ipr_pod, pod_fd, path, ifname, host_ifname, pod_mac, mtu) -> None:
    spec = dict(
        ifname=host_ifname,
        kind="veth",
        address=HOST_VETH_MAC,
        mtu=mtu,
        # Up at once: it has no carrier until the pod end is up, so this is safe and
        # saves a round trip.
        flags=IFF_UP,
        change=IFF_UP,
        peer={"ifname": ifname, "net_ns_fd": pod_fd, "address": pod_mac, "mtu": mtu},
    )
    what = f"create veth {host_ifname} <-> {ifname} in {path}"
    try:
        ipr_host.link("add", **spec)
        return
    except NetlinkError as err:
        if err.code != errno.EEXIST:
            raise DataplaneError(f"{what}: {os.strerror(err.code)}", errno=err.code) from err
    # EEXIST: one of the two names is taken. Which one decides what to do; asked only on
    # this error path so the common case costs nothing.
    if _get_link(ipr_pod, ifname=ifname) is not None:
        raise InterfaceExists(f"interface {ifname} already exists in {path}", errno=errno.EEXIST)
    # The host name is taken. It derives from namespace/pod, so it is a leftover of an
    # earlier sandbox of this same pod whose DEL never came (Calico deletes it too); the
    # current sandbox cannot own it, its ifname was free a moment ago.
    stale = _get_link(ipr_host, ifname=host_ifname)
    if stale is not None and stale.get(("linkinfo", "kind")) != "veth":
        raise DataplaneError(f"{what}: {host_ifname} exists and is not a veth", errno=errno.EEXIST)
    if stale is not None:
        with step(f"delete stale {host_ifname}"):
            _ignore(ipr_host.link, "del", index=stale["index"], codes=(errno.ENODEV,))
    with step(what):
        ipr_host.link("add", **spec)


def _configure_pod_side(ipr_pod, index, ifname, path, addrs, v4, v6) -> None:
    where = f"{ifname} in {path}"
    with step(f"set {where} up"):
        ipr_pod.link("set", index=index, state="up")
    with step(f"set lo up in {path}"):
        ipr_pod.link("set", index=LOOPBACK_IFINDEX, state="up")
    for a in addrs:
        with step(f"add {a} to {where}"):
            if a.version == 4:
                ipr_pod.addr("add", index=index, address=str(a.ip), prefixlen=32)
            else:
                # NODAD: the address is ours by IPAM; DAD would keep it unusable ~1 s.
                ipr_pod.addr("add", index=index, address=str(a.ip), prefixlen=128,
                             flags=IFA_F_NODAD)
    if v4:
        with step(f"add route {POD_GATEWAY_V4} dev {where}"):
            ipr_pod.route("add", dst=f"{POD_GATEWAY_V4}/32", oif=index, scope=RT_SCOPE_LINK,
                          proto=ROUTE_PROTO)
        with step(f"add default route via {POD_GATEWAY_V4} dev {where}"):
            ipr_pod.route("add", dst="0.0.0.0/0", gateway=POD_GATEWAY_V4, oif=index,
                          flags=RTNH_F_ONLINK, proto=ROUTE_PROTO)
    if v6:
        # Needs the link up (ENETDOWN otherwise), hence after "set up".
        with step(f"add default route via {POD_GATEWAY_V6} dev {where}"):
            ipr_pod.route("add", family=socket.AF_INET6, dst="::/0", gateway=POD_GATEWAY_V6,
                          oif=index, proto=ROUTE_PROTO)


def _add_host_routes(ipr_host, host_index, host_ifname, addrs) -> None:
    for a in addrs:
        dst = f"{a.ip}/{a.network.prefixlen}"
        spec = dict(family=_family(a), dst=dst, oif=host_index, proto=ROUTE_PROTO)
        if a.version == 4:
            spec["scope"] = RT_SCOPE_LINK
        try:
            ipr_host.route("add", **spec)
        except NetlinkError as err:
            if err.code != errno.EEXIST:
                raise DataplaneError(f"add route {dst} dev {host_ifname}: {os.strerror(err.code)}",
                                     errno=err.code) from err
            # Not "replace": a route to this address through another interface means
            # another pod holds it (an IPAM bug or a leftover); taking it over would cut
            # that pod off silently. Same rule as Calico's CNI plugin.
            others = [r for r in _routes_to(ipr_host, a) if r.get("oif") != host_index]
            if others:
                other = others[0]
                raise RouteConflict(
                    f"route to {dst} already exists via {_ifname(ipr_host, other.get('oif'))} "
                    f"(proto {other['proto']}); not adding one via {host_ifname}",
                    errno=errno.EEXIST,
                ) from err


def _routes_to(ipr, a: IPInterface) -> list:
    return [
        r for r in ipr.route("dump", family=_family(a), table=254)
        if r.get("dst") == str(a.ip) and r["dst_len"] == a.network.prefixlen
    ]


def _ifname(ipr, index) -> str:
    if index is None:
        return "no interface"
    try:
        return ipr.link("get", index=index)[0].get("ifname")
    except NetlinkError:
        return f"ifindex {index}"


def _rollback(ipr_host, host_ifname, host_index) -> None:
    """Delete what setup_pod created. Deleting the host end deletes the pod end and
    every route through either; errors here must not hide the original one."""
    try:
        if host_index is not None:
            _ignore(ipr_host.link, "del", index=host_index, codes=(errno.ENODEV,))
        else:
            _ignore(ipr_host.link, "del", ifname=host_ifname, codes=(errno.ENODEV,))
    except Exception:
        log.exception("rollback: could not delete %s", host_ifname)


def _get_link(ipr, **spec):
    """The link matching ``spec`` (ifname= or index=), None when there is none."""
    links = _ignore(ipr.link, "get", codes=(errno.ENODEV,), **spec)
    return links[0] if links else None


def _ignore(fn, *args, codes: tuple[int, ...], **kwargs):
    try:
        return fn(*args, **kwargs)
    except NetlinkError as err:
        if err.code not in codes:
            raise
        return None


# --------------------------------------------------------------------------- teardown


def teardown_pod(
    ipr_host: IPRoute,
    host_netns: str | None,
    pod_netns_path: str | None,
    ifname: str,
    host_ifname: str,
    ips: Iterable | None = None,
) -> None:
    """Detach the pod (detach_pod) and delete its veth (delete_link). Idempotent: a
    missing veth, a missing or empty netns path, a second call are all fine."""
    index = detach_pod(ipr_host, host_netns, pod_netns_path, ifname, host_ifname, ips)
    if index is not None:
        delete_link(ipr_host, index, host_ifname)


def detach_pod(
    ipr_host: IPRoute,
    host_netns: str | None,
    pod_netns_path: str | None,
    ifname: str,
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
    ``ifname`` is accepted for symmetry with setup_pod; the host side is enough.
    """
    link = _get_link(ipr_host, ifname=host_ifname)
    if link is None:
        return None
    if link.get(("linkinfo", "kind")) != "veth":
        return None  # not ours whatever its name
    if not _is_this_sandbox(ipr_host, link, pod_netns_path, ips):
        return None
    index = link["index"]
    for family in (socket.AF_INET, socket.AF_INET6):
        for route in ipr_host.get_routes(family=family, oif=index, proto=ROUTE_PROTO):
            with step(f"delete the host route of {host_ifname}"):
                _ignore(ipr_host.route, "del", family=family, dst=route.get_attr("RTA_DST"),
                        dst_len=route["dst_len"], oif=index, proto=ROUTE_PROTO,
                        codes=(errno.ESRCH, errno.ENOENT, errno.ENODEV))
    return index


def delete_link(ipr_host: IPRoute, index: int, host_ifname: str) -> None:
    """Delete the veth at index (both ends go), if it still is the one named host_ifname."""
    link = _get_link(ipr_host, index=index)
    if link is None or link.get_attr("IFLA_IFNAME") != host_ifname:
        return  # gone already, or the index now names something else
    with step(f"delete {host_ifname}"):
        _ignore(ipr_host.link, "del", index=index, codes=(errno.ENODEV,))


def _is_this_sandbox(ipr_host, link, pod_netns_path, ips) -> bool:
    if pod_netns_path:
        try:
            fd = open_netns(pod_netns_path)
        except OSError:
            fd = None
        if fd is not None:
            try:
                # The kernel names the peer's netns by an id local to the host netns
                # (IFLA_LINK_NETNSID); RTM_GETNSID gives the id of the sandbox's netns.
                # -1 (no id) cannot match: the peer's netns always has one.
                nsid = ipr_host.get_netnsid(fd=fd)
            except NetlinkError:
                nsid = None  # EINVAL: not a netns file; fall through to the addresses
            finally:
                os.close(fd)
            if nsid is not None and nsid.get("nsid") is not None:
                return nsid["nsid"] == link.get("link_netnsid")
    if ips:
        index = link["index"]
        for a in pod_addresses(ips):
            for r in _routes_to(ipr_host, a):
                if r.get("oif") == index and r["proto"] == ROUTE_PROTO:
                    return True
    return False


# --------------------------------------------------------------------------- check


def check_pod(
    ipr_host: IPRoute,
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
    host = _get_link(ipr_host, ifname=host_ifname)
    if host is None:
        diffs.append(f"host veth {host_ifname} is missing")
    else:
        if host.get(("linkinfo", "kind")) != "veth":
            diffs.append(f"{host_ifname} is not a veth")
        if host.get("address") != HOST_VETH_MAC:
            diffs.append(f"{host_ifname} has MAC {host.get('address')}, expected {HOST_VETH_MAC}")
        if not host["flags"] & IFF_UP:
            diffs.append(f"{host_ifname} is down")
        if mtu is not None and host.get("mtu") != mtu:
            diffs.append(f"{host_ifname} has MTU {host.get('mtu')}, expected {mtu}")
        for a in addrs:
            routes = _routes_to(ipr_host, a)
            ours = [r for r in routes if r.get("oif") == host["index"] and r["proto"] == ROUTE_PROTO]
            if not ours:
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
        with _pod_socket(pod_fd, pod_netns_path) as ipr_pod:
            diffs += _check_pod_side(ipr_pod, pod_netns_path, ifname, host, addrs, v4, v6, mtu)
    except NetnsNotFound as err:
        diffs.append(str(err))
    finally:
        os.close(pod_fd)
    return diffs


def _check_pod_side(ipr_pod, path, ifname, host, addrs, v4, v6, mtu) -> list[str]:
    diffs: list[str] = []
    where = f"{ifname} in {path}"
    pod = _get_link(ipr_pod, ifname=ifname)
    if pod is None:
        return [f"{where} is missing"]
    index = pod["index"]
    if host is not None and (pod.get("link") != host["index"] or host.get("link") != index):
        diffs.append(f"{where} is not the peer of {host.get('ifname')}")
    if not pod["flags"] & IFF_UP:
        diffs.append(f"{where} is down")
    if mtu is not None and pod.get("mtu") != mtu:
        diffs.append(f"{where} has MTU {pod.get('mtu')}, expected {mtu}")
    lo = ipr_pod.link("get", index=LOOPBACK_IFINDEX)[0]
    if not lo["flags"] & IFF_UP:
        diffs.append(f"lo in {path} is down")

    have = {
        ipaddress.ip_interface(f"{m.get('address')}/{m['prefixlen']}")
        for m in ipr_pod.addr("dump", index=index)
        if m["scope"] == 0  # global: leaves out the kernel's fe80:: link-local
    }
    for a in addrs:
        if a not in have:
            diffs.append(f"{where} lacks address {a}")
    for a in sorted(have - set(addrs), key=str):
        diffs.append(f"{where} has unexpected address {a}")

    routes = [r for r in ipr_pod.route("dump", table=254) if r.get("oif") == index]

    def has(family, dst, dst_len, gateway=None):
        return any(
            r["family"] == family and r.get("dst") == dst and r["dst_len"] == dst_len
            and r.get("gateway") == gateway
            for r in routes
        )

    if v4:
        if not has(socket.AF_INET, POD_GATEWAY_V4, 32):
            diffs.append(f"route {POD_GATEWAY_V4} dev {where} is missing")
        if not has(socket.AF_INET, None, 0, POD_GATEWAY_V4):
            diffs.append(f"default route via {POD_GATEWAY_V4} dev {where} is missing")
    if v6 and not has(socket.AF_INET6, None, 0, POD_GATEWAY_V6):
        diffs.append(f"default route via {POD_GATEWAY_V6} dev {where} is missing")
    return diffs
