"""Programming thousands of routes at once over one raw rtnetlink socket.

Why not pyroute2: one ``IPRoute.route()`` call per route runs at ~2,500 routes/s here,
so a node learning 10,000 blocks would spend four seconds per full resync. Here the
RTM_NEWROUTE / RTM_DELROUTE messages are packed by hand and sent many per sendmsg()
on one NETLINK_ROUTE socket; the kernel processes them one by one and acks each, and
every ack (or error) is matched back to its route by sequence number. So one bad route
fails alone, with the kernel's reason, and never holds up the others.

Layout: the pure part (the Route type, packing requests, parsing answers, the sync
plan) comes first and needs no root; the socket and the public functions
(``apply``, ``current``, ``sync``) follow.

Every route carries a ``proto`` number, and deletes name it, so the kernel itself
refuses to delete a route of another proto: the learned-route reconciler (proto 202,
ROUTE_PROTO_BGP) cannot remove the node's own routes (201) or the administrator's.
"""

from __future__ import annotations

import errno as errnos
import os
import select
import socket
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from routed.dataplane.constants import ROUTE_PROTO_BGP
from routed.dataplane.errors import DataplaneError, NetnsNotFound
from routed.dataplane.netns import in_netns

__all__ = ["Route", "SyncResult", "RtnlSocket", "apply", "apply_with", "current", "sync", "plan_sync", "same_route"]

# --------------------------------------------------------------------------- constants
# From linux/netlink.h and linux/rtnetlink.h (stable kernel ABI).

NLMSG_ERROR, NLMSG_DONE = 2, 3
RTM_NEWLINK, RTM_GETLINK = 16, 18
RTM_NEWROUTE, RTM_DELROUTE, RTM_GETROUTE = 24, 25, 26

NLM_F_REQUEST, NLM_F_MULTI, NLM_F_ACK = 0x1, 0x2, 0x4
NLM_F_DUMP_INTR = 0x10
NLM_F_DUMP = 0x300
NLM_F_REPLACE, NLM_F_EXCL, NLM_F_CREATE = 0x100, 0x200, 0x400
NLM_F_CAPPED, NLM_F_ACK_TLVS = 0x100, 0x200  # flags of an NLMSG_ERROR answer
NLMSGERR_ATTR_MSG = 1

SOL_NETLINK = 270
NETLINK_CAP_ACK, NETLINK_EXT_ACK, NETLINK_GET_STRICT_CHK = 10, 11, 12

RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_PRIORITY, RTA_TABLE = 1, 4, 5, 6, 15
IFLA_IFNAME = 3

RTN_UNICAST, RTN_BLACKHOLE = 1, 6
RTN_NAMES = {1: "unicast", 2: "local", 3: "broadcast", 4: "anycast", 5: "multicast",
             6: "blackhole", 7: "unreachable", 8: "prohibit", 9: "throw", 10: "nat"}
KINDS = {"unicast": RTN_UNICAST, "blackhole": RTN_BLACKHOLE}  # what apply() can program

RT_SCOPE_UNIVERSE, RT_SCOPE_LINK, RT_SCOPE_NOWHERE = 0, 253, 255
RTNH_F_ONLINK = 0x4
RT_TABLE_MAIN = 254

NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
RTMSG = struct.Struct("=BBBBBBBBI")  # family, dst_len, src_len, tos, table, proto, scope, type, flags
IFINFOMSG = struct.Struct("=BxHiII")  # family, type, index, flags, change
RTATTR = struct.Struct("=HH")  # len, type
U32 = struct.Struct("=I")
I32 = struct.Struct("=i")

# Sending: at most this many requests per sendmsg(). The kernel handles a sendmsg()
# synchronously, queueing one ack per request on our socket before send() returns, so
# the receive buffer must hold a whole batch of acks (each one an skb of ~1 KiB
# truesize). The buffer is raised to RCVBUF below (root may exceed rmem_max); if it
# still overflows the kernel drops acks and says ENOBUFS, and the unanswered requests
# are sent again in smaller batches (replace and delete are both idempotent).
BATCH = 1000
BATCH_BYTES = 96 * 1024  # under the default sndbuf (212992): no EMSGSIZE
RCVBUF = 8 * 1024 * 1024
ACK_TIMEOUT = 5.0  # seconds to wait for an ack that is not queued yet (should not happen)
RETRY_ROUNDS = 6
DUMP_RETRIES = 3


# --------------------------------------------------------------------------- Route (pure)


def _family_of(addr: str) -> int:
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


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
    """One route, as routed programs it. ``dst`` and ``gateway`` are normalised on
    construction (ValueError for a bad CIDR, host bits set, mixed families, a blackhole
    with a next hop, an unknown kind). The scope follows from the rest, as with
    ``ip route``: link for a unicast route without gateway, universe otherwise."""

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
        if self.kind not in KINDS:
            raise ValueError(f"{self.dst}: kind {self.kind!r} is not one of {', '.join(KINDS)}")
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
    def key(self) -> tuple[int, str]:
        """What the kernel tells routes apart by (for our purposes: we set neither tos
        nor metric): one route per (table, destination)."""
        return (self.table, self.dst)

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


@dataclass
class SyncResult:
    added: list[Route] = field(default_factory=list)  # replaced: missing or different before
    removed: list[Route] = field(default_factory=list)  # extra routes of the proto, deleted
    failed: list[tuple[Route, str]] = field(default_factory=list)  # (route, one-line reason)


# --------------------------------------------------------------------------- packing (pure)


def pack_attr(kind: int, payload: bytes) -> bytes:
    length = RTATTR.size + len(payload)
    return RTATTR.pack(length, kind) + payload + b"\0" * (-length & 3)


def pack_message(msg_type: int, flags: int, seq: int, body: bytes) -> bytes:
    return NLMSGHDR.pack(NLMSGHDR.size + len(body), msg_type, flags, seq, 0) + body


def pack_replace(route: Route, seq: int, oif: int | None) -> bytes:
    """RTM_NEWROUTE with CREATE|REPLACE: adds the route, or replaces the one to the same
    destination in the same table (the kernel's route identity), whatever its next hop."""
    return _pack_newroute(route, seq, oif, NLM_F_CREATE | NLM_F_REPLACE)


def pack_add(route: Route, seq: int, oif: int | None) -> bytes:
    """RTM_NEWROUTE with CREATE|EXCL: adds the route; EEXIST when the table already has
    one to that destination (``ip route add``)."""
    return _pack_newroute(route, seq, oif, NLM_F_CREATE | NLM_F_EXCL)


def _pack_newroute(route: Route, seq: int, oif: int | None, create_flags: int) -> bytes:
    unicast = route.kind == "unicast"
    scope = RT_SCOPE_LINK if unicast and not route.gateway else RT_SCOPE_UNIVERSE
    rtm_flags = RTNH_F_ONLINK if route.onlink else 0
    body = [
        RTMSG.pack(route.family, route.prefixlen, 0, 0, route.table if route.table < 256 else 0,
                   route.proto, scope, KINDS[route.kind], rtm_flags),
        pack_attr(RTA_TABLE, U32.pack(route.table)),
        pack_attr(RTA_DST, route._dst_packed),
    ]
    if route.gateway:
        body.append(pack_attr(RTA_GATEWAY, socket.inet_pton(route.family, route.gateway)))
    if oif is not None:
        body.append(pack_attr(RTA_OIF, U32.pack(oif)))
    return pack_message(RTM_NEWROUTE, NLM_F_REQUEST | NLM_F_ACK | create_flags, seq, b"".join(body))


def pack_delete(route: Route, seq: int, oif: int | None = None) -> bytes:
    """RTM_DELROUTE for our route to ``route.dst`` in its table, whatever its next hop:
    type 0 and scope NOWHERE match any (as ``ip route del`` sends them), and the proto
    makes the kernel skip a route of another proto to the same destination. With
    ``oif``, only a route through that interface matches."""
    body = [
        RTMSG.pack(route.family, route.prefixlen, 0, 0, route.table if route.table < 256 else 0,
                   route.proto, RT_SCOPE_NOWHERE, 0, 0),
        pack_attr(RTA_TABLE, U32.pack(route.table)),
        pack_attr(RTA_DST, route._dst_packed),
    ]
    if oif is not None:
        body.append(pack_attr(RTA_OIF, U32.pack(oif)))
    return pack_message(RTM_DELROUTE, NLM_F_REQUEST | NLM_F_ACK, seq, b"".join(body))


def pack_dump(msg_type: int, seq: int, family: int = socket.AF_UNSPEC, proto: int = 0,
              table: int = 0, oif: int | None = None) -> bytes:
    """A dump request. With NETLINK_GET_STRICT_CHK the kernel filters routes by
    rtm_protocol, table and RTA_OIF itself; without it (old kernels) it ignores them and
    the parser filters."""
    if msg_type == RTM_GETROUTE:
        body = RTMSG.pack(family, 0, 0, 0, table if table < 256 else 0, proto, 0, 0, 0)
        if table >= 256:
            body += pack_attr(RTA_TABLE, U32.pack(table))
        if oif is not None:
            body += pack_attr(RTA_OIF, U32.pack(oif))
    else:
        body = IFINFOMSG.pack(family, 0, 0, 0, 0)
    return pack_message(msg_type, NLM_F_REQUEST | NLM_F_DUMP, seq, body)


# --------------------------------------------------------------------------- parsing (pure)


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
                text = bytes(value).split(b"\0", 1)[0].decode(errors="replace")
    return -error, text


def parse_route(payload: memoryview, ifnames: dict[int, str]) -> Route | None:
    """A kernel route as a Route, or None for what Route cannot express (types other
    than unicast/blackhole, multipath, cached clones, IPv4 via IPv6)."""
    family, dst_len, _, _, table, proto, _, rtype, rtm_flags = RTMSG.unpack_from(payload, 0)
    if rtype not in (RTN_UNICAST, RTN_BLACKHOLE) or family not in (socket.AF_INET, socket.AF_INET6):
        return None
    dst = gateway = None
    oif = None
    for kind, value in iter_attrs(payload, RTMSG.size):
        if kind == RTA_DST:
            dst = socket.inet_ntop(family, bytes(value))
        elif kind == RTA_GATEWAY:
            gateway = socket.inet_ntop(family, bytes(value))
        elif kind == RTA_OIF:
            (oif,) = U32.unpack_from(value, 0)
        elif kind == RTA_TABLE:
            (table,) = U32.unpack_from(value, 0)
    if dst is None:
        dst = "0.0.0.0" if family == socket.AF_INET else "::"
    try:
        if rtype == RTN_BLACKHOLE:
            # IPv6 reports its blackholes as "dev lo": not part of what was asked for.
            return Route(f"{dst}/{dst_len}", kind="blackhole", proto=proto, table=table)
        if gateway is None and oif is None:
            return None  # multipath: not something routed programs
        return Route(
            f"{dst}/{dst_len}",
            gateway=gateway,
            dev=ifnames.get(oif, str(oif)) if oif is not None else None,
            onlink=bool(rtm_flags & RTNH_F_ONLINK),
            proto=proto,
            table=table,
        )
    except ValueError:
        return None  # nothing Route can express (should not happen for these types)


def parse_link(payload: memoryview) -> tuple[int, str] | None:
    _, _, index, _, _ = IFINFOMSG.unpack_from(payload, 0)
    for kind, value in iter_attrs(payload, IFINFOMSG.size):
        if kind == IFLA_IFNAME:
            return index, bytes(value).split(b"\0", 1)[0].decode()
    return None


# --------------------------------------------------------------------------- sync plan (pure)


def same_route(want: Route, have: Route) -> bool:
    """Does the kernel's ``have`` already do what ``want`` asks? A desired route without
    a device leaves the choice to the kernel, so any device matches."""
    return (
        want.key == have.key
        and want.kind == have.kind
        and want.gateway == have.gateway
        and want.onlink == have.onlink
        and want.proto == have.proto
        and (want.dev is None or want.dev == have.dev)
    )


def plan_sync(
    desired: Iterable[Route], kernel: Iterable[Route], proto: int
) -> tuple[list[Route], list[Route], list[tuple[Route, str]]]:
    """(to replace, to delete, refused) to make the kernel's ``proto`` routes equal to
    ``desired``. ``kernel`` is every route of the tables concerned, any proto.

    A desired route whose destination is held by a route of another proto is refused,
    not replaced: a replace would silently remove that route (the node's own block
    blackhole, the administrator's static route), and this reconciler only ever
    removes routes of its own proto."""
    want: dict[tuple[int, str], Route] = {}
    for route in desired:
        if route.proto != proto:
            raise ValueError(f"{route}: proto {route.proto}, but this sync manages proto {proto}")
        want[route.key] = route  # the last one for a destination wins
    ours: dict[tuple[int, str], list[Route]] = {}
    foreign: dict[tuple[int, str], Route] = {}
    for route in kernel:
        if route.proto == proto:
            ours.setdefault(route.key, []).append(route)
        else:
            foreign.setdefault(route.key, route)
    replace, refused = [], []
    for key, route in want.items():
        have = ours.get(key, [])
        if any(same_route(route, h) for h in have):
            continue
        if not have and key in foreign:
            other = foreign[key]
            refused.append((route, f"{route}: the destination already has a proto {other.proto} route ({other}); not replacing it"))
            continue
        replace.append(route)
    delete = [h for key, have in ours.items() if key not in want for h in have]
    return replace, delete, refused


# --------------------------------------------------------------------------- the socket


class RtnlSocket:
    """One raw NETLINK_ROUTE socket in a netns. The netns of a socket is fixed when it
    is created, so only the creation happens inside ``in_netns``; after that any thread
    may use it (one at a time)."""

    BUFFER = 1 << 20  # bytes of the receive buffer (one datagram per recv)

    def __init__(self, netns: str | None):
        try:
            with in_netns(netns):
                self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                                          socket.NETLINK_ROUTE)
        except OSError as err:
            cls = NetnsNotFound if isinstance(err, FileNotFoundError) else DataplaneError
            raise cls(f"open netlink in netns {netns}: {err.strerror}", errno=err.errno) from err
        try:
            self.sock.bind((0, 0))
            for option in (NETLINK_CAP_ACK, NETLINK_EXT_ACK, NETLINK_GET_STRICT_CHK):
                try:
                    self.sock.setsockopt(SOL_NETLINK, option, 1)
                except OSError:
                    pass  # older kernel: bigger acks, no extended messages, parser filters
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, 33, RCVBUF)  # SO_RCVBUFFORCE (root)
            except OSError:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
        except BaseException:
            self.sock.close()
            raise
        self.seq = 0
        self.resent = 0  # requests sent again after their acks were lost (for tests, stats)
        self.buf = bytearray(self.BUFFER)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RtnlSocket:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def next_seq(self) -> int:
        self.seq = self.seq % 0xFFFFFFFF + 1
        return self.seq

    # -- requests with acks

    def transact(self, messages: list[tuple[int, bytes]]) -> dict[int, tuple[int, str]]:
        """Send (seq, message) requests in batches; {seq: (errno, extack)} for each
        (errno 0 = done). When the receive buffer overflows, the batch shrinks to what
        fitted, and the requests whose acks were lost are sent again afterwards:
        replace and delete are both idempotent."""
        results: dict[int, tuple[int, str]] = {}
        pending, batch = messages, BATCH
        for _ in range(RETRY_ROUNDS):
            for chunk in _chunks(pending, lambda: batch):
                self.sock.send(b"".join(m for _, m in chunk))
                overflow, got = self._collect({seq for seq, _ in chunk}, results)
                if overflow:
                    batch = max(1, min(batch // 2, got))
            pending = [m for m in pending if m[0] not in results]
            if not pending:
                return results
            self.resent += len(pending)
        for seq, _ in pending:
            results[seq] = (errnos.ENOBUFS, "no answer from the kernel")
        return results

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

    # -- dumps

    def dump(self, msg_type: int, family: int = socket.AF_UNSPEC, proto: int = 0) -> list[tuple[int, memoryview]]:
        """(type, payload) of every message of a dump, retried when the kernel says the
        dump was interrupted by a change (NLM_F_DUMP_INTR)."""
        for attempt in range(DUMP_RETRIES):
            seq = self.next_seq()
            self.sock.send(pack_dump(msg_type, seq, family, proto))
            out, interrupted = [], False
            while True:
                n = self.sock.recv_into(self.buf, len(self.buf))
                data = bytes(self.buf[:n])  # the buffer is reused: keep a copy
                done = False
                for kind, flags, mseq, payload in iter_messages(data):
                    if mseq != seq:
                        continue
                    if flags & NLM_F_DUMP_INTR:
                        interrupted = True
                    if kind == NLMSG_DONE:
                        done = True
                    elif kind == NLMSG_ERROR:
                        code, text = parse_error(flags, payload)
                        if code:
                            raise DataplaneError(f"netlink dump: {os.strerror(code)}{_extra(text)}", errno=code)
                        done = True
                    else:
                        out.append((kind, payload))
                if done:
                    break
            if not interrupted or attempt == DUMP_RETRIES - 1:
                return out
        return out

    def links(self) -> dict[int, str]:
        out = {}
        for kind, payload in self.dump(RTM_GETLINK):
            if kind == RTM_NEWLINK and (link := parse_link(payload)):
                out[link[0]] = link[1]
        return out

    def routes(self, family: int = socket.AF_UNSPEC, proto: int = 0) -> list[Route]:
        """Every route of ``proto`` (0 = any) that Route can express, all tables."""
        ifnames = self.links()
        out = []
        for kind, payload in self.dump(RTM_GETROUTE, family, proto):
            if kind != RTM_NEWROUTE:
                continue
            route = parse_route(payload, ifnames)
            if route is not None and (not proto or route.proto == proto):
                out.append(route)
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


def _delete_name(route: Route) -> str:
    table = f" table {route.table}" if route.table != RT_TABLE_MAIN else ""
    return f"delete {route.dst}{table} proto {route.proto}"


def _extra(text: str) -> str:
    return f" ({text})" if text else ""


# --------------------------------------------------------------------------- public API


def apply_with(rtnl: RtnlSocket, replace: Iterable[Route] = (), delete: Iterable[Route] = ()) -> list[tuple[Route, str]]:
    """``apply`` on a socket the caller holds open (several calls, one socket)."""
    failed: list[tuple[Route, str]] = []
    replace, delete = list(replace), list(delete)
    by_seq: dict[int, tuple[Route, bool]] = {}  # seq -> (route, is a delete)
    messages: list[tuple[int, bytes]] = []
    # Deletes first: a delete and a replace of the same destination (a move) end with
    # the new route.
    for route in delete:
        seq = rtnl.next_seq()
        by_seq[seq] = (route, True)
        messages.append((seq, pack_delete(route, seq)))
    ifindex: dict[str, int] | None = None
    for route in replace:
        oif = None
        if route.dev is not None:
            if ifindex is None:
                ifindex = {name: index for index, name in rtnl.links().items()}
            oif = ifindex.get(route.dev)
            if oif is None:
                failed.append((route, f"{route}: {os.strerror(errnos.ENODEV)}"))
                continue
        seq = rtnl.next_seq()
        by_seq[seq] = (route, False)
        messages.append((seq, pack_replace(route, seq, oif)))
    for seq, (code, text) in rtnl.transact(messages).items():
        route, is_delete = by_seq[seq]
        if code == 0 or (is_delete and code == errnos.ESRCH):  # already gone: fine
            continue
        what = _delete_name(route) if is_delete else str(route)
        failed.append((route, f"{what}: {os.strerror(code)}{_extra(text)}"))
    return failed


def apply(netns: str | None, replace: Iterable[Route] = (), delete: Iterable[Route] = ()) -> list[tuple[Route, str]]:
    """Replace (add or overwrite) and delete routes in ``netns`` (None = this netns).

    A replace overwrites whatever route the table has to that destination, of any
    proto: the caller has decided (``sync`` is the careful one and refuses that).
    A delete removes the route of ``route.proto`` to ``route.dst`` in ``route.table``,
    whatever its next hop; one that is already gone is not a failure. Returns the
    failures as (route, one-line reason); raises only when the netns cannot be reached
    (NetnsNotFound / DataplaneError), never for a single bad route."""
    with RtnlSocket(netns) as rtnl:
        return apply_with(rtnl, replace, delete)


def current(netns: str | None, proto: int = ROUTE_PROTO_BGP, family: int = socket.AF_UNSPEC) -> set[Route]:
    """The routes with ``proto`` in ``netns``, all tables (a dump)."""
    with RtnlSocket(netns) as rtnl:
        return set(rtnl.routes(family, proto))


def sync(netns: str | None, desired: Iterable[Route], proto: int = ROUTE_PROTO_BGP) -> SyncResult:
    """Make the kernel's ``proto`` routes equal to ``desired``: replace the missing and
    different ones, delete the extra ones. Touches only routes of ``proto``; a desired
    destination held by another proto's route is reported as failed (see plan_sync).
    Every route in ``desired`` must carry ``proto`` (ValueError otherwise)."""
    desired = list(desired)
    with RtnlSocket(netns) as rtnl:
        kernel = rtnl.routes()
        replace, delete, refused = plan_sync(desired, kernel, proto)
        failed = apply_with(rtnl, replace, delete)
    bad = {id(route) for route, _ in failed}
    return SyncResult(
        added=[r for r in replace if id(r) not in bad],
        removed=[r for r in delete if id(r) not in bad],
        failed=refused + failed,
    )
