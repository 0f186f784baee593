import ipaddress
import json
import pickle

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from ipam.block import MAX_BLOCK_ADDRESSES, Block
from ipam.blockmath import ordinal
from ipam.errors import (AddressInUse, AddressNotInBlock, AddressNotInPool, InvalidBlock,
                         NoMatchingPool, PoolExhausted, TooManyBlocks)
from ipam.handle import Handle
from routed.errors import CorruptData, RoutedError

A = {"pod": "a", "namespace": "default", "node": "node-1"}
B = {"pod": "b", "namespace": "kube-system", "node": "node-1"}


def ip(text):
    return ipaddress.ip_address(text)


# -- Block: examples -----------------------------------------------------------------

@pytest.mark.parametrize("cidr, size", [("10.0.0.0/26", 64), ("fd00::/122", 64),
                                        ("10.0.0.0/32", 1), ("10.0.0.0/20", 4096),
                                        ("fd00::/116", 4096)])
def test_new_block_is_all_free_in_order(cidr, size):
    b = Block.new(cidr, "host:node-1")
    assert (b.size, b.free, b.in_use, b.is_empty) == (size, size, 0, True)
    assert b.unallocated == list(range(size))
    assert b.allocations == [None] * size
    assert b.affinity == "host:node-1" and b.sequence == 0


def test_network_and_broadcast_addresses_are_usable():
    b = Block.new("10.0.0.0/26")
    got = b.assign(64, "h")
    assert got[0] == ip("10.0.0.0") and got[-1] == ip("10.0.0.63")
    assert b.free == 0 and b.in_use == 64


@pytest.mark.parametrize("cidr, fragment", [
    ("10.0.0.0/19", "8192 addresses; at most 4096"),
    ("fd00::/115", "8192 addresses; at most 4096"),
    ("fd00::/64", "at most 4096"),
    ("10.0.0.1/26", "has host bits set"),
    ("10.0.0.0/33", "not valid"),
    ("nonsense", "not valid"),
])
def test_new_rejects_bad_cidr(cidr, fragment):
    with pytest.raises(InvalidBlock, match=fragment) as e:
        Block.new(cidr)
    assert isinstance(e.value, RoutedError) and isinstance(e.value, ValueError)


def test_assign_returns_fewer_when_block_runs_out():
    b = Block.new("10.0.0.0/30")
    assert b.assign(3, "h1") == [ip("10.0.0.0"), ip("10.0.0.1"), ip("10.0.0.2")]
    assert b.assign(5, "h2") == [ip("10.0.0.3")]
    seq = b.sequence
    assert b.assign(1, "h3") == []
    assert b.sequence == seq


def test_assign_zero_changes_nothing():
    b = Block.new("10.0.0.0/30")
    assert b.assign(0, "h") == [] and b == Block.new("10.0.0.0/30")


@pytest.mark.parametrize("num, handle, attrs", [
    (-1, "h", None), (1.0, "h", None), (True, "h", None),
    (1, "", None), (1, None, None), (1, "h", {"pod": 1}), (1, "h", ["pod"]),
])
def test_assign_rejects_bad_arguments(num, handle, attrs):
    b = Block.new("10.0.0.0/30")
    with pytest.raises(ValueError):
        b.assign(num, handle, attrs)
    assert b == Block.new("10.0.0.0/30")


def test_released_address_is_reused_last():
    b = Block.new("10.0.0.0/29")
    first = b.assign(1, "h1")[0]
    b.assign(2, "h2")
    b.release([first])
    # Everything else that is free goes out before the just-released address.
    rest = b.assign(5, "h3")
    assert first not in rest
    assert b.assign(1, "h4") == [first]


def test_assign_ip():
    b = Block.new("10.0.0.0/29")
    assert b.assign_ip("10.0.0.5", "h1", A) == ip("10.0.0.5")
    assert 5 not in b.unallocated and b.in_use == 1
    assert b.attributes_for("10.0.0.5") == {"handle": "h1", "secondary": A}
    # The free list keeps its order around the taken address.
    assert b.unallocated == [0, 1, 2, 3, 4, 6, 7]


def test_assign_ip_in_use():
    b = Block.new("10.0.0.0/29")
    b.assign_ip("10.0.0.5", "h1")
    before = b.to_json()
    with pytest.raises(AddressInUse, match=r"10\.0\.0\.5 is already in use \(handle 'h1'\)"):
        b.assign_ip(ip("10.0.0.5"), "h2")
    assert b.to_json() == before


@pytest.mark.parametrize("addr", ["10.0.0.8", "9.255.255.255", "fd00::1"])
def test_assign_ip_outside_block(addr):
    b = Block.new("10.0.0.0/29")
    with pytest.raises(AddressNotInBlock, match="not in block 10.0.0.0/29") as e:
        b.assign_ip(addr, "h")
    assert isinstance(e.value, RoutedError) and isinstance(e.value, ValueError)
    assert b == Block.new("10.0.0.0/29")


def test_one_assign_call_shares_one_attribute_entry():
    b = Block.new("10.0.0.0/29")
    b.assign(3, "h1", A)
    assert b.attributes == [{"handle": "h1", "secondary": A}]
    assert b.allocations[:3] == [0, 0, 0]
    # An identical (handle, attrs) pair reuses the entry; a different one adds one.
    b.assign(1, "h1", A)
    b.assign(1, "h2", B)
    assert len(b.attributes) == 2 and b.allocations[:5] == [0, 0, 0, 0, 1]


def test_release_drops_unused_attributes_and_reindexes():
    b = Block.new("10.0.0.0/29")
    b.assign(2, "h1", A)
    b.assign(2, "h2", B)
    assert b.release(["10.0.0.0", ip("10.0.0.1")]) == {"h1": [ip("10.0.0.0"), ip("10.0.0.1")]}
    assert b.attributes == [{"handle": "h2", "secondary": B}]
    assert b.allocations == [None, None, 0, 0, None, None, None, None]
    assert b.attributes_for("10.0.0.2") == {"handle": "h2", "secondary": B}


def test_release_ignores_unknown_and_free_addresses():
    b = Block.new("10.0.0.0/29")
    b.assign(2, "h1")
    before = b.to_json()
    assert b.release(["10.0.0.5", "10.0.0.9", "fd00::1", "192.168.0.1"]) == {}
    assert b.to_json() == before
    # Duplicates in one call release once.
    assert b.release(["10.0.0.1", "10.0.0.1"]) == {"h1": [ip("10.0.0.1")]}
    assert b.unallocated.count(1) == 1


def test_release_handle():
    b = Block.new("10.0.0.0/29")
    b.assign(2, "h1", A)
    b.assign(1, "h2")
    b.assign_ip("10.0.0.7", "h1", B)
    assert b.ips_for_handle("h1") == [ip("10.0.0.0"), ip("10.0.0.1"), ip("10.0.0.7")]
    assert b.handles() == ["h1", "h2"]
    seq = b.sequence
    assert b.release_handle("h1") == [ip("10.0.0.0"), ip("10.0.0.1"), ip("10.0.0.7")]
    assert b.sequence == seq + 1
    assert b.handles() == ["h2"] and b.ips_for_handle("h1") == []
    assert b.release_handle("h1") == [] and b.sequence == seq + 1
    assert b.release_handle("nobody") == []


def test_attributes_for_returns_a_copy():
    b = Block.new("10.0.0.0/29")
    b.assign(1, "h1", A)
    b.attributes_for("10.0.0.0")["secondary"]["pod"] = "mutated"
    assert b.attributes_for("10.0.0.0")["secondary"] == A
    assert b.attributes_for("10.0.0.1") is None
    assert b.attributes_for("10.0.1.0") is None
    assert b.attributes_for("fd00::") is None


def test_caller_attrs_are_copied():
    attrs = dict(A)
    b = Block.new("10.0.0.0/29")
    b.assign(1, "h1", attrs)
    attrs["pod"] = "mutated"
    assert b.attributes[0]["secondary"] == A


def test_set_affinity():
    b = Block.new("10.0.0.0/29", "host:node-1")
    b.set_affinity("host:node-1")
    assert b.sequence == 0
    b.set_affinity(None)
    assert b.affinity is None and b.sequence == 1
    assert Block.from_json(b.to_json(), key="k") == b


def test_to_json_is_compact_and_deterministic():
    b = Block.new("10.0.0.0/30", "host:node-1")
    b.assign(2, "h1", {"pod": "p", "namespace": "ns"})
    b.release(["10.0.0.0"])
    assert b.to_json() == (
        '{"affinity":"host:node-1","allocations":[null,0,null,null],'
        '"attributes":[{"handle":"h1","secondary":{"namespace":"ns","pod":"p"}}],'
        '"cidr":"10.0.0.0/30","sequence":2,"unallocated":[2,3,0]}')
    # Attribute insertion order does not leak into the text.
    c = Block.new("10.0.0.0/30", "host:node-1")
    c.assign(2, "h1", {"namespace": "ns", "pod": "p"})
    c.release(["10.0.0.0"])
    assert c.to_json() == b.to_json()


def test_v6_round_trip():
    b = Block.new("fd00:10::/122", None)
    b.assign(3, "h", A)
    b.release(["fd00:10::1"])
    text = b.to_json()
    assert '"cidr":"fd00:10::/122"' in text
    back = Block.from_json(text.encode(), key="k")
    assert back == b and back.to_json() == text


# -- Block: property-based -----------------------------------------------------------

HANDLES = ["h1", "h2", "h3"]
ATTRS = [None, A, B]


class BlockMachine(RuleBasedStateMachine):
    """Drives a Block and a trivially correct model side by side."""

    CIDR = "10.0.0.16/28"

    def __init__(self):
        super().__init__()
        self.block = Block.new(self.CIDR, "host:node-1")
        self.net = ipaddress.ip_network(self.CIDR)
        self.size = self.net.num_addresses
        self.free = list(range(self.size))     # model free list, head first
        self.owner = {}                        # ordinal -> (handle, secondary)

    def addr(self, n):
        # Ordinals outside 0..size-1 name neighbouring addresses outside the block.
        return self.net.network_address + n

    def snapshot(self):
        return self.block.to_json(), self.block.sequence

    def check_changed(self, before, changed):
        text, seq = before
        if changed:
            assert self.block.sequence == seq + 1
        else:
            assert self.block.to_json() == text

    @rule(num=st.integers(0, 6), handle=st.sampled_from(HANDLES),
          attrs=st.sampled_from(ATTRS))
    def assign(self, num, handle, attrs):
        before = self.snapshot()
        got = [ordinal(self.net, a) for a in self.block.assign(num, handle, attrs)]
        assert got == self.free[:num]
        assert not set(got) & self.owner.keys(), "handed out an address twice"
        del self.free[:len(got)]
        for o in got:
            self.owner[o] = (handle, attrs or {})
        self.check_changed(before, bool(got))

    @rule(n=st.integers(0, 15), handle=st.sampled_from(HANDLES),
          attrs=st.sampled_from(ATTRS))
    def assign_ip(self, n, handle, attrs):
        before = self.snapshot()
        if n in self.owner:
            with pytest.raises(AddressInUse):
                self.block.assign_ip(self.addr(n), handle, attrs)
            self.check_changed(before, False)
            return
        assert self.block.assign_ip(self.addr(n), handle, attrs) == self.addr(n)
        self.free.remove(n)
        self.owner[n] = (handle, attrs or {})
        self.check_changed(before, True)

    @rule(n=st.sampled_from([-1, 16, 17, 1000]))
    def assign_ip_outside(self, n):
        before = self.snapshot()
        with pytest.raises(AddressNotInBlock):
            self.block.assign_ip(self.addr(n), "h1")
        self.check_changed(before, False)

    @rule(ns=st.lists(st.integers(-2, 17), max_size=8))
    def release(self, ns):
        before = self.snapshot()
        expected = {}
        for n in ns:
            if n in self.owner:
                handle, _ = self.owner.pop(n)
                self.free.append(n)          # reused last
                expected.setdefault(handle, []).append(self.addr(n))
        assert self.block.release([self.addr(n) for n in ns]) == expected
        self.check_changed(before, bool(expected))

    @rule(handle=st.sampled_from(HANDLES + ["unknown"]))
    def release_handle(self, handle):
        before = self.snapshot()
        mine = sorted(o for o, (h, _) in self.owner.items() if h == handle)
        assert self.block.ips_for_handle(handle) == [self.addr(o) for o in mine]
        assert self.block.release_handle(handle) == [self.addr(o) for o in mine]
        for o in mine:
            del self.owner[o]
            self.free.append(o)
        self.check_changed(before, bool(mine))

    @invariant()
    def matches_model(self):
        b = self.block
        assert b.unallocated == self.free
        for o in range(self.size):
            attrs = b.attributes_for(self.addr(o))
            if o in self.owner:
                handle, secondary = self.owner[o]
                assert attrs == {"handle": handle, "secondary": secondary}
            else:
                assert attrs is None
        assert b.handles() == sorted({h for h, _ in self.owner.values()})

    @invariant()
    def every_address_allocated_or_free_exactly_once(self):
        b = self.block
        allocated = [o for o, i in enumerate(b.allocations) if i is not None]
        assert len(set(b.unallocated)) == len(b.unallocated)
        assert not set(allocated) & set(b.unallocated)
        assert sorted(allocated + b.unallocated) == list(range(self.size))
        assert b.in_use + b.free == b.size == self.size
        assert b.is_empty == (b.in_use == 0)
        # No attribute entry outlives its last allocation.
        assert {i for i in b.allocations if i is not None} == set(range(len(b.attributes)))

    @invariant()
    def json_round_trips(self):
        text = self.block.to_json()
        back = Block.from_json(text, key="/routed/ipam/v1/blocks/x")
        assert back == self.block
        assert back.to_json() == text


class V6BlockMachine(BlockMachine):
    CIDR = "fd00:1::10/124"


_settings = settings(max_examples=150, stateful_step_count=60, deadline=None)
TestBlockV4 = BlockMachine.TestCase
TestBlockV4.settings = _settings
TestBlockV6 = V6BlockMachine.TestCase
TestBlockV6.settings = _settings


# -- Block: corrupt JSON -------------------------------------------------------------

KEY = "/routed/ipam/v1/blocks/10.0.0.0-30"


def _valid():
    # allocations [0, 1, null, null], unallocated [2, 3], two attributes
    b = Block.new("10.0.0.0/30", "host:node-1")
    b.assign(1, "h1", A)
    b.assign(1, "h2")
    return json.loads(b.to_json())


def _with(**changes):
    d = _valid()
    for k, v in changes.items():
        if v is _DROP:
            del d[k]
        else:
            d[k] = v
    return json.dumps(d)


_DROP = object()

CORRUPT_BLOCKS = [
    ("{", "not valid JSON"),
    ("", "not valid JSON"),
    (b"\xff\xfe", "not UTF-8"),
    ("[1, 2]", "expected a JSON object, got list"),
    ("null", "expected a JSON object, got NoneType"),
    (_with(sequence=_DROP), "missing field(s) sequence"),
    (_with(deleted=False), "unknown field(s) deleted"),
    (_with(cidr=5), "cidr must be a string"),
    (_with(cidr="10.0.0.0/33"), "not valid"),
    (_with(cidr="10.0.0.1/30"), "has host bits set"),
    (_with(cidr="10.0.0.0/19"), "at most 4096"),
    (_with(cidr="FD00::/126"), "not written canonically (fd00::/126)"),
    (_with(affinity=""), "affinity must be a non-empty string or null"),
    (_with(affinity=["host:x"]), "affinity must be a non-empty string or null"),
    (_with(sequence=-1), "sequence must be a non-negative integer"),
    (_with(sequence="3"), "sequence must be a non-negative integer"),
    (_with(sequence=True), "sequence must be a non-negative integer"),
    (_with(sequence=1.5), "sequence must be a non-negative integer"),
    (_with(attributes={}), "attributes must be a list"),
    (_with(attributes=["h1", "h2"]), "attributes[0] must be an object"),
    (_with(affinity=None, attributes=[{"handle": "h1"}, {"handle": "h2", "secondary": {}}]),
     "attributes[0] has no 'secondary', which only a block affine to a host may leave out"),
    (_with(attributes=[{"handle": "h1", "secondary": {}, "x": 1},
                       {"handle": "h2", "secondary": {}}]), "attributes[0] must be"),
    (_with(attributes=[{"handle": "", "secondary": {}}, {"handle": "h2", "secondary": {}}]),
     "attributes[0]: handle must be a non-empty string"),
    (_with(attributes=[{"handle": "h1", "secondary": {}}, {"handle": "h2", "secondary": None}]),
     "attributes[1]: secondary must be an object"),
    (_with(attributes=[{"handle": "h1", "secondary": {"pod": 1}},
                       {"handle": "h2", "secondary": {}}]),
     "attributes[0]: attributes must map strings to strings"),
    (_with(allocations="0,1"), "allocations must be a list"),
    (_with(allocations=[0, 1, None]), "allocations has 3 entries, block 10.0.0.0/30 has 4"),
    (_with(allocations=[0, 1, None, None, None]), "allocations has 5 entries"),
    (_with(allocations=[0, 2, None, None]), "allocations[1] = 2 is not an index into attributes"),
    (_with(allocations=[-1, 1, None, None]), "allocations[0] = -1 is not an index"),
    (_with(allocations=[True, 1, None, None]), "allocations[0] = True is not an index"),
    (_with(allocations=["0", 1, None, None]), "allocations[0] = '0' is not an index"),
    (_with(allocations=[0, 0, None, None]), "attributes entry(ies) 1 used by no allocation"),
    (_with(unallocated=None), "unallocated must be a list"),
    (_with(unallocated=[2, 4]), "unallocated holds 4, not an ordinal of 10.0.0.0/30"),
    (_with(unallocated=[2, -1]), "unallocated holds -1"),
    (_with(unallocated=[2, 3.0]), "unallocated holds 3.0"),
    (_with(unallocated=[2, 3, 2]), "ordinal 2 is listed twice"),
    (_with(unallocated=[2, 3, 0]), "ordinal 0 is both allocated and unallocated"),
    (_with(unallocated=[3]), "ordinal(s) 2 are neither allocated nor unallocated"),
    (_with(unallocated=[]), "ordinal(s) 2, 3 are neither allocated nor unallocated"),
]


@pytest.mark.parametrize("text, fragment", CORRUPT_BLOCKS,
                         ids=[f"{i}-{f[:30]}" for i, (_, f) in enumerate(CORRUPT_BLOCKS)])
def test_corrupt_block(text, fragment):
    with pytest.raises(CorruptData) as e:
        Block.from_json(text, key=KEY)
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith(f"block {KEY}: ")
    assert fragment in msg


def test_valid_fixture_parses():
    # Guards the table above: the unmodified document must be accepted.
    assert Block.from_json(_with(), key=KEY).in_use == 2


def test_corrupt_v6_block_length():
    b = Block.new("fd00::/122")
    d = json.loads(b.to_json())
    d["allocations"] = d["allocations"][:-1]
    with pytest.raises(CorruptData, match=r"allocations has 63 entries, block fd00::/122 has 64"):
        Block.from_json(json.dumps(d), key="k6")


def test_corrupt_message_truncates_long_lists():
    b = Block.new("10.0.0.0/24")
    d = json.loads(b.to_json())
    d["unallocated"] = []
    with pytest.raises(CorruptData, match=r"ordinal\(s\) 0, 1, 2, 3, 4 \(and 251 more\)"):
        Block.from_json(json.dumps(d), key="k")


# -- Handle --------------------------------------------------------------------------

def test_handle_add_remove():
    h = Handle("net.cid.eth0")
    assert h.is_empty and h.sequence == 0
    h.add("10.0.0.0/26", 2)
    h.add(ipaddress.ip_network("10.0.0.0/26"), 1)
    h.add("fd00:0::/122", 1)
    assert h.blocks == {"10.0.0.0/26": 3, "fd00::/122": 1}
    assert h.total == 4 and h.sequence == 3
    h.remove("10.0.0.0/26", 1)
    assert h.blocks["10.0.0.0/26"] == 2
    h.remove("10.0.0.0/26", 5)                 # never below zero: the entry goes
    assert h.blocks == {"fd00::/122": 1} and h.sequence == 5
    seq = h.sequence
    h.remove("10.0.0.0/26", 1)                 # nothing held: no-op
    h.add("10.0.0.64/26", 0)
    h.remove("fd00::/122", 0)
    assert h.sequence == seq and h.blocks == {"fd00::/122": 1}
    h.remove("fd00::/122", 1)
    assert h.is_empty


@pytest.mark.parametrize("n", [-1, 1.0, True, "1"])
def test_handle_rejects_bad_counts(n):
    h = Handle("h")
    with pytest.raises(ValueError):
        h.add("10.0.0.0/26", n)
    with pytest.raises(ValueError):
        h.remove("10.0.0.0/26", n)


def test_handle_json_round_trip():
    h = Handle("net.cid.eth0", attrs={"pod": "p", "namespace": "ns"})
    h.add("10.0.0.64/26", 1)
    h.add("10.0.0.0/26", 2)
    text = h.to_json()
    assert text == ('{"attrs":{"namespace":"ns","pod":"p"},"blocks":{"10.0.0.0/26":2,"10.0.0.64/26":1},'
                    '"handle":"net.cid.eth0","sequence":2}')
    back = Handle.from_json(text.encode(), key="k")
    assert back == h and back.to_json() == text


def test_a_layout_1_handle_without_attrs_reads_with_none_and_bad_attrs_are_refused():
    old = Handle.from_json('{"blocks":{"10.0.0.0/26":1},"handle":"h","sequence":1}', key="k")
    assert old.attrs == {} and old.total == 1
    with pytest.raises(CorruptData, match="attrs: attributes must map strings to strings"):
        Handle.from_json('{"attrs":{"pod":1},"blocks":{},"handle":"h","sequence":1}', key="k")


HKEY = "/routed/ipam/v1/handles/net.cid.eth0"
_GOOD_HANDLE = {"handle": "net.cid.eth0", "blocks": {"10.0.0.0/26": 1}, "sequence": 1}


def _h(**changes):
    d = dict(_GOOD_HANDLE)
    for k, v in changes.items():
        if v is _DROP:
            del d[k]
        else:
            d[k] = v
    return json.dumps(d)


CORRUPT_HANDLES = [
    ("not json", "not valid JSON"),
    ("[]", "expected a JSON object, got list"),
    (_h(blocks=_DROP), "missing field(s) blocks"),
    (_h(deleted=False), "unknown field(s) deleted"),
    (_h(handle=""), "handle must be a non-empty string"),
    (_h(handle=7), "handle must be a non-empty string"),
    (_h(sequence=-3), "sequence must be a non-negative integer"),
    (_h(blocks=[]), "blocks must be an object"),
    (_h(blocks={"10.0.0.1/26": 1}), "has host bits set"),
    (_h(blocks={"garbage": 1}), "not valid"),
    (_h(blocks={"10.0.0.0/8": 1}), "at most 4096"),
    (_h(blocks={"FD00::/122": 1}), "not written canonically (fd00::/122)"),
    (_h(blocks={"10.0.0.0/26": 0}), "count for block 10.0.0.0/26 must be a positive integer"),
    (_h(blocks={"10.0.0.0/26": -1}), "must be a positive integer"),
    (_h(blocks={"10.0.0.0/26": "1"}), "must be a positive integer"),
    (_h(blocks={"10.0.0.0/26": True}), "must be a positive integer"),
]


@pytest.mark.parametrize("text, fragment", CORRUPT_HANDLES,
                         ids=[f"{i}-{f[:30]}" for i, (_, f) in enumerate(CORRUPT_HANDLES)])
def test_corrupt_handle(text, fragment):
    with pytest.raises(CorruptData) as e:
        Handle.from_json(text, key=HKEY)
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith(f"handle {HKEY}: ")
    assert fragment in msg


def test_valid_handle_fixture_parses():
    assert Handle.from_json(_h(), key=HKEY).total == 1


# -- errors --------------------------------------------------------------------------

@pytest.mark.parametrize("cls", [AddressInUse, AddressNotInPool, PoolExhausted,
                                 NoMatchingPool, TooManyBlocks, AddressNotInBlock,
                                 InvalidBlock])
def test_errors_are_routed_errors(cls):
    assert issubclass(cls, RoutedError)


def test_pool_exhausted_names_pools_and_node():
    err = PoolExhausted([ipaddress.ip_network("10.0.0.0/16"), "10.1.0.0/16"], "node-1")
    assert str(err) == "no free address for node 'node-1' in pool(s) 10.0.0.0/16, 10.1.0.0/16"
    again = pickle.loads(pickle.dumps(err))
    assert str(again) == str(err) and again.node == "node-1"
    assert str(PoolExhausted([], "n")) == "no free address for node 'n' in pool(s) (none)"


def test_max_block_addresses():
    assert MAX_BLOCK_ADDRESSES == 4096


def test_the_block_nodes_own_addresses_are_stored_as_their_handle_alone():
    b = Block.new("10.0.0.0/30", "host:node-1")
    b.assign(2, "h1", {"node": "node-1"})
    b.assign(1, "h2", {"node": "node-2"})  # borrowed: its node is stored
    text = b.to_json()
    assert '"attributes":[{"handle":"h1"},{"handle":"h2","secondary":{"node":"node-2"}}]' in text
    back = Block.from_json(text, key="k")
    assert back == b and back.attributes_for("10.0.0.0") == {"handle": "h1", "secondary": {"node": "node-1"}}
    back.set_affinity(None)  # the node is gone: its addresses keep naming it
    assert Block.from_json(back.to_json(), key="k").attributes_for("10.0.0.1")["secondary"] == {"node": "node-1"}
