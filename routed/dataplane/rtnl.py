"""A small rtnetlink client: the requests the pod dataplane makes, packed by hand.

Why not pyroute2: every call of pyroute2 0.9's synchronous ``IPRoute`` runs an asyncio
event loop to completion (~0.8 ms of CPU), and a pod's ADD makes a dozen of them. Here a
request is a few ``struct.pack`` calls, and the requests of one step go to the kernel in
one ``send()``: the kernel handles them in order and answers each (every request asks
for an ack), so each answer is matched back to its request by sequence number and one
failure never hides which step it was.

Built on bulk.py: its socket (``RtnlSocket``: opened in a netns, extended acks, strict
dump checking), its wire helpers and its ``Route`` packing. Two parts:

- request builders and answer parsers, pure (no socket, no root): ``new_veth``,
  ``set_link_up``, ``get_link``, ``del_link``, ``add_address``, ``add_route``,
  ``del_route``, ``get_nsid``, ``dump_routes``, ``dump_addresses``; ``Link``,
  ``Address``, ``RouteEntry``, ``parse_nsid``. Builders return a whole netlink message
  with sequence number 0: the socket numbers them when it sends them.
- ``Rtnl``, the socket: ``exchange`` (several requests, one send, one ``Answer`` each),
  ``request`` (one), ``query`` (one dump) and lookups built on them (``link``,
  ``nsid``, ``list_routes``, ``list_addresses``).

A socket belongs to the netns it was created in: ``Rtnl(netns)`` opens it there (None =
the calling thread's netns), and from then on it can be used from anywhere.
"""

from __future__ import annotations

import errno as errnos
import os
import socket
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

from routed.dataplane.bulk import (
    I32,
    IFINFOMSG,
    NLM_F_ACK,
    NLM_F_CREATE,
    NLM_F_DUMP,
    NLM_F_DUMP_INTR,
    NLM_F_EXCL,
    NLM_F_REPLACE,
    NLM_F_REQUEST,
    NLMSG_DONE,
    NLMSG_ERROR,
    RTA_DST,
    RTA_GATEWAY,
    RTA_OIF,
    RTA_TABLE,
    RTM_GETROUTE,
    RTM_NEWROUTE,
    RTMSG,
    U32,
    Route,
    RtnlSocket,
    iter_attrs,
    iter_messages,
    pack_add,
    pack_attr,
    pack_delete,
    pack_dump,
    pack_message,
    parse_error,
)
from routed.dataplane.errors import DataplaneError

__all__ = [
    "Rtnl", "Answer", "Link", "Address", "RouteEntry",
    "new_veth", "set_link_up", "get_link", "del_link", "add_address", "add_route", "del_route",
    "get_nsid", "parse_nsid", "dump_routes", "dump_addresses",
]

# --------------------------------------------------------------------------- constants
# From linux/rtnetlink.h, if_link.h, veth.h, if_addr.h, net_namespace.h (stable ABI).

RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK, RTM_SETLINK = 16, 17, 18, 19
RTM_NEWADDR, RTM_GETADDR = 20, 22
RTM_NEWNEIGH, RTM_DELNEIGH, RTM_GETNEIGH = 28, 29, 30
RTM_NEWNSID, RTM_GETNSID = 88, 90

IFF_UP = 0x1
IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_LINK = 1, 3, 4, 5
IFLA_LINKINFO, IFLA_NET_NS_FD, IFLA_LINK_NETNSID = 18, 28, 37
IFLA_INFO_KIND, IFLA_INFO_DATA = 1, 2
VETH_INFO_PEER = 1

IFADDRMSG = struct.Struct("=BBBBI")  # family, prefixlen, flags, scope, index
IFA_ADDRESS, IFA_LOCAL = 1, 2
IFA_F_NODAD = 0x02

NDMSG = struct.Struct("=BxxxiHBB")  # family, ifindex, state, flags, type
NDA_DST, NDA_LLADDR = 1, 2
NUD_PERMANENT = 0x80

RTGENMSG = struct.Struct("=Bxxx")  # family, padded to 4 bytes
NETNSA_NSID, NETNSA_FD = 1, 3

BUFFER = 64 * 1024  # one datagram per recv: a dump part is at most 32 KiB


# --------------------------------------------------------------------------- requests (pure)


def _ifname(name: str) -> bytes:
    return pack_attr(IFLA_IFNAME, name.encode() + b"\0")


def _mac(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", ""))


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
    linkinfo = pack_attr(IFLA_INFO_KIND, b"veth") + pack_attr(
        IFLA_INFO_DATA, pack_attr(VETH_INFO_PEER, peer_info))
    flags = IFF_UP if up else 0
    body = IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, flags, IFF_UP) + b"".join([
        _ifname(name),
        pack_attr(IFLA_MTU, U32.pack(mtu)),
        pack_attr(IFLA_ADDRESS, _mac(address)),
        pack_attr(IFLA_LINKINFO, linkinfo),
    ])
    return pack_message(RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, 0, body)


def set_link_up(index: int) -> bytes:
    """RTM_SETLINK: IFF_UP on (ifi_change names the one flag changed)."""
    body = IFINFOMSG.pack(socket.AF_UNSPEC, 0, index, IFF_UP, IFF_UP)
    return pack_message(RTM_SETLINK, NLM_F_REQUEST | NLM_F_ACK, 0, body)


def get_link(*, name: str | None = None, index: int = 0) -> bytes:
    """RTM_GETLINK of one link, by index or by name (ENODEV when there is none)."""
    if (name is None) == (not index):
        raise ValueError("get_link needs a name or an index")
    body = IFINFOMSG.pack(socket.AF_UNSPEC, 0, index, 0, 0) + (_ifname(name) if name else b"")
    return pack_message(RTM_GETLINK, NLM_F_REQUEST | NLM_F_ACK, 0, body)


def del_link(*, name: str | None = None, index: int = 0) -> bytes:
    """RTM_DELLINK by index or by name (a veth: both ends go, and every route through
    either)."""
    if (name is None) == (not index):
        raise ValueError("del_link needs a name or an index")
    body = IFINFOMSG.pack(socket.AF_UNSPEC, 0, index, 0, 0) + (_ifname(name) if name else b"")
    return pack_message(RTM_DELLINK, NLM_F_REQUEST | NLM_F_ACK, 0, body)


def add_address(index: int, address: str, prefixlen: int, *, nodad: bool = False) -> bytes:
    """RTM_NEWADDR (CREATE|EXCL), scope global: ``ip addr add A/P dev INDEX [nodad]``.
    EEXIST when the interface has it already."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    packed = socket.inet_pton(family, address)
    body = IFADDRMSG.pack(family, prefixlen, IFA_F_NODAD if nodad else 0, 0, index) + (
        pack_attr(IFA_LOCAL, packed) + pack_attr(IFA_ADDRESS, packed))
    return pack_message(RTM_NEWADDR, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, 0, body)


def add_route(route: Route, oif: int | None) -> bytes:
    """RTM_NEWROUTE (CREATE|EXCL) of ``route`` through ``oif`` (bulk's packing: scope link
    without a gateway, onlink, proto, table). EEXIST when the table has a route to that
    destination already."""
    return pack_add(route, 0, oif)


def del_route(route: Route, oif: int | None) -> bytes:
    """RTM_DELROUTE of the route of ``route.proto`` to ``route.dst`` through ``oif``.
    ESRCH when there is none."""
    return pack_delete(route, 0, oif)


def set_neighbour(index: int, address: str, mac: str) -> bytes:
    """RTM_NEWNEIGH (CREATE|REPLACE) of a permanent entry: ``ip neigh replace ADDRESS
    lladdr MAC dev INDEX nud permanent``."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    body = NDMSG.pack(family, index, NUD_PERMANENT, 0, 0) + (
        pack_attr(NDA_DST, socket.inet_pton(family, address)) + pack_attr(NDA_LLADDR, _mac(mac)))
    return pack_message(RTM_NEWNEIGH, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE, 0, body)


def get_nsid(netns_fd: int) -> bytes:
    """RTM_GETNSID: the id under which the socket's netns knows the netns of the fd
    (what links report as IFLA_LINK_NETNSID for a peer there)."""
    body = RTGENMSG.pack(socket.AF_UNSPEC) + pack_attr(NETNSA_FD, U32.pack(netns_fd))
    return pack_message(RTM_GETNSID, NLM_F_REQUEST | NLM_F_ACK, 0, body)


def dump_routes(family: int = socket.AF_UNSPEC, *, oif: int | None = None, proto: int = 0,
                table: int = 0) -> bytes:
    """RTM_GETROUTE dump, filtered by the kernel (strict checking) on the interface, the
    proto and the table given; ENODEV when ``oif`` does not exist."""
    return pack_dump(RTM_GETROUTE, 0, family, proto, table=table, oif=oif)


def dump_addresses(family: int = socket.AF_UNSPEC, *, index: int = 0) -> bytes:
    """RTM_GETADDR dump, of one interface when ``index`` is given (kernel-filtered)."""
    return pack_message(RTM_GETADDR, NLM_F_REQUEST | NLM_F_DUMP, 0,
                        IFADDRMSG.pack(family, 0, 0, 0, index))


# --------------------------------------------------------------------------- answers (pure)


def _text(value: memoryview) -> str:
    return bytes(value).split(b"\0", 1)[0].decode(errors="replace")


def _u32(value: memoryview) -> int:
    return U32.unpack_from(value, 0)[0]


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
                found["address"] = ":".join(f"{b:02x}" for b in bytes(value))
            elif kind == IFLA_LINK:
                found["peer"] = _u32(value)
            elif kind == IFLA_LINK_NETNSID:
                found["peer_netnsid"] = I32.unpack_from(value, 0)[0]
            elif kind == IFLA_LINKINFO:
                for info, data in iter_attrs(value):
                    if info == IFLA_INFO_KIND:
                        found["kind"] = _text(data)
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
                local = socket.inet_ntop(family, bytes(value))
            elif kind == IFA_ADDRESS:
                address = socket.inet_ntop(family, bytes(value))
        if (local or address) is None:
            return None
        # IFA_LOCAL is the interface's own address; IFA_ADDRESS the peer's on a
        # point-to-point address, otherwise the same (IPv6 sends only IFA_ADDRESS).
        return cls(family, local or address, prefixlen, scope, index)


@dataclass(frozen=True)
class RouteEntry:
    """An RTM_NEWROUTE answer, raw: ``dst`` None for a default route, ``oif`` None for a
    route without a device (blackhole, multipath)."""

    family: int
    dst: str | None
    dst_len: int
    gateway: str | None
    oif: int | None
    proto: int
    table: int
    scope: int
    type: int
    flags: int

    @classmethod
    def parse(cls, payload: memoryview) -> RouteEntry:
        family, dst_len, _, _, table, proto, scope, rtype, flags = RTMSG.unpack_from(payload, 0)
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
        return cls(family, dst, dst_len, gateway, oif, proto, table, scope, rtype, flags)


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
        text = os.strerror(self.errno)
        return f"{text} ({self.extack})" if self.extack else text

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


# --------------------------------------------------------------------------- the socket


class Rtnl(RtnlSocket):
    """One NETLINK_ROUTE socket in a netns, for a handful of requests at a time."""

    BUFFER = BUFFER

    def exchange(self, requests: Sequence[bytes]) -> list[Answer]:
        """Send ``requests`` (built above) in one send(), and return their answers in
        the same order. The kernel handles them one after the other and goes on after
        a failed one. A dump may only come last (the kernel refuses a second dump
        while one is being read)."""
        if not requests:
            return []  # (netlink answers an empty send() with ENODATA)
        seqs, batch = [], bytearray()
        for message in requests:
            seq = self.next_seq()
            seqs.append(seq)
            start = len(batch)
            batch += message
            U32.pack_into(batch, start + 8, seq)  # nlmsg_seq
        answers = {seq: Answer() for seq in seqs}
        try:
            self.sock.send(batch)
            waiting = set(seqs)
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
        return [answers[seq] for seq in seqs]

    def request(self, message: bytes) -> Answer:
        return self.exchange([message])[0]

    def query(self, message: bytes, what: str, ignore: tuple[int, ...] = ()) -> list[tuple[int, memoryview]]:
        """The messages of a dump, asked again when it was interrupted by a change.
        An error in ``ignore`` is an empty answer; any other raises DataplaneError."""
        for _ in range(3):
            answer = self.request(message)
            if answer.errno in ignore:
                return []
            answer.check(what)
            if not answer.interrupted:
                break
        return answer.messages

    # -- lookups

    def link(self, *, name: str | None = None, index: int = 0) -> Link | None:
        """The link of that name or index, None when there is none."""
        answer = self.request(get_link(name=name, index=index))
        return answer.check(f"get link {name or index}", ignore=(errnos.ENODEV,)).link()

    def nsid(self, netns_fd: int) -> int | None:
        """The id of the fd's netns as seen from this socket's netns (-1: none yet);
        None when the fd is not a netns (EINVAL)."""
        return self.request(get_nsid(netns_fd)).nsid()

    def list_routes(self, family: int = socket.AF_UNSPEC, *, oif: int | None = None, proto: int = 0,
               table: int = 0) -> list[RouteEntry]:
        """IPv4 and IPv6 routes through ``oif``, of ``proto``, in ``table`` (0: any).
        Filtered here too, for kernels without strict checking. A missing ``oif`` has
        no routes."""
        out = []
        for kind, payload in self.query(dump_routes(family, oif=oif, proto=proto, table=table),
                                        "dump routes", ignore=(errnos.ENODEV,)):
            if kind != RTM_NEWROUTE:
                continue
            route = RouteEntry.parse(payload)
            if (route.family in (socket.AF_INET, socket.AF_INET6)
                    and (oif is None or route.oif == oif)
                    and (not proto or route.proto == proto)
                    and (not table or route.table == table)):
                out.append(route)
        return out

    def list_addresses(self, family: int = socket.AF_UNSPEC, *, index: int = 0) -> list[Address]:
        out = []
        for kind, payload in self.query(dump_addresses(family, index=index), "dump addresses",
                                        ignore=(errnos.ENODEV,)):
            address = Address.parse(payload) if kind == RTM_NEWADDR else None
            if address is not None and (not index or address.index == index):
                out.append(address)
        return out
