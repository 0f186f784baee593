import ipaddress
import itertools
import time
import types

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ipam.blockmath import block_for, blocks_in_pool, handle_id, ip_at, ordinal
from ipam.errors import AddressNotInBlock
from routed.errors import RoutedError


# -- block_for / ordinal / ip_at -----------------------------------------------------

@pytest.mark.parametrize("ip, size, expected", [
    ("10.1.2.3", 26, "10.1.2.0/26"),
    ("10.1.2.200", 26, "10.1.2.192/26"),
    ("10.1.2.3", 32, "10.1.2.3/32"),
    ("10.1.2.3", 20, "10.1.0.0/20"),
    ("fd00::1:2", 122, "fd00::1:0/122"),
    ("fd00::ff", 122, "fd00::c0/122"),
])
def test_block_for(ip, size, expected):
    assert block_for(ip, size) == ipaddress.ip_network(expected)
    assert block_for(ipaddress.ip_address(ip), size) == ipaddress.ip_network(expected)


@pytest.mark.parametrize("ip, size", [("10.0.0.1", 33), ("10.0.0.1", -1), ("fd00::1", 129)])
def test_block_for_rejects_bad_size(ip, size):
    with pytest.raises(ValueError, match="block size"):
        block_for(ip, size)


def test_ordinal_and_ip_at_cover_the_whole_block():
    block = ipaddress.ip_network("10.0.0.64/26")
    assert ordinal(block, "10.0.0.64") == 0
    assert ordinal(block, "10.0.0.127") == 63
    assert ip_at(block, 0) == ipaddress.ip_address("10.0.0.64")
    assert ip_at(block, 63) == ipaddress.ip_address("10.0.0.127")


@pytest.mark.parametrize("block, ip", [
    ("10.0.0.64/26", "10.0.0.63"),
    ("10.0.0.64/26", "10.0.0.128"),
    ("10.0.0.64/26", "fd00::1"),      # other family
    ("fd00::/122", "10.0.0.1"),
    ("fd00::/122", "fd00::40"),
])
def test_ordinal_outside_block(block, ip):
    with pytest.raises(AddressNotInBlock, match=f"not in block {block}") as e:
        ordinal(ipaddress.ip_network(block), ip)
    assert isinstance(e.value, RoutedError) and isinstance(e.value, ValueError)


@pytest.mark.parametrize("n", [-1, 64, 10**6])
def test_ip_at_outside_block(n):
    with pytest.raises(AddressNotInBlock, match="outside block"):
        ip_at(ipaddress.ip_network("10.0.0.0/26"), n)


@given(v6=st.booleans(), prefix=st.integers(0, 12), data=st.data())
def test_ordinal_ip_at_round_trip(v6, prefix, data):
    bits = 128 if v6 else 32
    base = data.draw(st.integers(0, 2**bits - 1))
    block = (ipaddress.IPv6Network if v6 else ipaddress.IPv4Network)(
        (base, bits - prefix), strict=False)
    n = data.draw(st.integers(0, block.num_addresses - 1))
    ip = ip_at(block, n)
    assert ip in block
    assert ordinal(block, ip) == n
    assert block_for(ip, block.prefixlen) == block


# -- blocks_in_pool ------------------------------------------------------------------

@pytest.mark.parametrize("pool, size", [
    ("10.0.0.0/24", 26),
    ("10.0.0.0/16", 26),
    ("10.0.0.0/26", 26),          # a pool that is one block
    ("10.0.0.0/28", 32),
    ("fd00::/116", 122),
    ("fd00:1::/112", 122),
    ("::/120", 124),              # small ints must still give IPv6 networks
])
@pytest.mark.parametrize("key", ["node-1", "node-2", "", "ü-node"])
def test_blocks_in_pool_covers_every_block_once(pool, size, key):
    net = ipaddress.ip_network(pool)
    got = list(blocks_in_pool(pool, size, key))
    expected = list(net.subnets(new_prefix=size))
    assert len(got) == len(expected)
    assert set(got) == set(expected)
    assert all(b.version == net.version and b.subnet_of(net) for b in got)
    # The order is the pool's own order, rotated: consecutive blocks, wrapping once.
    start = expected.index(got[0])
    assert got == expected[start:] + expected[:start]


@settings(max_examples=200)
@given(v6=st.booleans(), key=st.text(max_size=20), data=st.data())
def test_blocks_in_pool_property(v6, key, data):
    bits = 128 if v6 else 32
    block_size = data.draw(st.integers(0, bits), label="block_size")
    pool_prefix = block_size - data.draw(st.integers(0, min(9, block_size)), label="bits")
    base = data.draw(st.integers(0, 2**bits - 1))
    pool = (ipaddress.IPv6Network if v6 else ipaddress.IPv4Network)(
        (base, pool_prefix), strict=False)
    got = list(blocks_in_pool(pool, block_size, key))
    assert len(got) == 2 ** (block_size - pool_prefix)
    assert len(set(got)) == len(got)
    assert all(b.prefixlen == block_size and b.version == pool.version
               and b.subnet_of(pool) for b in got)


def test_blocks_in_pool_start_depends_on_key():
    starts = {next(blocks_in_pool("10.0.0.0/16", 26, f"node-{i}")) for i in range(50)}
    # 50 nodes over 1024 blocks: sha256 spreads them; a fixed start would give 1.
    assert len(starts) >= 45


def test_blocks_in_pool_start_is_stable():
    # sha256, not the per-process salted hash(): the same on every node and every run.
    first = next(blocks_in_pool("10.0.0.0/16", 26, "node-1"))
    assert first == next(blocks_in_pool("10.0.0.0/16", 26, "node-1"))
    assert first == ipaddress.ip_network("10.0.95.64/26")


def test_blocks_in_pool_is_lazy():
    t0 = time.perf_counter()
    gen = blocks_in_pool("10.0.0.0/8", 26, "node-1")       # 262,144 blocks
    assert isinstance(gen, types.GeneratorType)
    few = list(itertools.islice(gen, 3))
    huge = blocks_in_pool("fd00::/48", 122, "node-1")       # 2**74 blocks
    assert next(huge).prefixlen == 122
    assert time.perf_counter() - t0 < 0.5
    assert [b.prefixlen for b in few] == [26, 26, 26]
    assert int(few[1].network_address) - int(few[0].network_address) in (64, -(2**24 - 64))


@pytest.mark.parametrize("pool, size", [
    ("10.0.0.0/24", 23),       # block bigger than the pool
    ("10.0.0.0/24", 33),
    ("fd00::/64", 129),
])
def test_blocks_in_pool_bad_size(pool, size):
    with pytest.raises(ValueError, match="does not fit pool"):
        blocks_in_pool(pool, size, "n")


def test_blocks_in_pool_rejects_host_bits():
    with pytest.raises(ValueError):
        blocks_in_pool("10.0.0.1/24", 26, "n")


# -- handle_id -----------------------------------------------------------------------

def test_handle_id():
    assert handle_id("k8s-pod-network", "abc123", "eth0") == "k8s-pod-network.abc123.eth0"


@pytest.mark.parametrize("args, fragment", [
    (("", "abc", "eth0"), "network must be a non-empty string"),
    (("net", "", "eth0"), "container id must be a non-empty string"),
    (("net", "abc", ""), "interface name must be a non-empty string"),
    (("net", None, "eth0"), "container id must be a non-empty string"),
    (("a/b", "abc", "eth0"), "network 'a/b' must not contain '/'"),
    (("net", "../../x", "eth0"), "container id '../../x' must not contain '/'"),
    (("net", "abc", "eth/0"), "interface name 'eth/0' must not contain '/'"),
])
def test_handle_id_rejects(args, fragment):
    with pytest.raises(ValueError) as e:
        handle_id(*args)
    assert fragment in str(e.value)
