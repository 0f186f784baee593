"""Group commit: one agent's concurrent allocations share one etcd transaction (real etcd).

To make the grouping deterministic, each test holds the allocator's lock while the
callers queue up (as concurrent CNI ADDs do while one allocation is in flight), then
lets go: the first caller to get the lock serves everything queued.
"""

from __future__ import annotations

import threading

import pytest

from ipam.allocator import IPAM
from ipam.check import check
from ipam.handle import Handle
from routed import resources as r
from routed.datastore import keys
from routed.datastore.resources import ResourceStore
from routed.errors import DatastoreUnavailable
from tests.support.wait import eventually

pytestmark = pytest.mark.etcd

NODE = "node-1"
CALLERS = 12


@pytest.fixture
def ipam(kv):
    ResourceStore(kv).create(r.parse({"apiVersion": "routed.io/v1", "kind": "IPPool", "metadata": {"name": "p"},
                                      "spec": {"cidr": "10.20.0.0/16", "blockSize": 26}}))
    allocator = IPAM(kv)
    allocator.allocate("net.first.eth0", NODE)  # claims the node's block: the callers below all fit in it
    return allocator


def queued_callers(ipam: IPAM, n: int = CALLERS):
    """n threads calling allocate() while the allocator is busy; returns (threads, outcomes)
    once all n are queued, the lock still held by the caller of this function."""
    outcomes: dict[str, object] = {}

    def call(i: int) -> None:
        handle = f"net.c{i}.eth0"
        try:
            outcomes[handle] = ipam.allocate(handle, NODE, {"pod": f"p{i}", "namespace": "ns"})
        except Exception as err:  # recorded for the test to look at
            outcomes[handle] = err

    threads = [threading.Thread(target=call, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    eventually(lambda: len(ipam._queue) == n, f"{n} callers queued")
    return threads, outcomes


def join(threads) -> None:
    for t in threads:
        t.join(timeout=60)
        assert not t.is_alive(), "a caller never returned"


def test_concurrent_allocations_share_one_transaction_and_each_gets_its_own_address(ipam, kv):
    before = dict(ipam.stats)
    with ipam._lock:
        threads, outcomes = queued_callers(ipam)
    join(threads)
    ips = [a.ips[0] for a in outcomes.values()]
    assert all(len(a.ips) == 1 and not a.borrowed for a in outcomes.values()), outcomes
    assert len(set(ips)) == CALLERS
    assert ipam.stats["txn"] - before.get("txn", 0) == 1  # all of them in one transaction
    assert ipam.stats["grouped"] == CALLERS
    for handle, allocation in outcomes.items():
        record = Handle.from_json(kv.get(keys.handle(handle)).value, key=handle)
        assert record.total == 1 and record.attrs["pod"] == f"p{handle[5:-5]}" and record.attrs["node"] == NODE
        assert ipam.held_by(handle) == allocation.ips
    assert check(kv).clean


def test_a_lost_race_fails_the_group_transaction_and_every_caller_still_gets_a_distinct_address(ipam, kv):
    other = IPAM(kv)  # another allocator of the same node (a second agent process) moves the block on
    with ipam._lock:
        threads, outcomes = queued_callers(ipam)
        rival = other.allocate("net.rival.eth0", NODE)
    join(threads)
    # The group's compare failed; the first caller then went alone (with the block the failure
    # branch brought), and the other callers grouped again after it.
    assert ipam.stats["conflict"] == 1 and ipam.stats["grouped"] == CALLERS - 1
    ips = [a.ips[0] for a in outcomes.values()] + rival.ips
    assert len(set(ips)) == CALLERS + 1, outcomes
    assert check(kv).clean


def test_a_failed_transaction_fails_every_caller_and_loses_nothing(ipam, kv, etcd):
    with ipam._lock:
        threads, outcomes = queued_callers(ipam)
        etcd.pause()  # the group's transaction finds etcd gone
    try:
        join(threads)
    finally:
        etcd.resume()
    assert all(isinstance(o, DatastoreUnavailable) for o in outcomes.values()), outcomes
    # The request may still have reached etcd and be applied on resume: all of it or none.
    handles = {keys.last_segment(i.key) for i in kv.list(keys.HANDLES).items} - {"net.first.eth0"}
    assert handles in (set(), set(outcomes)), handles
    assert check(kv).clean
    # The callers' retries (CNI ADD is retried) get an address each: the one written, if any.
    retried = {h: ipam.allocate(h, NODE) for h in outcomes}
    assert len({a.ips[0] for a in retried.values()}) == CALLERS
    assert all(a.reused == bool(handles) for a in retried.values())
    assert check(kv).clean


def test_callers_that_do_not_all_fit_fill_the_block_together_and_group_again_in_the_next(kv):
    ResourceStore(kv).create(r.parse({"apiVersion": "routed.io/v1", "kind": "IPPool", "metadata": {"name": "p"},
                                      "spec": {"cidr": "10.20.0.0/16", "blockSize": 28}}))
    ipam = IPAM(kv)
    for i in range(10):  # 6 of the block's 16 addresses left
        ipam.allocate(f"net.early{i}.eth0", NODE)
    before = dict(ipam.stats)
    with ipam._lock:
        threads, outcomes = queued_callers(ipam)
    join(threads)
    assert len({a.ips[0] for a in outcomes.values()}) == CALLERS
    # 6 together in the first block, 1 alone claiming the next, the other 5 together in it.
    assert ipam.stats["txn"] - before["txn"] == 3 and ipam.stats["grouped"] == CALLERS - 1
    assert check(kv).clean


def test_callers_served_return_while_the_leader_still_holds_the_lock(ipam, kv):
    """The convoy this design avoids: when served callers had to take the allocator's lock
    one by one to learn they were served, the leader came back with its next request before
    they did and served it alone (batches of 1 and 11, every other one, with 12 callers)."""
    import time

    waited = []
    serve = ipam._serve

    def serve_then_wait(batch):
        ipam._serve = serve  # the first batch only
        serve(batch)
        # Still holding the lock: every other caller of the batch returns meanwhile, or never.
        deadline = time.monotonic() + 10
        while len(outcomes) < len(batch) - 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        waited.append(len(outcomes))

    ipam._serve = serve_then_wait
    with ipam._lock:
        threads, outcomes = queued_callers(ipam)
    join(threads)
    assert waited == [CALLERS - 1], waited
    assert len({a.ips[0] for a in outcomes.values()}) == CALLERS
    assert check(kv).clean


def test_one_handle_queued_twice_is_served_alone_and_gets_one_address(ipam, kv):
    results = []
    with ipam._lock:
        threads = [threading.Thread(target=lambda: results.append(ipam.allocate("net.same.eth0", NODE)))
                   for _ in range(2)]
        for t in threads:
            t.start()
        eventually(lambda: len(ipam._queue) == 2, "2 callers queued")
    join(threads)
    assert len(results) == 2 and results[0].ips == results[1].ips
    assert Handle.from_json(kv.get(keys.handle("net.same.eth0")).value, key="h").total == 1
    assert check(kv).clean


def test_a_waiting_caller_interrupted_after_being_handed_the_lead_passes_it_on(ipam, kv, monkeypatch):
    """A caller that leaves while waiting (^C in a CLI) must not leave the queue without a
    leader: everyone queued behind it would wait forever."""
    import threading as th

    from ipam import allocator as alloc

    class Interrupted(BaseException):
        pass

    class InterruptedOnWake(th.Event):
        def wait(self, timeout=None):  # the first waiter: interrupted as soon as it is woken
            super().wait(timeout)
            raise Interrupted()

    event = th.Event
    monkeypatch.setattr(alloc.threading, "Event",
                        lambda: InterruptedOnWake() if th.current_thread().name == "quitter" else event())
    outcomes: dict[str, object] = {}

    def call(handle: str) -> None:
        try:
            outcomes[handle] = ipam.allocate(handle, NODE)
        except BaseException as err:  # recorded for the test to look at
            outcomes[handle] = err

    serve = ipam._serve

    def serve_once_both_queued(batch):  # the leader serves itself while the other two queue
        ipam._serve = serve
        eventually(lambda: len(ipam._queue) == 2, "two callers queued behind the leader")
        serve(batch)

    ipam._serve = serve_once_both_queued
    threads = [th.Thread(target=call, args=("net.leader.eth0",), daemon=True)]
    threads[0].start()
    eventually(lambda: ipam._leading and not ipam._queue, "the leader serving")
    for handle in ("net.quitter.eth0", "net.next.eth0"):  # handed the lead first, then the next
        threads.append(th.Thread(target=call, args=(handle,), daemon=True, name=handle.split(".")[1]))
        threads[-1].start()
        eventually(lambda h=handle: any(q.handle == h for q in ipam._queue), f"{handle} queued")
    join(threads)
    assert isinstance(outcomes["net.quitter.eth0"], Interrupted)
    assert outcomes["net.leader.eth0"].ips and outcomes["net.next.eth0"].ips
    assert not ipam._leading and not ipam._queue
    assert check(kv).clean
