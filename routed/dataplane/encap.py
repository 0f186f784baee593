"""Encapsulation devices for traffic to nodes that are not directly reachable: VXLAN and
IPIP, as Calico uses them.

VXLAN without any control plane of its own: every node's VTEP MAC is derived from its
IPv4 address (``vtep_mac``), so a node that knows its peers' addresses (from BGP next
hops or the node registry) can write, for each peer N, a permanent neighbour entry
(N -> vtep_mac(N)) and an FDB entry (vtep_mac(N) -> UDP to N) on ``vxlan.routed``.
A route ``<block> via N dev vxlan.routed onlink`` (proto 202, see bulk.py) then
resolves to vtep_mac(N) without ARP, and the FDB sends the frame to N; N's kernel
decapsulates it and routes the inner packet to the pod by its /32. ``nolearning``
keeps the FDB exactly what we wrote.

IPIP: the kernel's ``tunl0`` catches every IPIP packet for the node; routes are
``<block> via N dev tunl0 onlink``. This kernel has no ipip module: ``ensure_ipip``
says so in one line (tested for real in a VM).

Every function opens its own IPRoute in the target netns and closes it, in the calling
thread (pyroute2 0.9 sockets follow the calling thread's netns).
"""

from __future__ import annotations

import errno as errnos
import ipaddress
import logging
import socket
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from routed.dataplane.errors import DataplaneError
from routed.dataplane.netlink import IPRoute, NetlinkError, open_in, step
from routed.dataplane.netns import NetnsTarget

log = logging.getLogger(__name__)

__all__ = [
    "VXLAN_DEV", "VXLAN_VNI", "VXLAN_PORT", "VXLAN_MTU", "IPIP_DEV", "IPIP_MTU",
    "vtep_mac", "ensure_vxlan", "remove_vxlan", "sync_vxlan_peers", "ensure_ipip",
]

VXLAN_DEV = "vxlan.routed"
VXLAN_VNI = 4096  # Calico's default VNI
VXLAN_PORT = 4789  # IANA VXLAN port
VXLAN_MTU = 1450  # 1500 - 50 bytes of outer IPv4 + UDP + VXLAN + inner Ethernet
IPIP_DEV = "tunl0"  # the fallback device the ipip module creates in every netns
IPIP_MTU = 1480  # 1500 - 20 bytes of outer IPv4

IFF_UP = 0x1
NUD_NOARP, NUD_PERMANENT = 0x40, 0x80
NTF_SELF = 0x02

IPIP_MISSING = "this kernel has no IPIP support (ip link add type ipip: Unknown device type)"


# --------------------------------------------------------------------------- pure


def vtep_mac(node_ip: str) -> str:
    """The VTEP MAC of the node with IPv4 address ``node_ip``: 0e:52 + the four address
    bytes. 0x0e has the locally-administered bit set and the multicast bit clear, so it
    never collides with a vendor MAC; every node computes any peer's MAC by itself."""
    addr = ipaddress.ip_address(node_ip)
    if addr.version != 4:
        raise ValueError(f"VTEP MACs are derived from IPv4 node addresses, not {node_ip}")
    return "0e:52:" + ":".join(f"{b:02x}" for b in addr.packed)


def _canonical_v4(node_ip: str) -> str:
    addr = ipaddress.ip_address(node_ip)
    if addr.version != 4:
        raise ValueError(f"VXLAN peers are IPv4 node addresses, not {node_ip}")
    return str(addr)


# --------------------------------------------------------------------------- helpers


@contextmanager
def _ipr(netns: NetnsTarget) -> Iterator[IPRoute]:
    with step(f"open netlink in netns {netns}"):
        ipr = open_in(netns)
    try:
        yield ipr
    finally:
        ipr.close()


def _link(ipr: IPRoute, name: str):
    """The link message for ``name``, or None when there is none."""
    try:
        with step(f"read link {name}"):
            return ipr.link("get", ifname=name)[0]
    except DataplaneError as err:
        if err.errno == errnos.ENODEV:
            return None
        raise


def _kind(link) -> str | None:
    return link.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND")


def _vxlan(link, attr: str):
    return link.get_nested("IFLA_LINKINFO", "IFLA_INFO_DATA", attr)


def _set_link(ipr: IPRoute, link, name: str, mtu: int, address: str | None = None) -> None:
    """MTU, MAC and up, each only when it differs (a no-op resync sends nothing)."""
    change = {}
    if link.get("mtu") != mtu:
        change["mtu"] = mtu
    if address is not None and (link.get("address") or "").lower() != address:
        change["address"] = address
    if not link["flags"] & IFF_UP:
        change["state"] = "up"
    if change:
        with step(f"set {name} {' '.join(f'{k} {v}' for k, v in change.items())}"):
            ipr.link("set", index=link["index"], **change)


# --------------------------------------------------------------------------- VXLAN


def ensure_vxlan(
    netns: NetnsTarget,
    local_ip: str,
    parent_dev: str,
    name: str = VXLAN_DEV,
    vni: int = VXLAN_VNI,
    port: int = VXLAN_PORT,
    mtu: int = VXLAN_MTU,
) -> int:
    """Make ``name`` a VXLAN device (``id vni local local_ip dev parent_dev dstport port
    nolearning``, MAC vtep_mac(local_ip), ``mtu``, up) and return its ifindex.

    Idempotent. MTU, MAC and up are fixed in place; a VNI, local address, port, parent
    or learning setting that differs cannot be changed on a live VXLAN device, so the
    device is deleted and created again (its neighbour/FDB entries and the routes through
    it go with it: sync peers and routes after this; the new ifindex tells). A device
    of that name that is not VXLAN is never touched (DataplaneError)."""
    local_ip = _canonical_v4(local_ip)
    mac = vtep_mac(local_ip)
    with _ipr(netns) as ipr:
        parent = _link(ipr, parent_dev)
        if parent is None:
            raise DataplaneError(f"VXLAN device {name}: parent device {parent_dev} does not exist",
                                 errno=errnos.ENODEV)
        link = _link(ipr, name)
        if link is not None:
            if _kind(link) != "vxlan":
                raise DataplaneError(f"{name} exists and is not a VXLAN device (kind {_kind(link)}); not touching it")
            wanted = {"IFLA_VXLAN_ID": vni, "IFLA_VXLAN_LOCAL": local_ip, "IFLA_VXLAN_PORT": port,
                      "IFLA_VXLAN_LINK": parent["index"], "IFLA_VXLAN_LEARNING": 0}
            differs = {k: _vxlan(link, k) for k, v in wanted.items() if _vxlan(link, k) != v}
            if differs:
                log.info("recreating %s: %s differ from %s", name, differs, wanted)
                with step(f"delete {name} to recreate it"):
                    ipr.link("del", index=link["index"])
                link = None
        if link is None:
            with step(f"create VXLAN device {name} (id {vni} local {local_ip} dev {parent_dev} dstport {port})"):
                ipr.link(
                    "add",
                    ifname=name,
                    kind="vxlan",
                    vxlan_id=vni,
                    vxlan_local=local_ip,
                    vxlan_link=parent["index"],
                    vxlan_port=port,
                    vxlan_learning=0,
                    address=mac,
                    mtu=mtu,
                )
            link = _link(ipr, name)
            if link is None:
                raise DataplaneError(f"VXLAN device {name} vanished right after it was created")
        _set_link(ipr, link, name, mtu, mac)
        return link["index"]


def remove_vxlan(netns: NetnsTarget, name: str = VXLAN_DEV) -> bool:
    """Delete the VXLAN device ``name``; False when there was none. A device of that
    name that is not VXLAN is left alone (DataplaneError)."""
    with _ipr(netns) as ipr:
        link = _link(ipr, name)
        if link is None:
            return False
        if _kind(link) != "vxlan":
            raise DataplaneError(f"{name} is not a VXLAN device (kind {_kind(link)}); not deleting it")
        try:
            with step(f"delete {name}"):
                ipr.link("del", index=link["index"])
        except DataplaneError as err:
            if err.errno != errnos.ENODEV:  # gone meanwhile
                raise
            return False
        return True


def sync_vxlan_peers(netns: NetnsTarget, peers: Iterable[str], name: str = VXLAN_DEV) -> tuple[set[str], set[str]]:
    """Make the peer entries on the VXLAN device ``name`` equal to ``peers`` (remote
    nodes' IPv4 addresses): for each N a permanent neighbour ``N lladdr vtep_mac(N)`` and
    a permanent FDB entry ``vtep_mac(N) dst N self``. Entries for nodes no longer listed
    are removed; only this device is read or written, and only permanent neighbours
    (the ones written here: the kernel's own dynamic entries are left to the kernel).

    Returns (added, removed) node IPs: added = peers whose neighbour or FDB entry was
    missing or wrong, removed = nodes whose entries were deleted."""
    want = {_canonical_v4(p): None for p in peers}
    want_mac = {ip: vtep_mac(ip) for ip in want}
    mac_owner = {mac: ip for ip, mac in want_mac.items()}
    with _ipr(netns) as ipr:
        link = _link(ipr, name)
        if link is None:
            raise DataplaneError(f"VXLAN device {name} does not exist (ensure_vxlan first)", errno=errnos.ENODEV)
        index = link["index"]
        with step(f"list neighbours on {name}"):
            neighs = {
                n.get("dst"): (n.get("lladdr") or "").lower()
                for n in ipr.neigh("dump", family=socket.AF_INET, ifindex=index)
                if n["ifindex"] == index and n["state"] & NUD_PERMANENT
            }
        with step(f"list FDB entries on {name}"):
            fdb: dict[str, set[str]] = {}  # mac -> remote dsts
            for entry in ipr.fdb("dump", ifindex=index):
                if entry["ifindex"] == index and entry.get("dst"):
                    fdb.setdefault((entry.get("lladdr") or "").lower(), set()).add(entry.get("dst"))

        added: set[str] = set()
        removed: set[str] = set()
        for ip, mac in want_mac.items():
            if neighs.get(ip) != mac:
                with step(f"neighbour {ip} lladdr {mac} dev {name}"):
                    ipr.neigh("replace", dst=ip, lladdr=mac, ifindex=index, state=NUD_PERMANENT)
                added.add(ip)
            have = fdb.get(mac, set())
            if have != {ip}:
                for stale in have - {ip}:  # a VXLAN FDB entry may hold several remotes
                    _fdb_del(ipr, index, name, mac, stale)
                with step(f"fdb {mac} dst {ip} dev {name}"):
                    ipr.fdb("replace", ifindex=index, lladdr=mac, dst=ip,
                            state=NUD_PERMANENT | NUD_NOARP, flags=NTF_SELF)
                added.add(ip)
        for ip, mac in neighs.items():
            if ip not in want:
                try:
                    with step(f"delete neighbour {ip} dev {name}"):
                        ipr.neigh("del", dst=ip, lladdr=mac, ifindex=index)
                except DataplaneError as err:
                    if err.errno != errnos.ENOENT:
                        raise
                removed.add(ip)
        for mac, dsts in fdb.items():
            if mac not in mac_owner:
                for dst in dsts:
                    _fdb_del(ipr, index, name, mac, dst)
                    removed.add(dst)
        return added, removed


def _fdb_del(ipr: IPRoute, index: int, name: str, mac: str, dst: str) -> None:
    try:
        with step(f"delete fdb {mac} dst {dst} dev {name}"):
            ipr.fdb("del", ifindex=index, lladdr=mac, dst=dst, state=NUD_PERMANENT | NUD_NOARP, flags=NTF_SELF)
    except DataplaneError as err:
        if err.errno != errnos.ENOENT:  # gone meanwhile
            raise


# --------------------------------------------------------------------------- IPIP


def ensure_ipip(netns: NetnsTarget, mtu: int = IPIP_MTU) -> int:
    """Bring up ``tunl0`` with ``mtu`` and return its ifindex.

    ``tunl0`` is the fallback device of the ipip module, present in every netns once the
    module is loaded. Asking for ``tunl0`` of type ipip makes the kernel load the module
    (rtnetlink requests "rtnl-link-ipip"), which creates the fallback device, so the
    request itself then answers EEXIST: both are success. A kernel without IPIP answers
    EOPNOTSUPP ("Unknown device type" in ip's words): one clear DataplaneError."""
    with _ipr(netns) as ipr:
        link = _link(ipr, IPIP_DEV)
        if link is None:
            try:
                ipr.link("add", ifname=IPIP_DEV, kind="ipip")
            except NetlinkError as err:
                if err.code == errnos.EOPNOTSUPP:
                    raise DataplaneError(IPIP_MISSING, errno=err.code) from err
                if err.code != errnos.EEXIST:
                    with step(f"create {IPIP_DEV}"):
                        raise
            link = _link(ipr, IPIP_DEV)
            if link is None:
                raise DataplaneError(f"{IPIP_DEV} did not appear after loading IPIP support")
        if _kind(link) != "ipip":
            raise DataplaneError(f"{IPIP_DEV} exists and is not an IPIP device (kind {_kind(link)})")
        _set_link(ipr, link, IPIP_DEV, mtu)
        return link["index"]
