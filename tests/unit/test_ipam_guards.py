"""What IPAM refuses and survives, on the in-memory KV (etcd's semantics, see
tests/integration/test_datastore.py): pools in use, overlapping blocks, bad records,
pools a node may not use. The same against a real etcd: tests/integration/test_ipam_faults.py."""

from __future__ import annotations

import ipaddress
import json

import pytest

from ipam.allocator import IPAM
from ipam.block import Block
from ipam.errors import NoMatchingPool, PoolExhausted
from routed import resources as r
from routed.datastore import Op, keys
from routed.datastore.memory import MemoryKV
from routed.datastore.resources import ResourceStore
from routed.errors import InvalidResource


def pool(name, cidr, block_size=None, **spec):
    spec = {"cidr": cidr, **({"blockSize": block_size} if block_size else {}), **spec}
    return r.parse({"apiVersion": "routed.io/v1", "kind": "IPPool", "metadata": {"name": name}, "spec": spec})


@pytest.fixture
def kv():
    return MemoryKV()


@pytest.fixture
def store(kv):
    return ResourceStore(kv)


def _drain(ipam, node, prefix, limit=2000):
    got = []
    for i in range(limit):
        try:
            got += ipam.allocate(f"{prefix}{i}", node).ips
        except PoolExhausted:
            return got
    raise AssertionError("the pool never ran out")


# -- 10.3: a pool in use is neither deleted nor re-shaped ------------------------------------


def test_deleting_a_pool_with_addresses_in_use_is_refused(store, kv):
    store.create(pool("p", "10.20.0.0/24", 26))
    ip = IPAM(kv).allocate("net.a.eth0", "node-1").ips[0]
    with pytest.raises(InvalidResource) as err:
        store.delete(r.IPPool, "p")
    message = str(err.value)
    assert "\n" not in message and "1 address(es) in use" in message and "disabled" in message, message
    assert store.get(r.IPPool, "p") and kv.get(keys.block(ipaddress.ip_network(f"{ip}/26", strict=False)))


def test_deleting_a_pool_whose_blocks_are_empty_removes_them_with_it(store, kv):
    store.create(pool("p", "10.20.0.0/24", 26))
    ipam = IPAM(kv)
    ip = ipam.allocate("net.a.eth0", "node-1").ips[0]
    ipam.release_handle("net.a.eth0")
    store.patch(r.IPPool, "p", {"spec": {"disabled": True}})
    store.delete(r.IPPool, "p")
    assert kv.keys(keys.BLOCKS) == [] and kv.keys(keys.AFFINITIES) == []
    # The CIDR is free for a pool of another shape, and its blocks do not overlap old ones.
    store.create(pool("q", "10.20.0.0/24", 28))
    assert ipam.allocate("net.b.eth0", "node-1").ips[0] in ipaddress.ip_network("10.20.0.0/24")
    assert ip


def test_a_pools_shape_cannot_change(store, kv):
    store.create(pool("p", "10.20.0.0/24", 26))
    with pytest.raises(InvalidResource, match="blockSize is immutable"):
        store.patch(r.IPPool, "p", {"spec": {"blockSize": 28}})


def test_blocks_left_by_an_older_pool_are_never_overlapped(store, kv):
    """A /26 holding an address outlives its pool (deleted by an older routed, or by hand);
    a pool of /28 blocks over the same CIDR must not hand that address out again."""
    store.create(pool("old", "10.20.0.0/24", 26))
    held = IPAM(kv).allocate("net.old.eth0", "node-1").ips[0]
    kv.delete(keys.resource("ippools", "old"))
    store.create(pool("new", "10.20.0.0/24", 28))
    got = _drain(IPAM(kv), "node-2", "net.new")
    assert held not in got and len(got) == len(set(got))
    # Every other address: the new pool's blocks outside the old /26, and the old block's
    # free addresses, borrowed from it as it stands.
    assert len(got) == 255
    from ipam.check import check

    assert "overlapping-blocks" not in {p.type for p in check(kv).problems}


class _ClaimRace(MemoryKV):
    """Writes a block overlapping the next claimed one just before the claim's transaction:
    what another writer (an older agent, an operator) could do between our read and write."""

    armed = True

    def txn(self, compare, success, failure=()):
        claim = next((op for op in success if op.kind == "put" and op.key.startswith(keys.AFFINITIES)), None)
        if claim is not None and self.armed:
            self.armed = False
            cidr = keys.cidr_from_segment(keys.last_segment(claim.key))
            wider = cidr.supernet(new_prefix=cidr.prefixlen - 2)
            super().txn([], [Op.put(keys.block(wider), Block.new(wider, "host:intruder").to_json())])
        return super().txn(compare, success, failure)


def test_a_claim_fails_in_its_transaction_when_an_overlapping_block_appears():
    kv = _ClaimRace()
    ResourceStore(kv).create(pool("p", "10.20.0.0/16", 26))
    ip = IPAM(kv).allocate("net.a.eth0", "node-1").ips[0]
    assert not kv.armed
    (intruder,) = [Block.from_json(i.value, key=i.key) for i in kv.list(keys.BLOCKS).items
                   if b"intruder" in i.value]
    assert ip not in intruder.cidr
    from ipam.check import check

    assert "overlapping-blocks" not in {p.type for p in check(kv).problems}


# -- 10.5: one bad record stops nothing else -------------------------------------------------


def _corrupt_everything_but_one_pool(store, kv):
    """node-1 holds an address in a block that then turns to garbage; a second pool's
    record is not JSON, a third fails validation; the IPAMConfig fails validation."""
    store.create(pool("good", "10.20.0.0/16", 26))
    first = IPAM(kv).allocate("net.a.eth0", "node-1")
    bkey = keys.block(ipaddress.ip_network(f"{first.ips[0]}/26", strict=False))
    kv.put(bkey, b"\x00garbage")
    kv.put(keys.resource("ippools", "unparsable"), b"{not json")
    kv.put(keys.resource("ippools", "invalid"), b'{"apiVersion": "routed.io/v1", "kind": "IPPool", '
                                                b'"metadata": {"name": "invalid"}, "spec": {"cidr": "10.0.0.0/33"}}')
    kv.put(keys.resource("ipamconfigs", "default"), b'{"apiVersion": "routed.io/v1", "kind": "IPAMConfig", '
                                                     b'"metadata": {"name": "default"}, "spec": {"maxBlocksPerHost": -3}}')
    return first, bkey


def test_corrupt_records_are_skipped_logged_once_and_counted(store, kv, caplog):
    first, bkey = _corrupt_everything_but_one_pool(store, kv)
    ipam = IPAM(kv)
    got = [ipam.allocate(f"net.b{i}.eth0", "node-1").ips[0] for i in range(3)]
    got += ipam.allocate("net.c.eth0", "node-2").ips
    assert first.ips[0] not in got and len(set(got)) == 4
    assert all(ip in ipaddress.ip_network("10.20.0.0/16") for ip in got)
    assert ipam.held_by("net.b0.eth0") == got[:1]
    assert ipam.release_handle("net.a.eth0") == []  # its block is unreadable: the DEL still answers
    assert "net.b1.eth0" in ipam.handles_on_node("node-1")
    ipam.empty_blocks("node-1")
    # A fresh read of the configuration skips the bad records again, and says so once.
    ipam.pools_for({}, fresh=True)
    assert set(ipam.unreadable) == {bkey, keys.resource("ippools", "unparsable"),
                                    keys.resource("ippools", "invalid"), keys.resource("ipamconfigs", "default")}
    for key in ipam.unreadable:
        assert sum(key in rec.getMessage() for rec in caplog.records) == 1, key
    # Repaired, a record is read again and no longer counted.
    kv.delete(keys.resource("ippools", "unparsable"))
    ipam.pools_for({}, fresh=True)
    assert keys.resource("ippools", "unparsable") not in ipam.unreadable


def test_ipam_check_reports_every_bad_record(store, kv):
    from ipam.check import check

    _, bkey = _corrupt_everything_but_one_pool(store, kv)
    corrupt = {p.key for p in check(kv).problems if p.type == "corrupt-value"}
    assert corrupt == {bkey, keys.resource("ippools", "unparsable"), keys.resource("ippools", "invalid"),
                       keys.resource("ipamconfigs", "default")}


# -- 10.11: annotations respect a pool's disabled and nodeSelector ---------------------------


def test_a_named_pool_must_select_the_node(store, kv):
    store.create(pool("gpu", "10.40.0.0/24", 28, nodeSelector="gpu == 'true'"))
    ipam = IPAM(kv)
    with pytest.raises(NoMatchingPool, match='IP pool "gpu" does not select node "node-1"'):
        ipam.allocate("net.a.eth0", "node-1", pools=["gpu"], node_labels={"gpu": "false"})
    assert ipam.allocate("net.b.eth0", "node-2", pools=["gpu"], node_labels={"gpu": "true"}).pool == "gpu"


def test_a_fixed_address_in_a_disabled_pool_is_refused(store, kv):
    store.create(pool("off", "10.40.0.0/24", 28, disabled=True))
    with pytest.raises(NoMatchingPool, match='address 10.40.0.5: IP pool "off" is disabled'):
        IPAM(kv).assign_ip("10.40.0.5", "net.a.eth0", "node-1")
    assert kv.keys(keys.BLOCKS) == []


def test_a_fixed_address_in_a_pool_not_selecting_the_node_is_refused(store, kv):
    store.create(pool("gpu", "10.40.0.0/24", 28, nodeSelector="gpu == 'true'"))
    ipam = IPAM(kv)
    with pytest.raises(NoMatchingPool, match='IP pool "gpu" does not select node "node-1"'):
        ipam.assign_ip("10.40.0.5", "net.a.eth0", "node-1", node_labels={})
    assert ipam.assign_ip("10.40.0.5", "net.a.eth0", "node-2", node_labels={"gpu": "true"}).ips


def test_without_labels_a_fixed_address_is_checked_against_the_registered_node(store, kv):
    """The CNI path passes no labels to assign_ip: IPAM reads them from the Node the agent registered."""
    store.create(pool("gpu", "10.40.0.0/24", 28, nodeSelector="gpu == 'true'"))
    store.create(r.parse({"apiVersion": "routed.io/v1", "kind": "Node",
                          "metadata": {"name": "node-2", "labels": {"gpu": "true"}}}))
    ipam = IPAM(kv)
    with pytest.raises(NoMatchingPool, match="does not select"):
        ipam.assign_ip("10.40.0.5", "net.a.eth0", "node-1")
    assert ipam.assign_ip("10.40.0.6", "net.b.eth0", "node-2").ips


def test_the_cni_add_checks_a_fixed_address_against_the_agents_node_labels(store, kv, tmp_path):
    """cmd_add passes the agent's current labels to assign_ip as it does to allocate: a node
    whose Node is not registered (yet) still gets a fixed address from a pool selecting it."""
    from cni import plugin, spec

    class Veth:  # the dataplane is not what is tested here
        def setup(self, netns, ifname, host_ifname, ips, mtu):
            return {"host_mac": "02:00:00:00:00:01", "mac": "02:00:00:00:00:02"}

    store.create(pool("gpu", "10.40.0.0/24", 28, nodeSelector="gpu == 'true'"))
    netns = tmp_path / "netns"
    netns.write_text("")
    conf = {"cniVersion": "1.0.0", "name": "k8s-pod-network", "type": "routed",
            "runtimeConfig": {"ips": ["10.40.0.5/32"]}}
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_NETNS": str(netns), "CNI_IFNAME": "eth0"}
    ctx = plugin.Context(IPAM(kv), "node-1", Veth(), node_labels=lambda: {"gpu": "true"})
    result = json.loads(plugin.cmd_add(spec.parse_request(env, json.dumps(conf)), ctx))
    assert result["ips"][0]["address"] == "10.40.0.5/32"
    ctx = plugin.Context(IPAM(kv), "node-2", Veth(), node_labels=lambda: {"gpu": "false"})
    env = {**env, "CNI_CONTAINERID": "c2"}
    conf["runtimeConfig"]["ips"] = ["10.40.0.6/32"]
    with pytest.raises(NoMatchingPool, match='does not select node "node-2"'):
        plugin.cmd_add(spec.parse_request(env, json.dumps(conf)), ctx)


# -- GC vs an agent that comes back ----------------------------------------------------------


def test_releasing_a_node_whose_agent_came_back_keeps_its_blocks(store, kv):
    """The controller decides a node is gone, then releases it; an agent that registers
    liveness in between keeps every block and affinity (each txn re-checks it)."""
    store.create(pool("p", "10.21.0.0/24", 26))
    ipam = IPAM(kv)
    ipam.allocate("net.a.eth0", "node-1")
    kv.put(keys.liveness("node-1"), "{}")  # the agent is back
    assert ipam.release_node("node-1", unless_alive=keys.liveness("node-1")) == []
    assert len(kv.keys(keys.affinity("node-1"))) == 1
    kv.delete(keys.liveness("node-1"))
    assert len(ipam.release_node("node-1", unless_alive=keys.liveness("node-1"))) == 1
    assert kv.keys(keys.affinity("node-1")) == []
