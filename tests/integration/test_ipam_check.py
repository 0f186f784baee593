"""IPAM check and repair against a real etcd, with state corrupted on purpose."""

from __future__ import annotations

import ipaddress
import json

import pytest

from ipam.allocator import IPAM
from ipam.block import Block
from ipam.check import Report, check, repair
from ipam.handle import Handle
from routed import resources as r
from routed.datastore import keys
from routed.datastore.resources import ResourceStore

pytestmark = pytest.mark.etcd


@pytest.fixture
def ipam(kv):
    ResourceStore(kv).create(r.parse({"apiVersion": "routed.io/v1", "kind": "IPPool", "metadata": {"name": "p"},
                                      "spec": {"cidr": "10.20.0.0/16"}}))
    return IPAM(kv)


def types(report):
    return sorted(p.type for p in report.problems)


def test_a_healthy_ipam_is_clean(kv, ipam):
    for i in range(5):
        ipam.allocate(f"net.c{i}.eth0", "node-1")
    ipam.allocate("net.x.eth0", "node-2", num=3)
    ipam.release_handle("net.c2.eth0")
    report = check(kv)
    assert report.clean, report.problems
    assert report.counts["addressesInUse"] == 7 and report.counts["handles"] == 5


def test_every_inconsistency_is_found_and_repaired(kv, ipam):
    a = ipam.allocate("net.a.eth0", "node-1").ips[0]
    ipam.allocate("net.b.eth0", "node-1")
    ipam.allocate("net.c.eth0", "node-1")
    block_net = ipaddress.ip_network(f"{a}/26", strict=False)
    bkey = keys.block(block_net)
    # 1. a handle lost: its address is allocated without a handle
    kv.delete(keys.handle("net.a.eth0"))
    # 2. a handle whose block holds nothing for it
    ghost = Handle("net.ghost.eth0")
    ghost.add(block_net, 1)
    kv.put(keys.handle("net.ghost.eth0"), ghost.to_json().encode())
    # 3. a handle that counts wrong
    wrong = Handle("net.b.eth0")
    wrong.add(block_net, 5)
    kv.put(keys.handle("net.b.eth0"), wrong.to_json().encode())
    # 4. an affinity without a block
    kv.put(keys.affinity("node-9", "10.20.200.0/26"), json.dumps({"node": "node-9"}).encode())
    # 5. a block outside every pool (reported, left for an operator)
    kv.put(keys.block("192.168.77.0/26"), Block.new("192.168.77.0/26").to_json().encode())

    report = check(kv)
    assert types(report) == ["address-without-handle", "affinity-without-block", "block-outside-pools",
                             "handle-count-mismatch", "handle-without-addresses"]
    # The report survives a trip through JSON (routedctl ipam check -o report.json).
    report = Report.from_dict(json.loads(json.dumps(report.to_dict())))
    result = repair(kv, report)
    assert len(result.fixed) == 4
    assert [p.type for p, _ in result.skipped] == ["block-outside-pools"]
    assert types(check(kv)) == ["block-outside-pools"]
    # The repair released the handle-less address and left the good ones alone.
    block = Block.from_json(kv.get(bkey).value, key=bkey)
    assert block.attributes_for(a) is None
    assert block.in_use == 2


def test_repair_fixes_only_what_the_report_found(kv, ipam):
    a = ipam.allocate("net.a.eth0", "node-1").ips[0]
    b = ipam.allocate("net.b.eth0", "node-1").ips[0]
    a_handle = kv.get(keys.handle("net.a.eth0")).value
    kv.delete(keys.handle("net.a.eth0"))
    kv.delete(keys.handle("net.b.eth0"))
    report = check(kv)
    assert sorted(p.ip for p in report.problems) == sorted([str(a), str(b)])
    # After the check: a's problem goes away by itself, and c becomes a new leak.
    kv.put(keys.handle("net.a.eth0"), a_handle)
    ipam.allocate("net.c.eth0", "node-1")
    kv.delete(keys.handle("net.c.eth0"))
    result = repair(kv, report)
    assert [p.ip for p in result.fixed] == [str(b)]
    assert [(p.ip, why) for p, why in result.skipped] == [(str(a), "no longer the case")]
    (left,) = check(kv).problems
    assert left.handle == "net.c.eth0"  # not in the report, so not touched


def test_orphans_need_the_live_set(kv, ipam):
    ipam.allocate("net.live.eth0", "node-1")
    ipam.allocate("net.gone.eth0", "node-1", num=2)
    assert check(kv).clean
    report = check(kv, live_handles={"net.live.eth0"})
    assert types(report) == ["orphaned-address"] and report.problems[0].handle == "net.gone.eth0"
    assert len(repair(kv, report).fixed) == 1
    assert check(kv, live_handles={"net.live.eth0"}).clean
    assert kv.get(keys.handle("net.gone.eth0")) is None


def test_a_report_that_is_not_one_is_refused():
    from routed.errors import RoutedError

    with pytest.raises(RoutedError, match="not an IPAM check report"):
        Report.from_dict({"problems": [{"nope": 1}]}, source="x.json")
