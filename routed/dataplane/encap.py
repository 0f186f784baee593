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

VXLAN over IPv6 (dual stack, as Calico's vxlan-v6.calico): a second device,
``vxlan-v6.routed``, local to the node's IPv6 address, carries IPv6 blocks to peers' IPv6
addresses the same way; its VTEP MACs are derived from the IPv6 addresses (a hash: 128
bits do not fit a MAC). One difference: IPv6 refuses ``via N dev vxlan-v6.routed onlink``
when N, the peer's address, is on a subnet of another device (the uplink): so the
gateway of such a route is the link-local address of the peer's VTEP MAC
(``vtep_gateway6``, EUI-64), a neighbour entry on the device only (Calico gives each VTEP
an address of its own for the same reason).

IPIP: the kernel's ``tunl0`` catches every IPIP packet for the node; routes are
``<block> via N dev tunl0 onlink``. This kernel has no ipip module: ``ensure_ipip``
says so in one line (tested for real in a VM).

Every function opens its own netlink socket (rtnl.py) in the target netns and closes
it. Hand-packed like everything else: a VXLAN device is one RTM_NEWLINK with five
attributes, a neighbour or FDB entry one RTM_NEWNEIGH; pyroute2 would only add a second
stack (and ~0.3 s of import) for these few messages.
"""

from __future__ import annotations

import errno as errnos
import hashlib
import ipaddress
import logging
import socket
from collections.abc import Iterable

from routed.dataplane import rtnl
from routed.dataplane.constants import IPIP_DEV, VXLAN6_DEV, VXLAN_DEV
from routed.dataplane.errors import DataplaneError
from routed.dataplane.netns import NetnsTarget
from routed.dataplane.rtnl import AF_BRIDGE, Link, Rtnl

log = logging.getLogger(__name__)

__all__ = [
    "VXLAN_DEV", "VXLAN6_DEV", "VXLAN_VNI", "VXLAN_PORT", "VXLAN_MTU", "IPIP_DEV", "IPIP_MTU",
    "vtep_mac", "vtep_gateway6", "ensure_vxlan", "remove_vxlan", "sync_vxlan_peers", "ensure_ipip",
]

VXLAN_VNI = 4096  # Calico's default VNI
VXLAN_PORT = 4789  # IANA VXLAN port
VXLAN_MTU = 1450  # 1500 - 50 bytes of outer IPv4 + UDP + VXLAN + inner Ethernet
IPIP_MTU = 1480  # 1500 - 20 bytes of outer IPv4

IPIP_MISSING = "this kernel has no IPIP support (ip link add type ipip: Unknown device type)"


# --------------------------------------------------------------------------- pure


def vtep_mac(node_ip: str) -> str:
    """The VTEP MAC of the node with address ``node_ip``: 0e:52 + the four IPv4 address
    bytes, or 0e:56 + four bytes of the IPv6 address's SHA-256 (on the IPv6 device).
    0x0e has the locally-administered bit set and the multicast bit clear, so it never
    collides with a vendor MAC; every node computes any peer's MAC by itself."""
    addr = ipaddress.ip_address(node_ip)
    if addr.version == 6:
        return "0e:56:" + ":".join(f"{b:02x}" for b in hashlib.sha256(addr.packed).digest()[:4])
    return "0e:52:" + ":".join(f"{b:02x}" for b in addr.packed)


def vtep_gateway6(node_ip: str) -> str:
    """The gateway of routes to the IPv6 node ``node_ip`` over vxlan-v6.routed: the
    EUI-64 link-local address of its VTEP MAC (exists only as our neighbour entry)."""
    mac = bytes.fromhex(vtep_mac(node_ip).replace(":", ""))
    eui = bytes([mac[0] ^ 0x02]) + mac[1:3] + b"\xff\xfe" + mac[3:]
    return str(ipaddress.IPv6Address(b"\xfe\x80" + bytes(6) + eui))


def _canonical(node_ip: str, version: int) -> str:
    addr = ipaddress.ip_address(node_ip)
    if addr.version != version:
        raise ValueError(f"VXLAN peers of this device are IPv{version} node addresses, not {node_ip}")
    return str(addr)


def device_version(name: str) -> int:
    """The underlay family of one of our VXLAN devices."""
    return 6 if name == VXLAN6_DEV else 4


# --------------------------------------------------------------------------- helpers


def _link(sock: Rtnl, name: str) -> Link | None:
    return sock.link(name=name)


def _set_link(sock: Rtnl, link: Link, mtu: int, address: str | None = None) -> None:
    """MTU, MAC and up, each only when it differs (a no-op resync sends nothing)."""
    change: dict = {}
    if link.mtu != mtu:
        change["mtu"] = mtu
    if address is not None and (link.address or "").lower() != address:
        change["address"] = address
    if not link.up:
        change["up"] = True
    if change:
        sock.request(rtnl.set_link(link.index, **change)).check(
            f"set {link.name} {' '.join(f'{k} {v}' for k, v in change.items())}")


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
    local_ip = _canonical(local_ip, device_version(name))
    mac = vtep_mac(local_ip)
    with Rtnl(netns) as sock:
        parent = _link(sock, parent_dev)
        if parent is None:
            raise DataplaneError(f"VXLAN device {name}: parent device {parent_dev} does not exist",
                                 errno=errnos.ENODEV)
        link = _link(sock, name)
        if link is not None:
            if link.kind != "vxlan":
                raise DataplaneError(f"{name} exists and is not a VXLAN device (kind {link.kind}); not touching it")
            wanted = rtnl.VxlanInfo(vni=vni, local=local_ip, parent=parent.index, port=port, learning=False)
            if link.vxlan != wanted:
                log.info("recreating %s: %s differs from %s", name, link.vxlan, wanted)
                sock.request(rtnl.del_link(index=link.index)).check(f"delete {name} to recreate it")
                link = None
        if link is None:
            sock.request(rtnl.new_vxlan(name, vni=vni, local=local_ip, parent=parent.index, port=port,
                                        address=mac, mtu=mtu)).check(
                f"create VXLAN device {name} (id {vni} local {local_ip} dev {parent_dev} dstport {port})")
            link = _link(sock, name)
            if link is None:
                raise DataplaneError(f"VXLAN device {name} vanished right after it was created")
        _set_link(sock, link, mtu, mac)
        return link.index


def remove_vxlan(netns: NetnsTarget, name: str = VXLAN_DEV) -> bool:
    """Delete the VXLAN device ``name``; False when there was none. A device of that
    name that is not VXLAN is left alone (DataplaneError)."""
    with Rtnl(netns) as sock:
        link = _link(sock, name)
        if link is None:
            return False
        if link.kind != "vxlan":
            raise DataplaneError(f"{name} is not a VXLAN device (kind {link.kind}); not deleting it")
        answer = sock.request(rtnl.del_link(index=link.index)).check(f"delete {name}", ignore=(errnos.ENODEV,))
        return answer.ok  # ENODEV: gone meanwhile


def sync_vxlan_peers(netns: NetnsTarget, peers: Iterable[str], name: str = VXLAN_DEV) -> tuple[set[str], set[str]]:
    """Make the peer entries on the VXLAN device ``name`` equal to ``peers`` (remote
    nodes' IPv4 addresses): for each N a permanent neighbour ``N lladdr vtep_mac(N)`` and
    a permanent FDB entry ``vtep_mac(N) dst N self``. Entries for nodes no longer listed
    are removed; only this device is read or written, and only permanent neighbours
    (the ones written here: the kernel's own dynamic entries are left to the kernel).

    Returns (added, removed) node IPs: added = peers whose neighbour or FDB entry was
    missing or wrong, removed = nodes whose entries were deleted."""
    version = device_version(name)
    want = {_canonical(p, version): None for p in peers}
    want_mac = {ip: vtep_mac(ip) for ip in want}
    # The neighbour entry of each peer: its own address (IPv4), its VTEP's link-local (IPv6).
    gateway = {ip: vtep_gateway6(ip) if version == 6 else ip for ip in want}
    node_of = {gw: ip for ip, gw in gateway.items()}
    mac_owner = {mac: ip for ip, mac in want_mac.items()}
    with Rtnl(netns) as sock:
        link = _link(sock, name)
        if link is None:
            raise DataplaneError(f"VXLAN device {name} does not exist (ensure_vxlan first)", errno=errnos.ENODEV)
        index = link.index
        family = socket.AF_INET6 if version == 6 else socket.AF_INET
        neighs = {n.address: n.mac for n in sock.neighbours(family, index) if n.permanent}
        fdb: dict[str, set[str]] = {}  # mac -> remote dsts
        for entry in sock.neighbours(AF_BRIDGE, index):
            if entry.address and entry.mac:
                fdb.setdefault(entry.mac, set()).add(entry.address)

        added: set[str] = set()
        removed: set[str] = set()
        steps: list[tuple[str, bytes, tuple[int, ...]]] = []  # (what, request, errnos that are fine)
        for ip, mac in want_mac.items():
            gw = gateway[ip]
            if neighs.get(gw) != mac:
                steps.append((f"neighbour {gw} lladdr {mac} dev {name}", rtnl.set_neighbour(index, gw, mac), ()))
                added.add(ip)
            have = fdb.get(mac, set())
            if have != {ip}:
                for stale in have - {ip}:  # a VXLAN FDB entry may hold several remotes
                    steps.append((f"delete fdb {mac} dst {stale} dev {name}", rtnl.del_fdb(index, mac, stale),
                                  (errnos.ENOENT,)))
                steps.append((f"fdb {mac} dst {ip} dev {name}", rtnl.set_fdb(index, mac, ip), ()))
                added.add(ip)
        for gw in neighs:
            if gw not in node_of:
                steps.append((f"delete neighbour {gw} dev {name}", rtnl.del_neighbour(index, gw),
                               (errnos.ENOENT,)))
                removed.add(gw)
        for mac, dsts in fdb.items():
            if mac not in mac_owner:
                for dst in dsts:
                    steps.append((f"delete fdb {mac} dst {dst} dev {name}", rtnl.del_fdb(index, mac, dst),
                                  (errnos.ENOENT,)))
                    removed.add(dst)
        # One send; every failure is reported, the first one raised (the others logged).
        failures = [f"{what}: {answer.reason()}"
                    for (what, _, fine), answer in zip(steps, sock.exchange([r for _, r, _ in steps]))
                    if answer.errno and answer.errno not in fine]
        for failure in failures[1:]:
            log.warning("%s", failure)
        if failures:
            raise DataplaneError(failures[0])
        return added, removed


# --------------------------------------------------------------------------- IPIP


def ensure_ipip(netns: NetnsTarget, mtu: int = IPIP_MTU) -> int:
    """Bring up ``tunl0`` with ``mtu`` and return its ifindex.

    ``tunl0`` is the fallback device of the ipip module, present in every netns once the
    module is loaded. Asking for ``tunl0`` of type ipip makes the kernel load the module
    (rtnetlink requests "rtnl-link-ipip"), which creates the fallback device, so the
    request itself then answers EEXIST: both are success. A kernel without IPIP answers
    EOPNOTSUPP ("Unknown device type" in ip's words): one clear DataplaneError."""
    with Rtnl(netns) as sock:
        link = _link(sock, IPIP_DEV)
        if link is None:
            answer = sock.request(rtnl.new_ipip(IPIP_DEV))
            if answer.errno == errnos.EOPNOTSUPP:
                raise DataplaneError(IPIP_MISSING, errno=answer.errno)
            answer.check(f"create {IPIP_DEV}", ignore=(errnos.EEXIST,))
            link = _link(sock, IPIP_DEV)
            if link is None:
                raise DataplaneError(f"{IPIP_DEV} did not appear after loading IPIP support")
        if link.kind != "ipip":
            raise DataplaneError(f"{IPIP_DEV} exists and is not an IPIP device (kind {link.kind})")
        _set_link(sock, link, mtu)
        return link.index
