"""The block IPAM's logic, on the in-memory KV (etcd's semantics, checked against a
real etcd in test_datastore.py); what depends on etcd itself (concurrent writers over
the network) runs against a real etcd here and in test_ipam_concurrency.py."""

from __future__ import annotations

import ipaddress

import pytest

from ipam.allocator import IPAM, EmptyBlockReaper
from ipam.block import Block
from ipam.errors import AddressInUse, AddressNotInPool, NoMatchingPool, PoolExhausted, TooManyBlocks
from ipam.handle import Handle
from routed import resources as r
from routed.datastore import keys
from routed.datastore.memory import MemoryKV
from routed.datastore.resources import ResourceStore


@pytest.fixture
def kv():
    return MemoryKV()


@pytest.fixture
def etcd_kv(etcd):
    client = etcd.client()
    try:
        yield client
    finally:
        client.close()


def pool(name, cidr, block_size=None, **spec):
    spec = {"cidr": cidr, **({"blockSize": block_size} if block_size else {}), **spec}
    return r.parse({"apiVersion": "routed.io/v1", "kind": "IPPool", "metadata": {"name": name}, "spec": spec})


def ipam_config(**spec):
    return r.parse({"apiVersion": "routed.io/v1", "kind": "IPAMConfig", "metadata": {"name": "default"},
                    "spec": spec})


@pytest.fixture
def store(kv):
    return ResourceStore(kv)


@pytest.fixture
def ipam(kv):
    return IPAM(kv)


def block_of(kv, cidr) -> Block:
    item = kv.get(keys.block(cidr))
    return Block.from_json(item.value, key=item.key)


def test_first_allocation_claims_an_affine_block(store, kv, ipam):
    store.create(pool("p", "10.10.0.0/16"))
    a = ipam.allocate("net.c1.eth0", "node-1", {"pod": "a", "namespace": "default"})
    (ip,) = a.ips
    assert ip in ipaddress.ip_network("10.10.0.0/16") and a.pool == "p" and a.borrowed == []
    block = ipaddress.ip_network(f"{ip}/26", strict=False)
    assert kv.get(keys.affinity("node-1", block)) is not None
    stored = block_of(kv, block)
    assert stored.affinity == "host:node-1"
    # The block keeps the handle and the node; the pod's attributes are in the handle record.
    assert stored.attributes_for(ip) == {"handle": "net.c1.eth0", "secondary": {"node": "node-1"}}
    record = Handle.from_json(kv.get(keys.handle("net.c1.eth0")).value, key="h")
    assert record.attrs["pod"] == "a" and record.attrs["namespace"] == "default" and record.attrs["node"] == "node-1"
    b = ipam.allocate("net.c2.eth0", "node-1")
    assert b.ips[0] in block and b.ips[0] != ip


def test_layout_1_records_are_read_as_they_are(store, ipam, kv):
    """Layout 1 kept the pod's attributes in the block and none in the handle: a layout-2
    program reads them from there, and allocates and releases next to them."""
    from ipam import usage
    from ipam.check import check

    store.create(pool("p", "10.10.0.0/16"))
    block = Block.new("10.10.0.0/26", "host:node-1")
    (old_ip,) = block.assign(1, "net.old.eth0", {"node": "node-1", "pod": "old", "namespace": "ns"})
    kv.put(keys.block(block.cidr), block.to_json())
    kv.put(keys.affinity("node-1", block.cidr), '{"node":"node-1","cidr":"10.10.0.0/26","pool":"p"}')
    kv.put(keys.handle("net.old.eth0"), '{"blocks":{"10.10.0.0/26":1},"handle":"net.old.eth0","sequence":1}')
    held = usage.who_holds(kv, str(old_ip))
    assert (held["handle"], held["pod"], held["namespace"], held["node"]) == ("net.old.eth0", "old", "ns", "node-1")
    new = ipam.allocate("net.new.eth0", "node-1", {"pod": "new", "namespace": "ns"})
    assert new.ips[0] in block.cidr and new.ips[0] != old_ip
    assert usage.who_holds(kv, str(new.ips[0]))["pod"] == "new"
    assert check(kv).clean
    assert ipam.release_handle("net.old.eth0") == [old_ip]
    assert check(kv).clean


def test_allocation_is_idempotent_per_handle(store, ipam, kv):
    store.create(pool("p", "10.10.0.0/16"))
    first = ipam.allocate("net.c1.eth0", "node-1")
    again = IPAM(kv).allocate("net.c1.eth0", "node-1")  # e.g. a retried CNI ADD after an agent restart
    assert again.ips == first.ips
    assert block_of(kv, ipaddress.ip_network(f"{first.ips[0]}/26", strict=False)).in_use == 1


def test_release_by_handle_is_idempotent_and_reuses_last(store, ipam, kv):
    store.create(pool("p", "10.10.0.0/16"))
    first = ipam.allocate("net.c1.eth0", "node-1").ips[0]
    assert ipam.release_handle("net.c1.eth0") == [first]
    assert ipam.release_handle("net.c1.eth0") == []
    assert ipam.release_handle("net.never.eth0") == []
    assert kv.get(keys.handle("net.c1.eth0")) is None
    # The freed address went to the tail of the free list: the next 63 allocations avoid it.
    seen = {ipam.allocate(f"net.n{i}.eth0", "node-1").ips[0] for i in range(63)}
    assert first not in seen
    assert ipam.allocate("net.n63.eth0", "node-1").ips[0] == first


def test_pool_choice_honours_disabled_selector_and_names(store, ipam):
    store.create(pool("off", "10.1.0.0/16", disabled=True))
    store.create(pool("rack2", "10.2.0.0/16", nodeSelector="rack == '2'"))
    store.create(pool("any", "10.3.0.0/16"))
    ip = ipam.allocate("net.a.eth0", "node-1", node_labels={"rack": "1"}).ips[0]
    assert ip in ipaddress.ip_network("10.3.0.0/16")
    # Naming a pool (a pod annotation) does not bypass its nodeSelector.
    with pytest.raises(NoMatchingPool, match="does not select"):
        ipam.allocate("net.b.eth0", "node-1", pools=["rack2"], node_labels={"rack": "1"})
    ip = ipam.allocate("net.b.eth0", "node-2", pools=["rack2"], node_labels={"rack": "2"}).ips[0]
    assert ip in ipaddress.ip_network("10.2.0.0/16")
    with pytest.raises(NoMatchingPool, match="disabled"):
        ipam.allocate("net.c.eth0", "node-1", pools=["off"])
    with pytest.raises(NoMatchingPool, match="does not exist"):
        ipam.allocate("net.c.eth0", "node-1", pools=["nope"])
    with pytest.raises(NoMatchingPool):
        ipam.allocate("net.c.eth0", "node-1", version=6)


def test_exhaustion_is_a_clear_error(store, ipam, kv):
    store.create(pool("tiny", "10.9.0.0/28", 28))
    for i in range(16):
        ipam.allocate(f"net.c{i}.eth0", "node-1")
    with pytest.raises(PoolExhausted) as err:
        ipam.allocate("net.c16.eth0", "node-1")
    assert "tiny" in str(err.value) and "node-1" in str(err.value) and "\n" not in str(err.value)
    assert kv.get(keys.handle("net.c16.eth0")) is None


def test_borrowing_when_no_block_is_left(store, ipam, kv):
    store.create(pool("small", "10.9.0.0/27", 28))  # two blocks of 16
    a_ips = [ipam.allocate(f"net.a{i}.eth0", "node-a").ips[0] for i in range(16)]
    b_ip = ipam.allocate("net.b0.eth0", "node-b").ips[0]
    borrowed = ipam.allocate("net.a16.eth0", "node-a")
    assert borrowed.borrowed == borrowed.ips
    b_block = ipaddress.ip_network(f"{b_ip}/28", strict=False)
    assert borrowed.ips[0] in b_block and borrowed.ips[0] not in a_ips
    assert block_of(kv, b_block).affinity == "host:node-b"  # borrowing does not move the block


def test_strict_affinity_forbids_borrowing(store, ipam):
    store.create(pool("small", "10.9.0.0/27", 28))
    store.create(ipam_config(strictAffinity=True))
    for i in range(16):
        ipam.allocate(f"net.a{i}.eth0", "node-a")
    ipam.allocate("net.b0.eth0", "node-b")
    with pytest.raises(PoolExhausted):
        ipam.allocate("net.a16.eth0", "node-a")


def test_max_blocks_per_host(store, ipam):
    store.create(pool("p", "10.9.0.0/24", 28))
    store.create(ipam_config(maxBlocksPerHost=1, strictAffinity=True))
    for i in range(16):
        ipam.allocate(f"net.a{i}.eth0", "node-a")
    with pytest.raises(TooManyBlocks, match="maximum of 1"):
        ipam.allocate("net.a16.eth0", "node-a")


def test_max_blocks_per_host_borrows_when_allowed(store, ipam):
    store.create(pool("p", "10.9.0.0/24", 28))
    store.create(ipam_config(maxBlocksPerHost=1))
    ipam.allocate("net.b0.eth0", "node-b")
    for i in range(16):
        ipam.allocate(f"net.a{i}.eth0", "node-a")
    assert ipam.allocate("net.a16.eth0", "node-a").borrowed


def test_assign_specific_address(store, ipam, kv):
    store.create(pool("p", "10.10.0.0/16"))
    a = ipam.assign_ip("10.10.7.9", "net.static.eth0", "node-1", {"pod": "s"})
    assert a.ips == [ipaddress.ip_address("10.10.7.9")]
    assert block_of(kv, "10.10.7.0/26").affinity == "host:node-1"
    with pytest.raises(AddressInUse):
        ipam.assign_ip("10.10.7.9", "net.other.eth0", "node-1")
    with pytest.raises(AddressNotInPool):
        ipam.assign_ip("192.0.2.1", "net.x.eth0", "node-1")
    assert kv.get(keys.handle("net.other.eth0")) is None


def test_release_by_address_fixes_the_handle(store, ipam, kv):
    store.create(pool("p", "10.10.0.0/16"))
    a = ipam.allocate("net.c1.eth0", "node-1", num=2)
    assert ipam.release_ips([str(a.ips[0])]) == [a.ips[0]]
    assert kv.get(keys.handle("net.c1.eth0")) is not None
    ipam.release_ips([str(a.ips[1])])
    assert kv.get(keys.handle("net.c1.eth0")) is None
    assert ipam.release_ips([str(a.ips[1])]) == []


def test_ipv6_pool(store, ipam):
    store.create(pool("v6", "fd00:10::/64"))
    a = ipam.allocate("net.c1.eth0", "node-1", version=6)
    assert a.ips[0].version == 6 and a.ips[0] in ipaddress.ip_network("fd00:10::/64")
    assert a.prefixes()[0].endswith("/128")


def test_node_release_keeps_busy_blocks_until_empty(store, ipam, kv):
    store.create(pool("p", "10.9.0.0/24", 28))
    busy = ipam.allocate("net.busy.eth0", "gone").ips[0]
    ipam.allocate("net.tmp.eth0", "gone")
    for i in range(15):  # fill the first block so a second one is claimed, then empty it
        ipam.allocate(f"net.f{i}.eth0", "gone")
    for i in range(15):
        ipam.release_handle(f"net.f{i}.eth0")
    ipam.release_handle("net.tmp.eth0")
    blocks = sorted(keys.last_segment(k) for k in kv.keys(keys.BLOCKS))
    assert len(blocks) == 2
    ipam.release_node("gone")
    assert kv.keys(keys.affinity("gone")) == []
    busy_block = ipaddress.ip_network(f"{busy}/28", strict=False)
    assert [keys.last_segment(k) for k in kv.keys(keys.BLOCKS)] == [keys.cidr_segment(busy_block)]
    assert block_of(kv, busy_block).affinity is None
    ipam.release_handle("net.busy.eth0")
    reaper = EmptyBlockReaper(ipam, node=None, grace=0)
    assert reaper.sweep() == [str(busy_block)]
    assert kv.keys(keys.BLOCKS) == []


def test_empty_blocks_are_released_after_the_grace_period(store, ipam, kv):
    store.create(pool("p", "10.10.0.0/16"))
    ip = ipam.allocate("net.c1.eth0", "node-1").ips[0]
    ipam.release_handle("net.c1.eth0")
    now = [100.0]
    reaper = EmptyBlockReaper(ipam, "node-1", grace=30, clock=lambda: now[0])
    assert reaper.sweep() == []
    now[0] = 120.0
    assert reaper.sweep() == []
    # Used and freed again within the grace period: its clock starts over.
    ipam.allocate("net.c2.eth0", "node-1")
    ipam.release_handle("net.c2.eth0")
    now[0] = 135.0
    assert reaper.sweep() == []
    now[0] = 166.0
    block = ipaddress.ip_network(f"{ip}/26", strict=False)
    assert reaper.sweep() == [str(block)]
    assert kv.get(keys.affinity("node-1", block)) is None
    # The node gets a block again when it needs one.
    assert ipam.allocate("net.c3.eth0", "node-1").ips


@pytest.mark.etcd
def test_two_allocators_for_one_node_never_collide(etcd_kv):
    kv = etcd_kv
    ResourceStore(kv).create(pool("p", "10.10.0.0/16"))
    one, two = IPAM(kv), IPAM(kv)
    got = []
    for i in range(40):
        got += (one if i % 2 else two).allocate(f"net.c{i}.eth0", "node-1").ips
        if i % 7 == 0:
            (two if i % 2 else one).release_handle(f"net.c{i}.eth0")
            got.pop()
    assert len(got) == len(set(got))


def test_dual_stack_under_one_handle(store, ipam, kv):
    store.create(pool("v4", "10.10.0.0/16"))
    store.create(pool("v6", "fd00:10::/64"))
    v4 = ipam.allocate("net.c1.eth0", "node-1", version=4)
    v6 = ipam.allocate("net.c1.eth0", "node-1", version=6)
    assert v4.ips[0].version == 4 and v6.ips[0].version == 6 and not v6.reused
    # Retried requests get the same addresses back, per family.
    assert ipam.allocate("net.c1.eth0", "node-1", version=6).ips == v6.ips
    assert ipam.allocate("net.c1.eth0", "node-1", version=4).reused
    static = ipam.assign_ip("fd00:10::99", "net.c2.eth0", "node-1")
    static4 = ipam.assign_ip("10.10.9.9", "net.c2.eth0", "node-1")
    assert ipam.assign_ip("10.10.9.9", "net.c2.eth0", "node-1").reused
    assert sorted(map(str, ipam.release_handle("net.c1.eth0"))) == sorted(map(str, v4.ips + v6.ips))
    assert len(ipam.release_handle("net.c2.eth0")) == 2 and static.ips and static4.ips
    from ipam.check import check

    assert check(kv).clean


def test_a_pool_named_right_after_it_was_created_is_found(store, ipam):
    store.create(pool("first", "10.10.0.0/16"))
    ipam.allocate("net.a.eth0", "node-1")  # caches the pool list
    store.create(pool("brand-new", "10.11.0.0/16"))
    got = ipam.allocate("net.b.eth0", "node-1", pools=["brand-new"])
    assert got.pool == "brand-new"
