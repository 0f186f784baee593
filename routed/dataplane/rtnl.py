"""rtnetlink, packed by hand: routed's one netlink layer (the codec and the socket).

Why no library: every call of pyroute2 0.9's synchronous ``IPRoute`` runs an asyncio
event loop to completion (~0.8 ms of CPU; ~1,500 routes/s one call per route), a pod's
ADD made a dozen of them, and a node learning 10,000 blocks needs them in one go. Here
a request is a few ``struct.pack`` calls, and many requests go to the kernel in one
``send()``: the kernel handles them in order and answers each (every request asks for
an ack), so each answer is matched back to its request by sequence number and one
failure never hides which request it was, nor holds up the others.

Two parts:

- the codec, pure (no socket, no root): ``Route`` (the one route type, from the BGP
  decision down to the kernel), request builders (``route_replace``, ``new_veth``,
  ``new_vxlan``, ``set_neighbour``, ...) and answer parsers (``parse_route``, ``Link``,
  ``Address``, ``Neighbour``). Builders return a whole netlink message with sequence
  number 0: the socket numbers them when it sends them.
- ``Rtnl``, the socket: ``exchange`` (a few requests, one send, one ``Answer`` each,
  with what the kernel sent back), ``transact`` (thousands of requests in batches, the
  errno of each), ``query`` (one dump) and lookups built on them.

A socket belongs to the netns it was created in: ``Rtnl(netns)`` opens it there (None =
the calling thread's netns), and from then on any thread may use it (one at a time).
Every number below is from the kernel's uapi headers (stable ABI).
"""

from __future__ import annotations

import errno as errnos
import os
import select
import socket
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from routed.dataplane.constants import IPIP_DEV, ROUTE_PROTO_BGP, VXLAN6_DEV, VXLAN_DEV
from routed.dataplane.errors import DataplaneError, NetnsNotFound
from routed.dataplane.netns import NetnsTarget, in_netns

__all__ = [
    "Route", "Rtnl", "Answer", "Link", "VxlanInfo", "Address", "Neighbour",
    "route_replace", "route_add", "route_delete", "dump_routes", "parse_route",
    "new_veth", "new_vxlan", "new_ipip", "set_link", "get_link", "del_link", "dump_links",
    "add_address", "dump_addresses", "set_neighbour", "del_neighbour", "dump_neighbours",
    "set_fdb", "del_fdb", "dump_fdb", "get_nsid", "new_wireguard", "Rule", "add_rule", "del_rule",
    "dump_rules", "parse_rule",
]

# --------------------------------------------------------------------------- constants

# linux/netlink.h
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_MULTI, NLM_F_ACK = 0x1, 0x2, 0x4
NLM_F_DUMP_INTR = 0x10
NLM_F_DUMP = 0x300
NLM_F_REPLACE, NLM_F_EXCL, NLM_F_CREATE = 0x100, 0x200, 0x400
NLM_F_CAPPED, NLM_F_ACK_TLVS = 0x100, 0x200  # flags of an NLMSG_ERROR answer
NLMSGERR_ATTR_MSG = 1
SOL_NETLINK = 270
NETLINK_CAP_ACK, NETLINK_EXT_ACK, NETLINK_GET_STRICT_CHK = 10, 11, 12
SO_RCVBUFFORCE = 33

# linux/rtnetlink.h
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK, RTM_SETLINK = 16, 17, 18, 19
RTM_NEWADDR, RTM_GETADDR = 20, 22
RTM_NEWROUTE, RTM_DELROUTE, RTM_GETROUTE = 24, 25, 26
RTM_NEWNEIGH, RTM_DELNEIGH, RTM_GETNEIGH = 28, 29, 30
RTM_NEWNSID, RTM_GETNSID = 88, 90
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_TABLE = 1, 4, 5, 15
RTN_UNICAST, RTN_BLACKHOLE, RTN_THROW = 1, 6, 9
# What Route expresses. throw: end the lookup in this table, go on with the next rule.
ROUTE_KINDS = {"unicast": RTN_UNICAST, "blackhole": RTN_BLACKHOLE, "throw": RTN_THROW}
RTM_NEWRULE, RTM_DELRULE, RTM_GETRULE = 32, 33, 34
FRA_PRIORITY, FRA_TABLE, FRA_PROTOCOL = 6, 15, 21
# Dumped by some kernels (Linux 6.1) with every rule, -1 when unset: no selector then.
FRA_SUPPRESS_IFGROUP, FRA_SUPPRESS_PREFIXLEN = 13, 14
_UNSET = 0xFFFFFFFF
FR_ACT_TO_TBL = 1
RT_SCOPE_UNIVERSE, RT_SCOPE_LINK, RT_SCOPE_NOWHERE = 0, 253, 255
RTNH_F_ONLINK = 0x4
RT_TABLE_MAIN = 254

# linux/if_link.h, if_addr.h, neighbour.h, net_namespace.h, veth.h
IFF_UP = 0x1
IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_LINK = 1, 3, 4, 5
IFLA_LINKINFO, IFLA_NET_NS_FD, IFLA_LINK_NETNSID = 18, 28, 37
IFLA_INFO_KIND, IFLA_INFO_DATA = 1, 2
VETH_INFO_PEER = 1
IFLA_VXLAN_ID, IFLA_VXLAN_LINK, IFLA_VXLAN_LOCAL, IFLA_VXLAN_LEARNING, IFLA_VXLAN_PORT = 1, 3, 4, 7, 15
IFLA_VXLAN_LOCAL6 = 17
IFA_ADDRESS, IFA_LOCAL = 1, 2
IFA_F_NODAD = 0x02
NDA_DST, NDA_LLADDR, NDA_IFINDEX = 1, 2, 8
NUD_NOARP, NUD_PERMANENT = 0x40, 0x80
NTF_SELF = 0x02
AF_BRIDGE = socket.AF_BRIDGE  # 7: the family of FDB entries
NETNSA_NSID, NETNSA_FD = 1, 3

NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
RTMSG = struct.Struct("=BBBBBBBBI")  # family, dst_len, src_len, tos, table, proto, scope, type, flags
IFINFOMSG = struct.Struct("=BxHiII")  # family, type, index, flags, change
IFADDRMSG = struct.Struct("=BBBBI")  # family, prefixlen, flags, scope, index
NDMSG = struct.Struct("=BxxxiHBB")  # family, ifindex, state, flags, type
RTGENMSG = struct.Struct("=Bxxx")  # family, padded to 4 bytes
RTATTR = struct.Struct("=HH")  # len, type
U32 = struct.Struct("=I")
I32 = struct.Struct("=i")
BE16 = struct.Struct("!H")

# Sending many: at most this many requests per send(). The kernel handles a send()
# synchronously, queueing one ack per request on our socket before send() returns, so
# the receive buffer must hold a whole batch of acks (each an skb of ~1 KiB truesize).
# The buffer is raised to RCVBUF (root may exceed rmem_max); if it still overflows the
# kernel drops acks and says ENOBUFS, and the unanswered requests are sent again in
# smaller batches (the callers' bulk requests, replace and delete, are idempotent).
BATCH = 1000
BATCH_BYTES = 96 * 1024  # under the default sndbuf (212992): no EMSGSIZE
RCVBUF = 8 * 1024 * 1024
BUFFER = 64 * 1024  # one datagram per recv: an ack, or a dump part of at most 32 KiB
ACK_TIMEOUT = 5.0  # seconds to wait for an ack that is not queued yet (should not happen)
RETRY_ROUNDS = 6
DUMP_RETRIES = 3
LOOPBACK_IFINDEX = 1  # the kernel gives lo ifindex 1 in every netns


# --------------------------------------------------------------------------- wire (pure)


def pack_attr(kind: int, payload: bytes) -> bytes:
    length = RTATTR.size + len(payload)
    return RTATTR.pack(length, kind) + payload + b"\0" * (-length & 3)


def pack_message(msg_type: int, flags: int, seq: int, body: bytes) -> bytes:
    return NLMSGHDR.pack(NLMSGHDR.size + len(body), msg_type, flags, seq, 0) + body


def iter_messages(data: bytes | memoryview) -> Iterator[tuple[int, int, int, memoryview]]:
    """(type, flags, seq, payload) for each netlink message in one datagram."""
    view = memoryview(data)
    offset, end = 0, len(view)
    while offset + NLMSGHDR.size <= end:
        length, msg_type, flags, seq, _ = NLMSGHDR.unpack_from(view, offset)
        if length < NLMSGHDR.size:
            break
        yield msg_type, flags, seq, view[offset + NLMSGHDR.size: offset + length]
        offset += (length + 3) & ~3


def iter_attrs(data: memoryview, offset: int = 0) -> Iterator[tuple[int, memoryview]]:
    end = len(data)
    while offset + RTATTR.size <= end:
        length, kind = RTATTR.unpack_from(data, offset)
        if length < RTATTR.size:
            break
        yield kind & 0x3FFF, data[offset + RTATTR.size: offset + length]  # drop NESTED/BYTEORDER bits
        offset += (length + 3) & ~3


def parse_error(flags: int, payload: memoryview) -> tuple[int, str]:
    """An NLMSG_ERROR answer: (errno, the kernel's extended message or ''); errno 0 is
    a plain ack."""
    (error,) = I32.unpack_from(payload, 0)
    text = ""
    if error and flags & NLM_F_ACK_TLVS:
        # The TLVs follow the echoed request: its header only when the answer is capped
        # (NETLINK_CAP_ACK), the whole request otherwise.
        (orig_len,) = U32.unpack_from(payload, 4)
        offset = 4 + (NLMSGHDR.size if flags & NLM_F_CAPPED else orig_len)
        for kind, value in iter_attrs(payload, (offset + 3) & ~3):
            if kind == NLMSGERR_ATTR_MSG:
                text = _text(value)
    return -error, text


def _text(value: memoryview) -> str:
    return bytes(value).split(b"\0", 1)[0].decode(errors="replace")


def _u32(value: memoryview) -> int:
    return U32.unpack_from(value, 0)[0]


def _family_of(addr: str) -> int:
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


def _mac(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", ""))


def _mac_text(value: memoryview | bytes) -> str:
    return ":".join(f"{b:02x}" for b in bytes(value))


def _ip(value: memoryview, family: int | None = None) -> str | None:
    raw = bytes(value)
    if family is None:
        family = {4: socket.AF_INET, 16: socket.AF_INET6}.get(len(raw))
    try:
        return socket.inet_ntop(family, raw) if family else None
    except (OSError, ValueError):
        return None


# --------------------------------------------------------------------------- Route (pure)


def _canonical_addr(addr: str, what: str) -> tuple[int, bytes, str]:
    family = _family_of(addr)
    try:
        packed = socket.inet_pton(family, addr)
    except OSError:
        raise ValueError(f"{what} {addr!r} is not an IP address") from None
    # inet_ntop here and when parsing the kernel's answers: the same spelling on both
    # sides, so routes compare equal as strings.
    return family, packed, socket.inet_ntop(family, packed)


@dataclass(frozen=True)
class Route:
    """One route, as routed decides it and programs it (and reads it back). ``dst`` and
    ``gateway`` are normalised on construction (ValueError for a bad CIDR, host bits
    set, mixed families, a blackhole with a next hop, an unknown kind). The scope
    follows from the rest, as with ``ip route``: link for a unicast route without
    gateway, universe otherwise."""

    dst: str
    gateway: str | None = None
    dev: str | None = None
    onlink: bool = False
    kind: str = "unicast"
    proto: int = ROUTE_PROTO_BGP
    table: int = RT_TABLE_MAIN
    # Derived, kept off equality and repr: the packed destination for the wire.
    _dst_packed: bytes = field(default=b"", init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        addr, slash, plen_text = self.dst.partition("/")
        family, packed, text = _canonical_addr(addr, "destination")
        bits = 32 if family == socket.AF_INET else 128
        try:
            plen = int(plen_text) if slash else bits
        except ValueError:
            raise ValueError(f"destination {self.dst!r}: bad prefix length") from None
        if not 0 <= plen <= bits:
            raise ValueError(f"destination {self.dst!r}: bad prefix length")
        if int.from_bytes(packed, "big") & ((1 << (bits - plen)) - 1):
            raise ValueError(f"destination {self.dst!r} has host bits set")
        object.__setattr__(self, "dst", f"{text}/{plen}")
        object.__setattr__(self, "_dst_packed", packed)
        if self.gateway is not None:
            gw_family, _, gw_text = _canonical_addr(self.gateway, "gateway")
            if gw_family != family:
                raise ValueError(f"{self.dst}: gateway {self.gateway} is of another address family")
            object.__setattr__(self, "gateway", gw_text)
        if self.kind not in ROUTE_KINDS:
            raise ValueError(f"{self.dst}: kind {self.kind!r} is not one of {', '.join(ROUTE_KINDS)}")
        if self.kind != "unicast" and (self.gateway or self.dev or self.onlink):
            raise ValueError(f"{self.dst}: a {self.kind} route has no gateway, device or onlink")
        if self.kind == "unicast" and not (self.gateway or self.dev):
            raise ValueError(f"{self.dst}: a unicast route needs a gateway or a device")
        if not 0 <= self.proto < 256 or not 0 < self.table < 2**32:
            raise ValueError(f"{self.dst}: proto or table out of range")

    @property
    def family(self) -> int:
        return socket.AF_INET6 if ":" in self.dst else socket.AF_INET

    @property
    def prefixlen(self) -> int:
        return int(self.dst.rpartition("/")[2])

    @property
    def address(self) -> str:
        """The destination without its prefix length."""
        return self.dst.rpartition("/")[0]

    @property
    def key(self) -> tuple[int, str]:
        """What the kernel tells routes apart by (for our purposes: we set neither tos
        nor metric): one route per (table, destination)."""
        return (self.table, self.dst)

    @property
    def encapsulation(self) -> str:
        """How the route leaves the node: "vxlan", "ipip" or "none" (by its device)."""
        return {VXLAN_DEV: "vxlan", VXLAN6_DEV: "vxlan6", IPIP_DEV: "ipip"}.get(self.dev or "", "none")

    def __str__(self) -> str:
        """ip-route style: '10.1.0.0/26 via 192.0.2.9 dev eth0 onlink'."""
        words = [self.dst] if self.kind == "unicast" else [self.kind, self.dst]
        if self.gateway:
            words += ["via", self.gateway]
        if self.dev:
            words += ["dev", self.dev]
        if self.onlink:
            words.append("onlink")
        if self.table != RT_TABLE_MAIN:
            words += ["table", str(self.table)]
        return " ".join(words)


# --------------------------------------------------------------------------- requests (pure)


def _rtmsg(route: Route, scope: int, rtype: int, flags: int) -> list[bytes]:
    return [
        RTMSG.pack(route.family, route.prefixlen, 0, 0, route.table if route.table < 256 else 0,
                   route.proto, scope, rtype, flags),
        pack_attr(RTA_TABLE, U32.pack(route.table)),
        pack_attr(RTA_DST, route._dst_packed),
    ]


def _newroute(route: Route, oif: int | None, create_flags: int) -> bytes:
    unicast = route.kind == "unicast"
    scope = RT_SCOPE_LINK if unicast and not route.gateway else RT_SCOPE_UNIVERSE
    body = _rtmsg(route, scope, ROUTE_KINDS[route.kind], RTNH_F_ONLINK if route.onlink else 0)
    if route.gateway:
        body.append(pack_attr(RTA_GATEWAY, socket.inet_pton(route.family, route.gateway)))
    if oif is not None:
        body.append(pack_attr(RTA_OIF, U32.pack(oif)))
    return pack_message(RTM_NEWROUTE, NLM_F_REQUEST | NLM_F_ACK | create_flags, 0, b"".join(body))


def route_replace(route: Route, oif: int | None) -> bytes:
    """RTM_NEWROUTE with CREATE|REPLACE: adds the route, or replaces the one to the same
    destination in the same table (the kernel's route identity), whatever its next hop.
    ``oif``: the ifindex of ``route.dev`` (the kernel wants the index)."""
    return _newroute(route, oif, NLM_F_CREATE | NLM_F_REPLACE)


def route_add(route: Route, oif: int | None) -> bytes:
    """RTM_NEWROUTE with CREATE|EXCL: adds the route; EEXIST when the table already has
    one to that destination (``ip route add``)."""
    return _newroute(route, oif, NLM_F_CREATE | NLM_F_EXCL)


def route_delete(route: Route, oif: int | None = None) -> bytes:
    """RTM_DELROUTE for our route to ``route.dst`` in its table, whatever its next hop:
    type 0 and scope NOWHERE match any (as ``ip route del`` sends them), and the proto
    makes the kernel skip a route of another proto to the same destination. With
    ``oif``, only a route through that interface matches. ESRCH when there is none."""
    body = _rtmsg(route, RT_SCOPE_NOWHERE, 0, 0)
    if oif is not None:
        body.append(pack_attr(RTA_OIF, U32.pack(oif)))
    return pack_message(RTM_DELROUTE, NLM_F_REQUEST | NLM_F_ACK, 0, b"".join(body))


def dump_routes(family: int = socket.AF_UNSPEC, *, proto: int = 0, table: int = 0,
                oif: int | None = None) -> bytes:
    """RTM_GETROUTE dump. With strict checking the kernel filters by proto, table and
    RTA_OIF itself (ENODEV when ``oif`` does not exist); without it (old kernels) it
    ignores them and ``Rtnl.routes`` filters."""
    body = RTMSG.pack(family, 0, 0, 0, table if table < 256 else 0, proto, 0, 0, 0)
    if table >= 256:
        body += pack_attr(RTA_TABLE, U32.pack(table))
    if oif is not None:
        body += pack_attr(RTA_OIF, U32.pack(oif))
    return pack_message(RTM_GETROUTE, NLM_F_REQUEST | NLM_F_DUMP, 0, body)


def _ifname(name: str) -> bytes:
    return pack_attr(IFLA_IFNAME, name.encode() + b"\0")


def _linkinfo(kind: str, data: bytes = b"") -> bytes:
    info = pack_attr(IFLA_INFO_KIND, kind.encode())
    return pack_attr(IFLA_LINKINFO, info + (pack_attr(IFLA_INFO_DATA, data) if data else b""))


def _create_link(body: bytes) -> bytes:
    return pack_message(RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, 0, body)


def new_veth(name: str, peer: str, peer_netns_fd: int, *, mtu: int, address: str,
             peer_address: str, up: bool = True) -> bytes:
    """RTM_NEWLINK (CREATE|EXCL) of the veth pair ``name`` <-> ``peer``, the peer created
    straight in the netns of ``peer_netns_fd`` (``ip link add NAME address A mtu M up
    type veth peer name PEER address PA mtu M netns FD``). EEXIST when either name is
    taken (in its netns)."""
    peer_info = IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + b"".join([
        _ifname(peer),
        pack_attr(IFLA_NET_NS_FD, U32.pack(peer_netns_fd)),
        pack_attr(IFLA_ADDRESS, _mac(peer_address)),
        pack_attr(IFLA_MTU, U32.pack(mtu)),
    ])
    flags = IFF_UP if up else 0
    return _create_link(IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, flags, IFF_UP) + b"".join([
        _ifname(name),
        pack_attr(IFLA_MTU, U32.pack(mtu)),
        pack_attr(IFLA_ADDRESS, _mac(address)),
        _linkinfo("veth", pack_attr(VETH_INFO_PEER, peer_info)),
    ]))


def new_vxlan(name: str, *, vni: int, local: str, parent: int, port: int, address: str,
              mtu: int) -> bytes:
    """RTM_NEWLINK (CREATE|EXCL): ``ip link add NAME address A mtu M type vxlan id VNI
    local LOCAL dev PARENT dstport PORT nolearning`` (down: ``set_link`` brings it up)."""
    data = b"".join([
        pack_attr(IFLA_VXLAN_ID, U32.pack(vni)),
        pack_attr(IFLA_VXLAN_LOCAL6 if ":" in local else IFLA_VXLAN_LOCAL,
                  socket.inet_pton(_family_of(local), local)),
        pack_attr(IFLA_VXLAN_LINK, U32.pack(parent)),
        pack_attr(IFLA_VXLAN_PORT, BE16.pack(port)),
        pack_attr(IFLA_VXLAN_LEARNING, b"\0"),
    ])
    return _create_link(IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + b"".join([
        _ifname(name),
        pack_attr(IFLA_MTU, U32.pack(mtu)),
        pack_attr(IFLA_ADDRESS, _mac(address)),
        _linkinfo("vxlan", data),
    ]))


def new_wireguard(name: str) -> bytes:
    """RTM_NEWLINK (CREATE|EXCL) of a kernel WireGuard device (EOPNOTSUPP without the
    module: the caller falls back to wireguard-go)."""
    return _create_link(IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + _ifname(name) + _linkinfo("wireguard"))


def new_ipip(name: str) -> bytes:
    """RTM_NEWLINK (CREATE|EXCL) of an IPIP device: makes the kernel load the ipip module
    (EOPNOTSUPP where it has none)."""
    return _create_link(IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + _ifname(name) + _linkinfo("ipip"))


def set_link(index: int, *, up: bool | None = None, mtu: int | None = None,
             address: str | None = None) -> bytes:
    """RTM_SETLINK: bring up/down (ifi_change names the one flag changed), MTU, MAC."""
    flags = IFF_UP if up else 0
    change = IFF_UP if up is not None else 0
    attrs = b""
    if mtu is not None:
        attrs += pack_attr(IFLA_MTU, U32.pack(mtu))
    if address is not None:
        attrs += pack_attr(IFLA_ADDRESS, _mac(address))
    body = IFINFOMSG.pack(socket.AF_UNSPEC, 0, index, flags, change) + attrs
    return pack_message(RTM_SETLINK, NLM_F_REQUEST | NLM_F_ACK, 0, body)


def _by_name_or_index(msg_type: int, name: str | None, index: int) -> bytes:
    if (name is None) == (not index):
        raise ValueError("a link is named by a name or an index")
    body = IFINFOMSG.pack(socket.AF_UNSPEC, 0, index, 0, 0) + (_ifname(name) if name else b"")
    return pack_message(msg_type, NLM_F_REQUEST | NLM_F_ACK, 0, body)


def get_link(*, name: str | None = None, index: int = 0) -> bytes:
    """RTM_GETLINK of one link, by index or by name (ENODEV when there is none)."""
    return _by_name_or_index(RTM_GETLINK, name, index)


def del_link(*, name: str | None = None, index: int = 0) -> bytes:
    """RTM_DELLINK by index or by name (a veth: both ends go, and every route through
    either)."""
    return _by_name_or_index(RTM_DELLINK, name, index)


def dump_links() -> bytes:
    return pack_message(RTM_GETLINK, NLM_F_REQUEST | NLM_F_DUMP, 0, IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0))


def add_address(index: int, address: str, prefixlen: int, *, nodad: bool = False) -> bytes:
    """RTM_NEWADDR (CREATE|EXCL), scope global: ``ip addr add A/P dev INDEX [nodad]``.
    EEXIST when the interface has it already."""
    family = _family_of(address)
    packed = socket.inet_pton(family, address)
    body = IFADDRMSG.pack(family, prefixlen, IFA_F_NODAD if nodad else 0, 0, index) + (
        pack_attr(IFA_LOCAL, packed) + pack_attr(IFA_ADDRESS, packed))
    return pack_message(RTM_NEWADDR, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, 0, body)


def dump_addresses(family: int = socket.AF_UNSPEC, *, index: int = 0) -> bytes:
    """RTM_GETADDR dump, of one interface when ``index`` is given (kernel-filtered)."""
    return pack_message(RTM_GETADDR, NLM_F_REQUEST | NLM_F_DUMP, 0, IFADDRMSG.pack(family, 0, 0, 0, index))


def set_neighbour(index: int, address: str, mac: str) -> bytes:
    """RTM_NEWNEIGH (CREATE|REPLACE) of a permanent entry: ``ip neigh replace ADDRESS
    lladdr MAC dev INDEX nud permanent``."""
    family = _family_of(address)
    body = NDMSG.pack(family, index, NUD_PERMANENT, 0, 0) + (
        pack_attr(NDA_DST, socket.inet_pton(family, address)) + pack_attr(NDA_LLADDR, _mac(mac)))
    return pack_message(RTM_NEWNEIGH, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE, 0, body)


def del_neighbour(index: int, address: str) -> bytes:
    """RTM_DELNEIGH: ``ip neigh del ADDRESS dev INDEX`` (ENOENT when there is none)."""
    family = _family_of(address)
    body = NDMSG.pack(family, index, 0, 0, 0) + pack_attr(NDA_DST, socket.inet_pton(family, address))
    return pack_message(RTM_DELNEIGH, NLM_F_REQUEST | NLM_F_ACK, 0, body)


def dump_neighbours(family: int, index: int) -> bytes:
    """RTM_GETNEIGH dump of one interface's entries (strict checking wants the index as
    NDA_IFINDEX, the header zero)."""
    body = NDMSG.pack(family, 0, 0, 0, 0) + pack_attr(NDA_IFINDEX, U32.pack(index))
    return pack_message(RTM_GETNEIGH, NLM_F_REQUEST | NLM_F_DUMP, 0, body)


def _fdb(msg_type: int, flags: int, index: int, mac: str, remote: str, state: int) -> bytes:
    body = NDMSG.pack(AF_BRIDGE, index, state, NTF_SELF, 0) + (
        pack_attr(NDA_LLADDR, _mac(mac)) + pack_attr(NDA_DST, socket.inet_pton(_family_of(remote), remote)))
    return pack_message(msg_type, NLM_F_REQUEST | NLM_F_ACK | flags, 0, body)


def set_fdb(index: int, mac: str, remote: str) -> bytes:
    """``bridge fdb replace MAC dev INDEX dst REMOTE self permanent``: frames to MAC go
    over UDP to REMOTE (a VXLAN device's own forwarding table)."""
    return _fdb(RTM_NEWNEIGH, NLM_F_CREATE | NLM_F_REPLACE, index, mac, remote, NUD_PERMANENT | NUD_NOARP)


def del_fdb(index: int, mac: str, remote: str) -> bytes:
    """``bridge fdb del MAC dev INDEX dst REMOTE self`` (ENOENT when there is none)."""
    return _fdb(RTM_DELNEIGH, 0, index, mac, remote, NUD_PERMANENT | NUD_NOARP)


def dump_fdb(index: int) -> bytes:
    """The FDB entries of one device (ndm_ifindex: the bridge port to dump)."""
    return pack_message(RTM_GETNEIGH, NLM_F_REQUEST | NLM_F_DUMP, 0, NDMSG.pack(AF_BRIDGE, index, 0, 0, 0))


@dataclass(frozen=True)
class Rule:
    """A policy routing rule ``from all lookup TABLE priority PRIORITY proto PROTO``: the
    only shape routed installs (and, read back, the only shape it recognises)."""

    priority: int
    table: int
    proto: int
    family: int = socket.AF_INET

    def __str__(self) -> str:
        return f"from all lookup {self.table} priority {self.priority} proto {self.proto}"


def _rule(msg_type: int, flags: int, rule: Rule) -> bytes:
    body = (RTMSG.pack(rule.family, 0, 0, 0, rule.table if rule.table < 256 else 0, 0, 0, FR_ACT_TO_TBL, 0)
            + pack_attr(FRA_PRIORITY, U32.pack(rule.priority)) + pack_attr(FRA_TABLE, U32.pack(rule.table))
            + pack_attr(FRA_PROTOCOL, bytes([rule.proto])))
    return pack_message(msg_type, NLM_F_REQUEST | NLM_F_ACK | flags, 0, body)


def add_rule(rule: Rule) -> bytes:
    """RTM_NEWRULE (CREATE|EXCL): ``ip rule add priority P lookup T proto X``."""
    return _rule(RTM_NEWRULE, NLM_F_CREATE | NLM_F_EXCL, rule)


def del_rule(rule: Rule) -> bytes:
    """RTM_DELRULE of that rule (ENOENT when there is none)."""
    return _rule(RTM_DELRULE, 0, rule)


def dump_rules(family: int) -> bytes:
    return pack_message(RTM_GETRULE, NLM_F_REQUEST | NLM_F_DUMP, 0, RTMSG.pack(family, 0, 0, 0, 0, 0, 0, 0, 0))


def parse_rule(payload: memoryview) -> Rule | None:
    """A kernel rule as a Rule; None for any other shape (selectors, other actions)."""
    family, dst_len, src_len, tos, table, _, _, action, _ = RTMSG.unpack_from(payload, 0)
    if action != FR_ACT_TO_TBL or dst_len or src_len or tos:
        return None
    priority, proto, others = 0, 0, False
    for kind, value in iter_attrs(payload, RTMSG.size):
        if kind == FRA_PRIORITY:
            priority = _u32(value)
        elif kind == FRA_TABLE:
            table = _u32(value)
        elif kind == FRA_PROTOCOL:
            proto = value[0]
        elif kind in (FRA_SUPPRESS_IFGROUP, FRA_SUPPRESS_PREFIXLEN) and _u32(value) == _UNSET:
            pass
        else:
            others = True  # a selector (fwmark, iif, ...): not a rule of ours
    return None if others else Rule(priority, table, proto, family)


def get_nsid(netns_fd: int) -> bytes:
    """RTM_GETNSID: the id under which the socket's netns knows the netns of the fd
    (what links report as IFLA_LINK_NETNSID for a peer there)."""
    body = RTGENMSG.pack(socket.AF_UNSPEC) + pack_attr(NETNSA_FD, U32.pack(netns_fd))
    return pack_message(RTM_GETNSID, NLM_F_REQUEST | NLM_F_ACK, 0, body)


# --------------------------------------------------------------------------- answers (pure)


def parse_route(payload: memoryview, ifnames: dict[int, str]) -> Route | None:
    """A kernel route as a Route (its device named by ``ifnames``, the ifindex as text
    when it is not there), or None for what Route does not express (types other than
    unicast/blackhole, multipath, IPv4 via IPv6)."""
    family, dst_len, _, _, table, proto, _, rtype, rtm_flags = RTMSG.unpack_from(payload, 0)
    if rtype not in (RTN_UNICAST, RTN_BLACKHOLE, RTN_THROW) or family not in (socket.AF_INET, socket.AF_INET6):
        return None
    dst = gateway = oif = None
    for kind, value in iter_attrs(payload, RTMSG.size):
        if kind == RTA_DST:
            dst = socket.inet_ntop(family, bytes(value))
        elif kind == RTA_GATEWAY and len(value) in (4, 16):
            gateway = socket.inet_ntop(family, bytes(value))
        elif kind == RTA_OIF:
            oif = _u32(value)
        elif kind == RTA_TABLE:
            table = _u32(value)
    if dst is None:
        dst = "0.0.0.0" if family == socket.AF_INET else "::"
    try:
        if rtype in (RTN_BLACKHOLE, RTN_THROW):
            # IPv6 reports its blackholes as "dev lo": not part of what was asked for.
            kind = "blackhole" if rtype == RTN_BLACKHOLE else "throw"
            return Route(f"{dst}/{dst_len}", kind=kind, proto=proto, table=table)
        if gateway is None and oif is None:
            return None  # multipath: not something routed programs
        return Route(f"{dst}/{dst_len}", gateway=gateway,
                     dev=ifnames.get(oif, str(oif)) if oif is not None else None,
                     onlink=bool(rtm_flags & RTNH_F_ONLINK), proto=proto, table=table)
    except ValueError:
        return None  # nothing Route can express (should not happen for these types)


@dataclass(frozen=True)
class VxlanInfo:
    """The settings of a VXLAN device that cannot change while it exists."""

    vni: int | None = None
    local: str | None = None
    parent: int | None = None  # ifindex
    port: int | None = None
    learning: bool | None = None

    @classmethod
    def parse(cls, data: memoryview) -> VxlanInfo:
        found: dict = {}
        for kind, value in iter_attrs(data):
            if kind == IFLA_VXLAN_ID:
                found["vni"] = _u32(value)
            elif kind == IFLA_VXLAN_LOCAL:
                found["local"] = _ip(value, socket.AF_INET)
            elif kind == IFLA_VXLAN_LOCAL6:
                found["local"] = _ip(value, socket.AF_INET6)
            elif kind == IFLA_VXLAN_LINK:
                found["parent"] = _u32(value)
            elif kind == IFLA_VXLAN_PORT:
                found["port"] = BE16.unpack_from(value, 0)[0]
            elif kind == IFLA_VXLAN_LEARNING:
                found["learning"] = bool(value[0])
        return cls(**found)


@dataclass(frozen=True)
class Link:
    """An RTM_NEWLINK answer, the parts the dataplane looks at."""

    index: int
    name: str
    flags: int = 0
    mtu: int | None = None
    address: str | None = None  # MAC, "ee:ee:ee:ee:ee:ee"
    kind: str | None = None  # IFLA_INFO_KIND: "veth", "vxlan", ...
    peer: int | None = None  # IFLA_LINK: a veth's peer's ifindex (in the peer's netns)
    peer_netnsid: int | None = None  # IFLA_LINK_NETNSID: where the peer is, None = here
    vxlan: VxlanInfo | None = None  # IFLA_INFO_DATA of a VXLAN device

    @property
    def up(self) -> bool:
        return bool(self.flags & IFF_UP)

    @classmethod
    def parse(cls, payload: memoryview) -> Link:
        _, _, index, flags, _ = IFINFOMSG.unpack_from(payload, 0)
        found: dict = {}
        for kind, value in iter_attrs(payload, IFINFOMSG.size):
            if kind == IFLA_IFNAME:
                found["name"] = _text(value)
            elif kind == IFLA_MTU:
                found["mtu"] = _u32(value)
            elif kind == IFLA_ADDRESS:
                found["address"] = _mac_text(value)
            elif kind == IFLA_LINK:
                found["peer"] = _u32(value)
            elif kind == IFLA_LINK_NETNSID:
                found["peer_netnsid"] = I32.unpack_from(value, 0)[0]
            elif kind == IFLA_LINKINFO:
                data = None
                for info, value2 in iter_attrs(value):
                    if info == IFLA_INFO_KIND:
                        found["kind"] = _text(value2)
                    elif info == IFLA_INFO_DATA:
                        data = value2
                if data is not None and found.get("kind") == "vxlan":
                    found["vxlan"] = VxlanInfo.parse(data)
        return cls(index=index, name=found.pop("name", ""), flags=flags, **found)


@dataclass(frozen=True)
class Address:
    """An RTM_NEWADDR answer."""

    family: int
    address: str
    prefixlen: int
    scope: int
    index: int

    @classmethod
    def parse(cls, payload: memoryview) -> Address | None:
        family, prefixlen, _, scope, index = IFADDRMSG.unpack_from(payload, 0)
        local = address = None
        for kind, value in iter_attrs(payload, IFADDRMSG.size):
            if kind == IFA_LOCAL:
                local = _ip(value, family)
            elif kind == IFA_ADDRESS:
                address = _ip(value, family)
        if (local or address) is None:
            return None
        # IFA_LOCAL is the interface's own address; IFA_ADDRESS the peer's on a
        # point-to-point address, otherwise the same (IPv6 sends only IFA_ADDRESS).
        return cls(family, local or address, prefixlen, scope, index)


@dataclass(frozen=True)
class Neighbour:
    """An RTM_NEWNEIGH answer: a neighbour entry, or (family AF_BRIDGE) an FDB entry,
    whose ``address`` is the remote (NDA_DST) and ``mac`` the MAC it stands for."""

    family: int
    index: int
    state: int
    address: str | None
    mac: str | None

    @property
    def permanent(self) -> bool:
        return bool(self.state & NUD_PERMANENT)

    @classmethod
    def parse(cls, payload: memoryview) -> Neighbour:
        family, index, state, _, _ = NDMSG.unpack_from(payload, 0)
        address = mac = None
        for kind, value in iter_attrs(payload, NDMSG.size):
            if kind == NDA_DST:
                address = _ip(value)
            elif kind == NDA_LLADDR:
                mac = _mac_text(value)
        return cls(family, index, state, address, mac)


def parse_nsid(payload: memoryview) -> int | None:
    """The id in an RTM_NEWNSID answer (-1: the netns has no id here)."""
    for kind, value in iter_attrs(payload, RTGENMSG.size):
        if kind == NETNSA_NSID:
            return I32.unpack_from(value, 0)[0]
    return None


@dataclass
class Answer:
    """The kernel's answer to one request: ``errno`` 0 = done, ``extack`` the kernel's
    explanation of an error (may be empty), ``messages`` (type, payload) of what it
    sent back (the link asked for, the parts of a dump)."""

    errno: int = 0
    extack: str = ""
    messages: list[tuple[int, memoryview]] = field(default_factory=list)
    interrupted: bool = False  # a dump that changed while it was read (NLM_F_DUMP_INTR)

    @property
    def ok(self) -> bool:
        return self.errno == 0

    def reason(self) -> str:
        """One line: "File exists" or "Invalid argument (the kernel's explanation)"."""
        return reason(self.errno, self.extack)

    def check(self, what: str, error: type[DataplaneError] = DataplaneError,
              ignore: tuple[int, ...] = ()) -> Answer:
        """Raise ``error("<what>: <reason>")`` unless the request succeeded or failed
        with one of the errnos in ``ignore``."""
        if self.errno and self.errno not in ignore:
            raise error(f"{what}: {self.reason()}", errno=self.errno)
        return self

    def link(self) -> Link | None:
        """The link in the answer to get_link (None after an error: check it first)."""
        for kind, payload in self.messages:
            if kind == RTM_NEWLINK:
                return Link.parse(payload)
        return None

    def nsid(self) -> int | None:
        """The id in the answer to get_nsid (None after an error)."""
        for kind, payload in self.messages:
            if kind == RTM_NEWNSID:
                return parse_nsid(payload)
        return None


def reason(code: int, extack: str = "") -> str:
    text = os.strerror(code)
    return f"{text} ({extack})" if extack else text


# --------------------------------------------------------------------------- the socket


class Rtnl:
    """One NETLINK_ROUTE socket in a netns."""

    def __init__(self, netns: NetnsTarget = None):
        try:
            with in_netns(netns):
                self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                                          socket.NETLINK_ROUTE)
        except OSError as err:
            # FileNotFoundError: no such netns; EINVAL: the file is not a netns.
            cls = NetnsNotFound if err.errno in (errnos.ENOENT, errnos.EINVAL) else DataplaneError
            raise cls(f"open netlink in netns {netns}: {err.strerror}", errno=err.errno) from err
        try:
            self.sock.bind((0, 0))
            for option in (NETLINK_CAP_ACK, NETLINK_EXT_ACK, NETLINK_GET_STRICT_CHK):
                try:
                    self.sock.setsockopt(SOL_NETLINK, option, 1)
                except OSError:
                    pass  # older kernel: bigger acks, no extended messages, we filter dumps
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RCVBUF)  # root only
            except OSError:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
        except BaseException:
            self.sock.close()
            raise
        self.seq = 0
        self.resent = 0  # requests sent again after their acks were lost (tests, stats)
        self.buf = bytearray(BUFFER)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Rtnl:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def next_seq(self) -> int:
        self.seq = self.seq % 0xFFFFFFFF + 1
        return self.seq

    def _stamp(self, requests: Sequence[bytes]) -> list[tuple[int, bytes]]:
        out = []
        for message in requests:
            seq = self.next_seq()
            stamped = bytearray(message)
            U32.pack_into(stamped, 8, seq)  # nlmsg_seq
            out.append((seq, bytes(stamped)))
        return out

    # -- a few requests, whole answers

    def exchange(self, requests: Sequence[bytes]) -> list[Answer]:
        """Send ``requests`` (built above) in one send(), and return their answers in
        the same order. The kernel handles them one after the other and goes on after
        a failed one. A dump may only come last (the kernel refuses a second dump
        while one is being read)."""
        if not requests:
            return []  # (netlink answers an empty send() with ENODATA)
        stamped = self._stamp(requests)
        answers = {seq: Answer() for seq, _ in stamped}
        try:
            self.sock.send(b"".join(message for _, message in stamped))
            waiting = set(answers)
            while waiting:
                n = self.sock.recv_into(self.buf, len(self.buf), socket.MSG_TRUNC)
                if n > len(self.buf):
                    raise DataplaneError(f"netlink answer of {n} bytes truncated", errno=errnos.EMSGSIZE)
                for kind, flags, seq, payload in iter_messages(bytes(self.buf[:n])):
                    if seq not in waiting:
                        continue  # an answer to an earlier, abandoned request
                    answer = answers[seq]
                    if flags & NLM_F_DUMP_INTR:
                        answer.interrupted = True
                    if kind == NLMSG_ERROR:
                        answer.errno, answer.extack = parse_error(flags, payload)
                        waiting.discard(seq)
                    elif kind == NLMSG_DONE:
                        (code,) = I32.unpack_from(payload, 0) if len(payload) >= 4 else (0,)
                        answer.errno = -code if code < 0 else 0
                        waiting.discard(seq)
                    else:
                        answer.messages.append((kind, payload))
        except OSError as err:  # ENOBUFS: answers were dropped; never with a few requests
            raise DataplaneError(f"netlink: {err.strerror}", errno=err.errno) from err
        return [answers[seq] for seq, _ in stamped]

    def request(self, message: bytes) -> Answer:
        return self.exchange([message])[0]

    def query(self, message: bytes, what: str, ignore: tuple[int, ...] = ()) -> list[tuple[int, memoryview]]:
        """The messages of a dump, asked again when it was interrupted by a change.
        An error in ``ignore`` is an empty answer; any other raises DataplaneError."""
        for _ in range(DUMP_RETRIES):
            answer = self.request(message)
            if answer.errno in ignore:
                return []
            answer.check(what)
            if not answer.interrupted:
                break
        return answer.messages

    # -- many requests, acks only

    def transact(self, requests: Sequence[bytes]) -> list[tuple[int, str]]:
        """Send ``requests`` in batches; (errno, extack) for each, in order (errno 0 =
        done). When the receive buffer overflows, the batch shrinks to what fitted, and
        the requests whose acks were lost are sent again afterwards: only for requests
        that may be repeated (replace, delete)."""
        stamped = self._stamp(requests)
        results: dict[int, tuple[int, str]] = {}
        pending, batch = stamped, BATCH
        for _ in range(RETRY_ROUNDS):
            for chunk in _chunks(pending, lambda: batch):
                self.sock.send(b"".join(m for _, m in chunk))
                overflow, got = self._collect({seq for seq, _ in chunk}, results)
                if overflow:
                    batch = max(1, min(batch // 2, got))
            pending = [m for m in pending if m[0] not in results]
            if not pending:
                break
            self.resent += len(pending)
        for seq, _ in pending:
            results.setdefault(seq, (errnos.ENOBUFS, "no answer from the kernel"))
        return [results[seq] for seq, _ in stamped]

    def _collect(self, waiting: set[int], results: dict[int, tuple[int, str]]) -> tuple[bool, int]:
        """Read the acks of one batch into ``results``: (did the buffer overflow, how
        many acks arrived)."""
        overflow, got = False, 0
        while waiting:
            try:
                n = self.sock.recv_into(self.buf, len(self.buf), socket.MSG_DONTWAIT)
            except BlockingIOError:
                # Acks of a batch are queued before send() returns: nothing more is
                # coming once the queue is empty after an overflow. Otherwise wait.
                if overflow or not select.select([self.sock], [], [], ACK_TIMEOUT)[0]:
                    break
                continue
            except OSError as err:
                if err.errno == errnos.ENOBUFS:
                    overflow = True
                    continue
                raise
            for msg_type, flags, seq, payload in iter_messages(memoryview(self.buf)[:n]):
                if msg_type == NLMSG_ERROR and seq in waiting:
                    results[seq] = parse_error(flags, payload)
                    waiting.discard(seq)
                    got += 1
        return overflow, got

    # -- lookups

    def link(self, *, name: str | None = None, index: int = 0) -> Link | None:
        """The link of that name or index, None when there is none."""
        answer = self.request(get_link(name=name, index=index))
        return answer.check(f"get link {name or index}", ignore=(errnos.ENODEV,)).link()

    def links(self) -> dict[int, str]:
        """Every link's name by ifindex."""
        return {link.index: link.name for link in
                (Link.parse(p) for k, p in self.query(dump_links(), "dump links") if k == RTM_NEWLINK)}

    def nsid(self, netns_fd: int) -> int | None:
        """The id of the fd's netns as seen from this socket's netns (-1: none yet);
        None when the fd is not a netns (EINVAL)."""
        return self.request(get_nsid(netns_fd)).nsid()

    def routes(self, family: int = socket.AF_UNSPEC, *, proto: int = 0, table: int = 0,
               oif: int | None = None, ifnames: dict[int, str] | None = None) -> list[Route]:
        """The routes Route expresses, of ``proto``, in ``table`` (0: any), through
        ``oif``; devices named by ``ifnames`` (default: a dump of the links). Filtered
        here too, for kernels without strict checking. A missing ``oif`` has none."""
        parts = self.query(dump_routes(family, proto=proto, table=table, oif=oif), "dump routes",
                           ignore=(errnos.ENODEV,))
        if ifnames is None:
            ifnames = self.links()
        wanted_dev = ifnames.get(oif, str(oif)) if oif is not None else None
        out = []
        for kind, payload in parts:
            if kind != RTM_NEWROUTE:
                continue
            route = parse_route(payload, ifnames)
            if (route is not None
                    and (oif is None or route.dev == wanted_dev)
                    and (not proto or route.proto == proto)
                    and (not table or route.table == table)):
                out.append(route)
        return out

    def addresses(self, family: int = socket.AF_UNSPEC, *, index: int = 0) -> list[Address]:
        out = []
        for kind, payload in self.query(dump_addresses(family, index=index), "dump addresses",
                                        ignore=(errnos.ENODEV,)):
            address = Address.parse(payload) if kind == RTM_NEWADDR else None
            if address is not None and (not index or address.index == index):
                out.append(address)
        return out

    def rules(self, family: int) -> list[Rule]:
        """The rules of ``family`` that Rule expresses."""
        return [rule for kind, payload in self.query(dump_rules(family), "dump rules")
                if kind == RTM_NEWRULE and (rule := parse_rule(payload)) is not None]

    def neighbours(self, family: int, index: int) -> list[Neighbour]:
        """The neighbour entries of one interface (family AF_BRIDGE: its FDB)."""
        request = dump_fdb(index) if family == AF_BRIDGE else dump_neighbours(family, index)
        out = []
        for kind, payload in self.query(request, "dump neighbours", ignore=(errnos.ENODEV,)):
            entry = Neighbour.parse(payload) if kind == RTM_NEWNEIGH else None
            if entry is not None and entry.index == index and entry.family == family:
                out.append(entry)
        return out


def _chunks(messages: list[tuple[int, bytes]], count) -> Iterator[list[tuple[int, bytes]]]:
    """Consecutive slices of at most count() messages and BATCH_BYTES bytes; count is
    asked again for every slice, so the caller can shrink it on the way."""
    chunk: list[tuple[int, bytes]] = []
    size = 0
    for item in messages:
        if chunk and (len(chunk) >= count() or size + len(item[1]) > BATCH_BYTES):
            yield chunk
            chunk, size = [], 0
        chunk.append(item)
        size += len(item[1])
    if chunk:
        yield chunk
