"""routed.dataplane.rtnl, routed's one netlink codec and socket: the requests' bytes
(no root: decoded with pyroute2's own parsers, an independent reading of the wire
format; pyroute2 is a test dependency only), the answers' parsing and the
request/answer matching (a fake socket), then every primitive against the real kernel
inside throw-away network namespaces (root), read back with iproute2."""

from __future__ import annotations

import errno
import os
import socket
import struct

import pytest

from routed.dataplane import rtnl
from routed.dataplane.errors import DataplaneError, NetnsNotFound
from routed.dataplane.netns import in_netns, open_netns
from routed.dataplane.rtnl import (
    IFINFOMSG,
    NLMSGHDR,
    RTM_DELROUTE,
    RTMSG,
    RTNH_F_ONLINK,
    Address,
    Answer,
    Link,
    Neighbour,
    Route,
    Rtnl,
    VxlanInfo,
    iter_messages,
    pack_attr,
    pack_message,
    parse_route,
)
from tests.netns.nsutil import ip, ip_json, links, netns, require_root  # noqa: F401  (fixture)

NLM_F_REQUEST, NLM_F_ACK, NLM_F_EXCL, NLM_F_CREATE, NLM_F_DUMP = 0x1, 0x4, 0x200, 0x400, 0x300
MAC = "ee:ee:ee:ee:ee:ee"
PEER_MAC = "02:11:22:33:44:55"


def decode(cls, data: bytes):
    msg = cls(data)
    msg.decode()
    return msg


def header(data: bytes) -> tuple[int, int, int, int, int]:
    """(length, type, flags, seq, pid)"""
    return NLMSGHDR.unpack_from(data, 0)


# --------------------------------------------------------------------------- requests (pure)


def test_new_veth_is_one_newlink_with_the_peer_in_another_netns():
    from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

    data = rtnl.new_veth("cali0123456789a", "eth0", 7, mtu=1450, address=MAC, peer_address=PEER_MAC)
    length, kind, flags, seq, _ = header(data)
    assert (length, kind, seq) == (len(data), rtnl.RTM_NEWLINK, 0)
    assert flags == NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
    m = decode(ifinfmsg, data)
    assert (m["index"], m["flags"], m["change"]) == (0, rtnl.IFF_UP, rtnl.IFF_UP)
    assert m.get_attr("IFLA_IFNAME") == "cali0123456789a"
    assert m.get_attr("IFLA_MTU") == 1450
    assert m.get_attr("IFLA_ADDRESS") == MAC
    info = m.get_attr("IFLA_LINKINFO")
    assert info.get_attr("IFLA_INFO_KIND") == "veth"
    peer = info.get_attr("IFLA_INFO_DATA").get_attr("VETH_INFO_PEER")
    assert peer["index"] == 0 and peer["flags"] == 0
    assert peer.get_attr("IFLA_IFNAME") == "eth0"
    assert peer.get_attr("IFLA_NET_NS_FD") == 7
    assert peer.get_attr("IFLA_ADDRESS") == PEER_MAC
    assert peer.get_attr("IFLA_MTU") == 1450
    # Names go with their NUL, as iproute2 sends them.
    assert b"cali0123456789a\0" in data and b"eth0\0" in data

    down = decode(ifinfmsg, rtnl.new_veth("a", "b", 3, mtu=1500, address=MAC, peer_address=PEER_MAC, up=False))
    assert (down["flags"], down["change"]) == (0, rtnl.IFF_UP)


def test_link_requests():
    from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

    up = rtnl.set_link(5, up=True)
    assert header(up)[1:3] == (rtnl.RTM_SETLINK, NLM_F_REQUEST | NLM_F_ACK)
    assert IFINFOMSG.unpack_from(up, NLMSGHDR.size) == (0, 0, 5, rtnl.IFF_UP, rtnl.IFF_UP)

    by_name = decode(ifinfmsg, rtnl.get_link(name="cali1"))
    assert header(by_name.data)[1:3] == (rtnl.RTM_GETLINK, NLM_F_REQUEST | NLM_F_ACK)
    assert (by_name["index"], by_name.get_attr("IFLA_IFNAME")) == (0, "cali1")
    by_index = rtnl.get_link(index=9)
    assert len(by_index) == NLMSGHDR.size + IFINFOMSG.size  # no attributes
    assert IFINFOMSG.unpack_from(by_index, NLMSGHDR.size)[2] == 9

    gone = rtnl.del_link(index=9)
    assert header(gone)[1:3] == (rtnl.RTM_DELLINK, NLM_F_REQUEST | NLM_F_ACK)
    assert IFINFOMSG.unpack_from(gone, NLMSGHDR.size)[2] == 9
    assert decode(ifinfmsg, rtnl.del_link(name="cali1")).get_attr("IFLA_IFNAME") == "cali1"

    for build in (rtnl.get_link, rtnl.del_link):
        with pytest.raises(ValueError):
            build()
        with pytest.raises(ValueError):
            build(name="x", index=3)


def test_add_address():
    from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg

    v4 = decode(ifaddrmsg, rtnl.add_address(4, "10.0.0.5", 32))
    assert v4["header"]["type"] == rtnl.RTM_NEWADDR
    assert v4["header"]["flags"] == NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
    assert (v4["family"], v4["prefixlen"], v4["flags"], v4["scope"], v4["index"]) == (socket.AF_INET, 32, 0, 0, 4)
    assert (v4.get_attr("IFA_LOCAL"), v4.get_attr("IFA_ADDRESS")) == ("10.0.0.5", "10.0.0.5")

    v6 = decode(ifaddrmsg, rtnl.add_address(4, "fd00::5", 128, nodad=True))
    assert (v6["family"], v6["prefixlen"], v6["flags"]) == (socket.AF_INET6, 128, rtnl.IFA_F_NODAD)
    assert v6.get_attr("IFA_LOCAL") == "fd00::5"


def test_route_requests():
    from pyroute2.netlink.rtnl.rtmsg import rtmsg

    link_route = decode(rtmsg, rtnl.route_add(Route("169.254.1.1/32", dev="eth0", proto=201), 3))
    assert link_route["header"]["type"] == rtnl.RTM_NEWROUTE
    # add, not replace: EEXIST is what tells another pod's route apart
    assert link_route["header"]["flags"] == NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
    assert (link_route["dst_len"], link_route["proto"], link_route["scope"], link_route["table"]) == (32, 201, 253, 254)
    assert (link_route.get_attr("RTA_DST"), link_route.get_attr("RTA_OIF")) == ("169.254.1.1", 3)

    default = decode(rtmsg, rtnl.route_add(
        Route("0.0.0.0/0", gateway="169.254.1.1", dev="eth0", onlink=True, proto=201), 3))
    assert (default["dst_len"], default["scope"], default["flags"]) == (0, 0, RTNH_F_ONLINK)
    assert default.get_attr("RTA_GATEWAY") == "169.254.1.1"

    v6 = decode(rtmsg, rtnl.route_add(Route("::/0", gateway="fe80::1", dev="eth0", proto=201), 3))
    assert (v6["family"], v6.get_attr("RTA_GATEWAY"), v6.get_attr("RTA_OIF")) == (socket.AF_INET6, "fe80::1", 3)

    gone = decode(rtmsg, rtnl.route_delete(Route("10.0.0.5/32", dev="cali1", proto=201), 8))
    assert gone["header"]["type"] == RTM_DELROUTE
    assert (gone["proto"], gone["scope"], gone["type"]) == (201, 255, 0)  # any type, any scope
    assert (gone.get_attr("RTA_DST"), gone.get_attr("RTA_OIF")) == ("10.0.0.5", 8)


def test_get_nsid():
    from pyroute2.netlink.rtnl.nsidmsg import nsidmsg

    data = rtnl.get_nsid(9)
    assert header(data)[1:3] == (rtnl.RTM_GETNSID, NLM_F_REQUEST | NLM_F_ACK)
    assert data[NLMSGHDR.size:NLMSGHDR.size + 4] == b"\0\0\0\0"  # rtgenmsg, padded to 4
    assert decode(nsidmsg, data).get_attr("NETNSA_FD") == 9


def test_dump_requests_carry_the_kernel_side_filters():
    from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
    from pyroute2.netlink.rtnl.rtmsg import rtmsg

    routes = decode(rtmsg, rtnl.dump_routes(socket.AF_INET6, oif=7, proto=201, table=254))
    assert routes["header"]["flags"] == NLM_F_REQUEST | NLM_F_DUMP
    assert (routes["family"], routes["proto"], routes["table"]) == (socket.AF_INET6, 201, 254)
    assert (routes["dst_len"], routes["scope"]) == (0, 0)  # strict checking refuses anything else
    assert routes.get_attr("RTA_OIF") == 7
    assert decode(rtmsg, rtnl.dump_routes()).get_attr("RTA_OIF") is None

    addrs = decode(ifaddrmsg, rtnl.dump_addresses(index=7))
    assert addrs["header"]["flags"] == NLM_F_REQUEST | NLM_F_DUMP
    assert (addrs["family"], addrs["prefixlen"], addrs["index"]) == (socket.AF_UNSPEC, 0, 7)


# --------------------------------------------------------------------------- answers (pure)


def test_link_parse():
    u32 = struct.Struct("=I").pack
    payload = IFINFOMSG.pack(0, 1, 12, rtnl.IFF_UP | 0x1000, 0) + b"".join([
        pack_attr(rtnl.IFLA_IFNAME, b"cali1\0"),
        pack_attr(rtnl.IFLA_MTU, u32(1450)),
        pack_attr(rtnl.IFLA_ADDRESS, bytes.fromhex("eeeeeeeeeeee")),
        pack_attr(rtnl.IFLA_LINK, u32(2)),
        pack_attr(rtnl.IFLA_LINK_NETNSID, struct.pack("=i", 3)),
        # the kernel sets NLA_F_NESTED on nests: it must not hide the type
        pack_attr(rtnl.IFLA_LINKINFO | 0x8000, pack_attr(rtnl.IFLA_INFO_KIND, b"veth")),
    ])
    link = Link.parse(memoryview(payload))
    assert link == Link(index=12, name="cali1", flags=rtnl.IFF_UP | 0x1000, mtu=1450, address=MAC,
                        kind="veth", peer=2, peer_netnsid=3)
    assert link.up
    bare = Link.parse(memoryview(IFINFOMSG.pack(0, 0, 1, 0, 0) + pack_attr(rtnl.IFLA_IFNAME, b"lo\0")))
    assert (bare.name, bare.up, bare.kind, bare.peer, bare.peer_netnsid) == ("lo", False, None, None, None)


def test_address_parse_prefers_the_local_address():
    v4 = rtnl.IFADDRMSG.pack(socket.AF_INET, 32, 0, 0, 4) + pack_attr(
        rtnl.IFA_ADDRESS, socket.inet_aton("10.0.0.9")) + pack_attr(rtnl.IFA_LOCAL, socket.inet_aton("10.0.0.5"))
    assert Address.parse(memoryview(v4)) == Address(socket.AF_INET, "10.0.0.5", 32, 0, 4)
    v6 = rtnl.IFADDRMSG.pack(socket.AF_INET6, 64, 0, 253, 4) + pack_attr(
        rtnl.IFA_ADDRESS, socket.inet_pton(socket.AF_INET6, "fe80::1"))
    assert Address.parse(memoryview(v6)) == Address(socket.AF_INET6, "fe80::1", 64, 253, 4)
    assert Address.parse(memoryview(rtnl.IFADDRMSG.pack(socket.AF_INET, 32, 0, 0, 4))) is None


def test_parse_route():
    payload = RTMSG.pack(socket.AF_INET, 0, 0, 0, 254, 201, 0, 1, RTNH_F_ONLINK) + pack_attr(
        rtnl.RTA_GATEWAY, socket.inet_aton("169.254.1.1")) + pack_attr(rtnl.RTA_OIF, struct.pack("=I", 3))
    assert parse_route(memoryview(payload), {3: "eth0"}) == Route(
        "0.0.0.0/0", gateway="169.254.1.1", dev="eth0", onlink=True, proto=201)
    assert parse_route(memoryview(payload), {}).dev == "3"  # an unknown index: named by its number
    big_table = RTMSG.pack(socket.AF_INET6, 128, 0, 0, 0, 201, 253, 1, 0) + pack_attr(
        rtnl.RTA_DST, socket.inet_pton(socket.AF_INET6, "fd00::5")) + pack_attr(
        rtnl.RTA_TABLE, struct.pack("=I", 1000)) + pack_attr(rtnl.RTA_OIF, struct.pack("=I", 4))
    assert parse_route(memoryview(big_table), {4: "cali1"}) == Route("fd00::5/128", dev="cali1", proto=201, table=1000)
    blackhole = RTMSG.pack(socket.AF_INET6, 122, 0, 0, 254, 201, 0, rtnl.RTN_BLACKHOLE, 0) + pack_attr(
        rtnl.RTA_DST, socket.inet_pton(socket.AF_INET6, "fd00:60::")) + pack_attr(rtnl.RTA_OIF, struct.pack("=I", 1))
    assert parse_route(memoryview(blackhole), {1: "lo"}) == Route("fd00:60::/122", kind="blackhole", proto=201)
    local = RTMSG.pack(socket.AF_INET, 32, 0, 0, 255, 2, 254, 2, 0) + pack_attr(
        rtnl.RTA_DST, socket.inet_aton("10.0.0.1")) + pack_attr(rtnl.RTA_OIF, struct.pack("=I", 1))
    assert parse_route(memoryview(local), {1: "lo"}) is None  # a type Route does not express


def test_route_is_the_one_route_type():
    route = Route("10.1.0.0/26", "192.0.2.9", "vxlan.routed", onlink=True)
    assert (route.proto, route.table, route.encapsulation, route.address, route.prefixlen) == (
        202, 254, "vxlan", "10.1.0.0", 26)
    assert Route("10.1.0.0/26", "192.0.2.9", "tunl0").encapsulation == "ipip"
    assert Route("10.1.0.0/26", "192.0.2.9", "eth0").encapsulation == "none"
    assert Route("fd00:0:0::/64", dev="eth0").dst == "fd00::/64"  # one spelling
    assert str(Route("10.1.0.0/26", kind="blackhole", proto=201)) == "blackhole 10.1.0.0/26"
    for bad in (dict(dst="10.1.0.1/26", dev="x"), dict(dst="10.1.0.0/26"), dict(dst="10.1.0.0/26", gateway="fe80::1"),
                dict(dst="10.1.0.0/26", kind="blackhole", dev="x"), dict(dst="10.1.0.0/26", kind="local", dev="x")):
        with pytest.raises(ValueError):
            Route(**bad)


def test_vxlan_ipip_and_set_link_requests():
    from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

    data = rtnl.new_vxlan("vxlan.routed", vni=4096, local="192.0.2.1", parent=3, port=4789,
                          address="0e:52:c0:00:02:01", mtu=1450)
    assert header(data)[1:3] == (rtnl.RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL)
    m = decode(ifinfmsg, data)
    assert (m.get_attr("IFLA_IFNAME"), m.get_attr("IFLA_MTU"), m.get_attr("IFLA_ADDRESS")) == (
        "vxlan.routed", 1450, "0e:52:c0:00:02:01")
    info = m.get_attr("IFLA_LINKINFO")
    assert info.get_attr("IFLA_INFO_KIND") == "vxlan"
    vx = info.get_attr("IFLA_INFO_DATA")
    assert (vx.get_attr("IFLA_VXLAN_ID"), vx.get_attr("IFLA_VXLAN_LOCAL"), vx.get_attr("IFLA_VXLAN_LINK"),
            vx.get_attr("IFLA_VXLAN_PORT"), vx.get_attr("IFLA_VXLAN_LEARNING")) == (4096, "192.0.2.1", 3, 4789, 0)
    # ... and our own parser reads back what the kernel would report.
    assert Link.parse(memoryview(data)[NLMSGHDR.size:]).vxlan == VxlanInfo(4096, "192.0.2.1", 3, 4789, False)

    ipip = decode(ifinfmsg, rtnl.new_ipip("tunl0"))
    assert ipip.get_attr("IFLA_IFNAME") == "tunl0"
    assert ipip.get_attr("IFLA_LINKINFO").get_attr("IFLA_INFO_KIND") == "ipip"

    changed = decode(ifinfmsg, rtnl.set_link(7, mtu=1400, address="02:00:00:00:00:01"))
    assert (changed["index"], changed["flags"], changed["change"]) == (7, 0, 0)  # up/down untouched
    assert (changed.get_attr("IFLA_MTU"), changed.get_attr("IFLA_ADDRESS")) == (1400, "02:00:00:00:00:01")


def test_neighbour_and_fdb_requests():
    from pyroute2.netlink.rtnl.ndmsg import ndmsg

    flags_replace = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | 0x100
    n = decode(ndmsg, rtnl.set_neighbour(4, "169.254.1.1", MAC))
    assert n["header"]["type"] == rtnl.RTM_NEWNEIGH and n["header"]["flags"] == flags_replace
    assert (n["family"], n["ifindex"], n["state"]) == (socket.AF_INET, 4, rtnl.NUD_PERMANENT)
    assert (n.get_attr("NDA_DST"), n.get_attr("NDA_LLADDR")) == ("169.254.1.1", MAC)
    gone = decode(ndmsg, rtnl.del_neighbour(4, "10.0.0.2"))
    assert gone["header"]["type"] == rtnl.RTM_DELNEIGH and gone.get_attr("NDA_DST") == "10.0.0.2"

    fdb = decode(ndmsg, rtnl.set_fdb(9, "0e:52:0a:00:00:02", "10.0.0.2"))
    assert (fdb["family"], fdb["ifindex"], fdb["flags"]) == (socket.AF_BRIDGE, 9, rtnl.NTF_SELF)
    assert fdb["state"] == rtnl.NUD_PERMANENT | rtnl.NUD_NOARP
    assert (fdb.get_attr("NDA_LLADDR"), fdb.get_attr("NDA_DST")) == ("0e:52:0a:00:00:02", "10.0.0.2")
    assert decode(ndmsg, rtnl.del_fdb(9, "0e:52:0a:00:00:02", "10.0.0.2"))["header"]["type"] == rtnl.RTM_DELNEIGH

    # Dumps: strict checking wants a neighbour dump's header zero (the index as an
    # attribute), an FDB dump's index in the header.
    dump = decode(ndmsg, rtnl.dump_neighbours(socket.AF_INET, 4))
    assert (dump["ifindex"], dump.get_attr("NDA_IFINDEX"), dump["header"]["flags"]) == (0, 4, NLM_F_REQUEST | NLM_F_DUMP)
    assert decode(ndmsg, rtnl.dump_fdb(9))["ifindex"] == 9

    # The answer, parsed.
    assert Neighbour.parse(memoryview(rtnl.set_neighbour(4, "169.254.1.1", MAC))[NLMSGHDR.size:]) == Neighbour(
        socket.AF_INET, 4, rtnl.NUD_PERMANENT, "169.254.1.1", MAC)
    entry = Neighbour.parse(memoryview(rtnl.set_fdb(9, "0e:52:0a:00:00:02", "10.0.0.2"))[NLMSGHDR.size:])
    assert (entry.address, entry.mac, entry.permanent) == ("10.0.0.2", "0e:52:0a:00:00:02", True)


def test_parse_nsid():
    payload = rtnl.RTGENMSG.pack(0) + pack_attr(rtnl.NETNSA_NSID, struct.pack("=i", -1))
    assert rtnl.parse_nsid(memoryview(payload)) == -1
    assert rtnl.parse_nsid(memoryview(rtnl.RTGENMSG.pack(0))) is None


# --------------------------------------------------------------------------- exchange (fake socket)


def _error(seq: int, code: int, extack: str = "") -> bytes:
    """An NLMSG_ERROR as a capped ack with extended-ack TLVs (NETLINK_CAP_ACK|EXT_ACK)."""
    body = struct.pack("=i", -code) + NLMSGHDR.pack(16, 0, 0, seq, 0)
    flags = 0x100  # NLM_F_CAPPED
    if extack:
        body += pack_attr(1, extack.encode() + b"\0")  # NLMSGERR_ATTR_MSG
        flags |= 0x200  # NLM_F_ACK_TLVS
    return pack_message(2, flags, seq, body)


def _reply(kind: int, seq: int, body: bytes, flags: int = 0) -> bytes:
    return pack_message(kind, flags, seq, body)


def _done(seq: int, code: int = 0, flags: int = 0x2) -> bytes:
    return pack_message(3, flags, seq, struct.pack("=i", -code))


class FakeSocket:
    """Records what is sent; recv_into hands out prepared datagrams, built by ``script``
    from the sequence numbers found in what was sent."""

    def __init__(self, script):
        self.script = script
        self.sent: list[bytes] = []
        self.queue: list[bytes] = []

    def send(self, data) -> int:
        data = bytes(data)
        self.sent.append(data)
        seqs, offset = [], 0
        while offset < len(data):
            length, _, _, seq, _ = NLMSGHDR.unpack_from(data, offset)
            seqs.append(seq)
            offset += length
        self.queue += self.script(seqs)
        return len(data)

    def recv_into(self, buf, size, flags=0) -> int:
        datagram = self.queue.pop(0)
        buf[:len(datagram)] = datagram
        return len(datagram)


def fake_rtnl(script) -> Rtnl:
    sock = Rtnl.__new__(Rtnl)  # no real socket
    sock.sock = FakeSocket(script)
    sock.seq = 41
    sock.buf = bytearray(rtnl.BUFFER)
    return sock


def test_exchange_numbers_requests_and_matches_answers():
    link = IFINFOMSG.pack(0, 0, 12, 1, 0) + pack_attr(rtnl.IFLA_IFNAME, b"cali1\0")

    def script(seqs):
        a, b, c = seqs
        # One datagram may hold several answers, and answers of abandoned requests may
        # still arrive: both are sorted out by sequence number.
        return [
            _error(7, errno.EEXIST) + _reply(rtnl.RTM_NEWLINK, b, link),
            _error(c, errno.EINVAL, "bad thing") + _error(a, 0),
            _error(b, 0),
        ]

    sock = fake_rtnl(script)
    first, second, third = sock.exchange([rtnl.set_link(1, up=True), rtnl.get_link(name="cali1"), rtnl.set_link(2, up=True)])
    assert len(sock.sock.sent) == 1  # one send for the three
    assert [seq for _, _, seq, _ in iter_messages(sock.sock.sent[0])] == [42, 43, 44]
    assert first.ok and first.messages == []
    assert second.ok and second.link().name == "cali1" and second.link().index == 12
    assert (third.errno, third.extack) == (errno.EINVAL, "bad thing")
    assert third.reason() == "Invalid argument (bad thing)"
    # the builders' seq 0 was replaced, the rest of the message kept
    sent = sock.sock.sent[0]
    assert sent[:8] == rtnl.set_link(1, up=True)[:8] and sent[12:32] == rtnl.set_link(1, up=True)[12:]


def test_exchange_of_nothing_sends_nothing():
    sock = fake_rtnl(lambda seqs: [])
    assert sock.exchange([]) == [] and sock.sock.sent == []


def test_dump_answers_collect_parts_until_done_and_retry_when_interrupted():
    part = RTMSG.pack(socket.AF_INET, 32, 0, 0, 254, 201, 253, 1, 0) + pack_attr(
        rtnl.RTA_DST, socket.inet_aton("10.0.0.5")) + pack_attr(rtnl.RTA_OIF, struct.pack("=I", 3))
    other = RTMSG.pack(socket.AF_INET, 32, 0, 0, 254, 2, 253, 1, 0) + pack_attr(
        rtnl.RTA_DST, socket.inet_aton("10.0.0.6")) + pack_attr(rtnl.RTA_OIF, struct.pack("=I", 3))
    rounds = []

    def script(seqs):
        (seq,) = seqs
        rounds.append(seq)
        intr = 0x10 if len(rounds) == 1 else 0  # NLM_F_DUMP_INTR on the first attempt only
        return [_reply(rtnl.RTM_NEWROUTE, seq, part, 0x2 | intr) + _reply(rtnl.RTM_NEWROUTE, seq, other, 0x2),
                _done(seq, flags=0x2 | intr)]

    sock = fake_rtnl(script)
    # proto 201 only: the parser filters too (kernels without strict checking do not)
    routes = sock.routes(oif=3, proto=201, ifnames={3: "cali1"})
    assert len(rounds) == 2
    assert routes == [Route("10.0.0.5/32", dev="cali1", proto=201)]


def test_dump_errors():
    sock = fake_rtnl(lambda seqs: [_error(seqs[0], errno.ENODEV)])
    assert sock.routes(oif=99, ifnames={}) == []  # a missing interface has no routes
    sock = fake_rtnl(lambda seqs: [_done(seqs[0], errno.EINVAL)])
    with pytest.raises(DataplaneError, match="dump routes: Invalid argument") as info:
        sock.routes(ifnames={})
    assert info.value.errno == errno.EINVAL


def test_answer_check():
    assert Answer().check("x").ok
    assert Answer(errno.ENODEV).check("x", ignore=(errno.ENODEV,)).errno == errno.ENODEV
    with pytest.raises(NetnsNotFound) as info:
        Answer(errno.ENOENT, "no such netns").check("open it", NetnsNotFound)
    assert str(info.value) == "open it: No such file or directory (no such netns)"
    assert info.value.errno == errno.ENOENT
    assert Answer(errno.EINVAL).nsid() is None and Answer(errno.ENODEV).link() is None


# --------------------------------------------------------------------------- against the kernel (root)


@pytest.fixture
def pair(netns):
    """(host netns, pod netns, an fd on the pod netns)."""
    require_root()
    host, pod = netns("rtnlh"), netns("rtnlp")
    fd = open_netns(pod)
    try:
        yield host, pod, fd
    finally:
        os.close(fd)


def _pod_socket(fd: int) -> Rtnl:
    with in_netns(fd):
        return Rtnl(None)


def test_veth_with_its_peer_in_another_netns(pair):
    host, pod, fd = pair
    with Rtnl(host) as sock:
        created, read = sock.exchange([
            rtnl.new_veth("cali0", "eth0", fd, mtu=1450, address=MAC, peer_address=PEER_MAC),
            rtnl.get_link(name="cali0"),
        ])
        assert created.ok and read.ok
        link = read.link()
        assert (link.name, link.kind, link.mtu, link.address, link.up) == ("cali0", "veth", 1450, MAC, True)
        # the peer: its index in the pod netns, and that netns' id here
        assert link.peer == links(pod)["eth0"]["ifindex"]
        assert link.peer_netnsid is not None and link.peer_netnsid == sock.nsid(fd)
        assert sock.link(index=link.index) == link

        hl = links(host)["cali0"]
        assert (hl["address"], hl["mtu"], "UP" in hl["flags"]) == (MAC, 1450, True)
        pl = links(pod)["eth0"]
        assert (pl["address"], pl["mtu"], "UP" in pl["flags"]) == (PEER_MAC, 1450, False)

        # A second time: EEXIST, and the next request of the send still runs.
        again, read = sock.exchange([
            rtnl.new_veth("cali0", "eth1", fd, mtu=1450, address=MAC, peer_address=PEER_MAC),
            rtnl.get_link(name="cali0"),
        ])
        assert again.errno == errno.EEXIST and read.link() == link

        assert sock.request(rtnl.del_link(index=link.index)).ok
        assert sock.link(name="cali0") is None and sock.link(index=link.index) is None
        assert sock.request(rtnl.del_link(index=link.index)).errno == errno.ENODEV
        assert "eth0" not in links(pod)  # both ends went


def test_nsid_of_an_unrelated_fd_and_of_a_plain_file(pair, tmp_path):
    host, _, fd = pair
    with Rtnl(host) as sock:
        assert sock.nsid(fd) == -1  # no link ties the two netns yet: no id
        plain = os.open(tmp_path / "f", os.O_CREAT | os.O_RDONLY)
        try:
            assert sock.nsid(plain) is None  # EINVAL: not a netns
        finally:
            os.close(plain)


def test_pod_side_requests_in_one_send(pair):
    host, pod, fd = pair
    with Rtnl(host) as sock:
        sock.request(rtnl.new_veth("cali0", "eth0", fd, mtu=1500, address=MAC,
                                   peer_address=PEER_MAC)).check("create")
    with _pod_socket(fd) as sock:
        index = sock.link(name="eth0").index
        answers = sock.exchange([
            rtnl.set_link(index, up=True),
            rtnl.set_link(1, up=True),
            rtnl.add_address(index, "10.20.0.5", 32),
            rtnl.add_address(index, "fd00:20::5", 128, nodad=True),
            rtnl.route_add(Route("169.254.1.1/32", dev="eth0", proto=201), index),
            rtnl.route_add(Route("0.0.0.0/0", gateway="169.254.1.1", dev="eth0", onlink=True, proto=201), index),
            rtnl.route_add(Route("::/0", gateway="fe80::ecee:eeff:feee:eeee", dev="eth0", proto=201), index),
            rtnl.add_address(index, "10.20.0.5", 32),  # again: EEXIST, alone
        ])
        assert [a.errno for a in answers] == [0] * 7 + [errno.EEXIST]

        assert sock.link(index=1).up and sock.link(index=index).up
        got = {(a.address, a.prefixlen) for a in sock.addresses(index=index) if a.scope == 0}
        assert got == {("10.20.0.5", 32), ("fd00:20::5", 128)}
        assert all(a.index == index for a in sock.addresses(index=index))
        routes = sock.routes(oif=index, proto=201)
        assert set(routes) == {
            Route("169.254.1.1/32", dev="eth0", proto=201),
            Route("0.0.0.0/0", gateway="169.254.1.1", dev="eth0", onlink=True, proto=201),
            Route("::/0", gateway="fe80::ecee:eeff:feee:eeee", dev="eth0", proto=201),
        }
        assert sock.routes(oif=index + 100) == []

        assert sock.request(rtnl.set_neighbour(index, "169.254.1.1", MAC)).ok
        assert sock.request(rtnl.set_neighbour(index, "169.254.1.1", MAC)).ok  # replace: idempotent
        [neigh] = sock.neighbours(socket.AF_INET, index)
        assert (neigh.address, neigh.mac, neigh.permanent) == ("169.254.1.1", MAC, True)
        assert sock.request(rtnl.del_neighbour(index, "169.254.1.1")).ok
        assert sock.request(rtnl.del_neighbour(index, "169.254.1.1")).errno == errno.ENOENT
        assert sock.neighbours(socket.AF_INET, index) == []

    v6 = ip_json(pod, "-6", "addr", "show", "dev", "eth0", "scope", "global")[0]["addr_info"]
    [addr] = [a for a in v6 if a]
    assert addr["local"] == "fd00:20::5" and not addr.get("tentative")
    [link_route] = ip_json(pod, "route", "show", "169.254.1.1")
    assert (link_route["scope"], link_route["protocol"]) == ("link", "201")
    [default] = ip_json(pod, "route", "show", "default")
    assert "onlink" in default["flags"] and default["gateway"] == "169.254.1.1"


def test_host_routes_add_exclusively_and_delete_by_interface(pair):
    host, _, fd = pair
    ip(host, "link", "add", "other0", "type", "veth", "peer", "name", "other1")
    ip(host, "link", "set", "other0", "up")
    route = Route("10.20.0.5/32", dev="cali0", proto=201)
    with Rtnl(host) as sock:
        sock.request(rtnl.new_veth("cali0", "eth0", fd, mtu=1500, address=MAC,
                                   peer_address=PEER_MAC)).check("create")
        index = sock.link(name="cali0").index
        other = sock.link(name="other0").index
        assert sock.request(rtnl.route_add(route, index)).ok
        [r] = ip_json(host, "route", "show", "10.20.0.5")
        assert (r["dev"], r["scope"], r["protocol"]) == ("cali0", "link", "201")
        assert sock.request(rtnl.route_add(route, other)).errno == errno.EEXIST  # never a takeover
        assert [r.dev for r in sock.routes(socket.AF_INET, table=254) if r.dst == "10.20.0.5/32"] == ["cali0"]

        assert sock.request(rtnl.route_delete(route, other)).errno == errno.ESRCH  # not through other0
        assert sock.request(rtnl.route_delete(route, index)).ok
        assert sock.request(rtnl.route_delete(route, index)).errno == errno.ESRCH
        assert ip_json(host, "route", "show", "10.20.0.5") == []


def test_errors_carry_the_kernels_explanation(pair):
    host, _, fd = pair
    with Rtnl(host) as sock:
        answer = sock.request(rtnl.new_veth("cali0", "eth0", fd, mtu=10, address=MAC, peer_address=PEER_MAC))
        assert answer.errno == errno.EINVAL
        with pytest.raises(DataplaneError) as info:
            answer.check("create veth cali0")
        assert "\n" not in str(info.value) and str(info.value).startswith("create veth cali0: Invalid argument")
        assert "cali0" not in links(host)

        ip(host, "link", "set", "lo", "up")
        answer = sock.request(rtnl.route_add(Route("10.9.0.0/24", gateway="192.0.2.1", dev="lo"), 1))
        assert answer.errno == errno.ENETUNREACH
        assert answer.extack  # "Nexthop has invalid gateway" here; the wording is the kernel's
        assert answer.reason() == f"Network is unreachable ({answer.extack})"


def test_missing_netns():
    require_root()
    with pytest.raises(NetnsNotFound, match="rt-no-such-netns"):
        Rtnl("rt-no-such-netns")
