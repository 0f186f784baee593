"""The enforcer's ADD path: no etcd read, a transaction of its own elements whose size
does not grow with pods, and a table that stays what a full render gives (on the
in-memory KV; the kernel side is tests/netns/test_policy.py)."""

from __future__ import annotations

import threading

from routed import resources as r
from routed.datastore.memory import MemoryKV
from routed.datastore.resources import ResourceStore
from routed.policy import nft
from routed.policy.enforcer import PolicyEnforcer
from tests.support import netpol


class CountingKV:
    """The KV, counting the reads that go to etcd."""

    def __init__(self, kv):
        self._kv, self.reads = kv, 0

    def get(self, key):
        self.reads += 1
        return self._kv.get(key)

    def list(self, prefix, **kw):
        self.reads += 1
        return self._kv.list(prefix, **kw)

    def __getattr__(self, name):
        return getattr(self._kv, name)


def _cluster():
    kv = CountingKV(MemoryKV())
    store = ResourceStore(kv)
    for ns in ("x", "y"):
        store.apply(r.parse({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}))
    store.create(r.parse(netpol.knp("p", "x", {"pod": "a"}, ingress=[{"from": [netpol.pods(pod="b")]}])))
    # Selects nobody until a pod labelled role=new comes: its chains and sets are new then.
    store.create(r.parse(netpol.knp("q", "x", {"role": "new"}, ingress=[{"from": [netpol.pods(pod="c")]}],
                                    egress=[{"to": [netpol.pods(pod="a")], "ports": [{"port": "http"}]}])))
    applied: list[str] = []
    enforcer = PolicyEnforcer(kv, store, "node-1", None, apply=applied.append)
    enforcer.sync()
    return kv, store, enforcer, applied


def _add(enforcer, i: int, labels: dict, ns: str = "x", node: str = "node-1"):
    enforcer.added(ns, f"p{i}", f"c{i}", f"cali{i:04d}" if node == "node-1" else "", [f"10.1.{i // 200}.{i % 200}/32"],
                   labels=labels)


def test_add_reads_nothing_from_etcd_and_its_transaction_does_not_grow_with_pods():
    kv, _, enforcer, applied = _cluster()
    sizes = []
    for i in range(60):
        reads = kv.reads
        _add(enforcer, i, {"pod": "abc"[i % 3]})
        assert kv.reads == reads, f"ADD {i} read etcd"
        assert "delete table" not in applied[-1], f"ADD {i} re-rendered the table"
        sizes.append(len(applied[-1].splitlines()))
    assert sizes[-3:] == sizes[3:6], sizes  # the same pod kinds, 20 pods apart: the same few commands


def test_incremental_adds_equal_a_full_render():
    kv, store, enforcer, applied = _cluster()
    texts = {}
    for i, labels in enumerate([{"pod": "a"}, {"pod": "b"}, {"pod": "c"}, {"pod": "a", "role": "new"}, {}]):
        _add(enforcer, i, labels)
        texts[i] = applied[-1]
    _add(enforcer, 9, {"pod": "b"}, ns="x", node="node-2")  # another node's pod: only its address
    assert applied[-1].splitlines() == [f"add element inet {nft.TABLE} {name} {{ 10.1.0.9 }}"
                                        for name in applied[-1].split()[4:5]]
    assert not any("delete table" in text for text in applied[1:])
    assert any(line.startswith("add chain") for line in texts[3].splitlines())  # role=new: a new group
    full = PolicyEnforcer(kv, store, "node-1", None).desired()
    assert enforcer._table.ruleset == full
    assert enforcer._table.ruleset.render() == full.render()


def test_removal_takes_the_elements_out_and_a_resync_renders_it_all():
    kv, store, enforcer, applied = _cluster()
    for i in range(4):
        _add(enforcer, i, {"pod": "abc"[i % 3]})
    enforcer.removed("x", "p1", "c1")
    text = applied[-1]
    assert "delete table" not in text and '"cali0001"' in text and "10.1.0.1" in text
    assert enforcer.sync() is True and "delete table" in applied[-1]  # pods came and went since the last full one
    assert enforcer._table.ruleset == PolicyEnforcer(kv, store, "node-1", None).desired()
    assert enforcer.sync() is False


def test_concurrent_adds_share_transactions():
    kv, store, enforcer, applied = _cluster()
    gate, entered = threading.Event(), threading.Event()

    def slow_apply(text):  # the first transaction holds the nft lock until every other ADD queued
        if not entered.is_set():
            entered.set()
            gate.wait(10)
        applied.append(text)

    enforcer.apply = slow_apply
    threads = [threading.Thread(target=_add, args=(enforcer, i, {"pod": "b"})) for i in range(30)]
    threads[0].start()
    entered.wait(10)
    for t in threads[1:]:
        t.start()
    while len(enforcer._pending) < 29 and any(t.is_alive() for t in threads[1:]):
        threading.Event().wait(0.01)
    gate.set()
    for t in threads:
        t.join(10)
    assert len(applied) == 1 + 2, [len(a) for a in applied]  # the full sync, the first ADD, all others at once
    assert enforcer._table.ruleset == PolicyEnforcer(kv, store, "node-1", None).desired()
    assert sum(nft.TABLE in line for line in applied[-1].splitlines()) >= 29 * 2


def test_a_failed_transaction_fails_the_add_and_the_next_change_renders_it_all():
    from routed.policy.enforcer import PolicyError

    kv, store, enforcer, applied = _cluster()

    def failing(text):
        raise PolicyError("nft -f: no")

    enforcer.apply = failing
    try:
        _add(enforcer, 1, {"pod": "b"})
        raise AssertionError("the ADD did not fail")
    except PolicyError:
        pass
    enforcer.apply = applied.append
    _add(enforcer, 1, {"pod": "b"})  # the runtime tries again: the kernel's table is unknown, so all of it
    assert "delete table" in applied[-1] and '"cali0001"' in applied[-1]
    assert enforcer._table.ruleset == PolicyEnforcer(kv, store, "node-1", None).desired()


def _table_addresses(enforcer) -> set[str]:
    return {e for _, elements in enforcer._table.ruleset.sets.values() for e in elements if e[0].isdigit()}


def test_an_older_watch_event_never_undoes_a_newer_add_or_del():
    """The watch brings this agent's own writes back late: a re-added pod's ADD must not be
    undone by the DEL of its previous sandbox arriving after it, nor a DEL by the earlier
    ADD's put (that would put a released address back into the sets)."""
    from routed.datastore import keys

    kv, store, enforcer, applied = _cluster()
    _add(enforcer, 0, {"pod": "a"})  # selected by p, whose set of pod=b pods p1 goes into
    watch = kv.watch(keys.WORKLOADS, kv.revision() + 1)
    _add(enforcer, 1, {"pod": "b"})  # p1 at 10.1.0.1 (sandbox c1)
    assert "10.1.0.1" in _table_addresses(enforcer)
    enforcer.removed("x", "p1", "c1")
    put_a, del_b = watch.get(1), watch.get(1)
    enforcer._watched(put_a)  # the first ADD's put, after its DEL: must not bring 10.1.0.1 back
    assert "10.1.0.1" not in _table_addresses(enforcer)
    enforcer.added("x", "p1", "c2", "cali0001", ["10.1.0.7/32"], labels={"pod": "b"})  # a new sandbox
    enforcer._watched(del_b)  # the old sandbox's DEL, after the new ADD: p1 stays
    assert "10.1.0.7" in _table_addresses(enforcer) and "10.1.0.1" not in _table_addresses(enforcer)
    assert '"cali0001"' in enforcer._table.ruleset.sets["pods"][1]
    enforcer._watched(watch.get(1))  # the new ADD's own put: nothing to do
    assert enforcer._table.ruleset == PolicyEnforcer(kv, store, "node-1", None).desired()
    watch.cancel()


def test_a_resync_listing_never_drops_an_add_newer_than_it():
    """The periodic re-read races an ADD: a listing taken before the ADD's write must not
    take the pod back out of the table (it would be closed until its watch event came)."""
    from routed.datastore import keys

    kv, store, enforcer, applied = _cluster()
    _add(enforcer, 0, {"pod": "a"})
    listing = kv.list(keys.WORKLOADS)  # taken before the ADD ...
    _add(enforcer, 2, {"pod": "b"})
    kv.list = lambda prefix, **kw: listing if prefix == keys.WORKLOADS else kv._kv.list(prefix, **kw)
    enforcer.sync()  # ... and applied after it
    assert '"cali0002"' in enforcer._table.ruleset.sets["pods"][1] and "10.1.0.2" in _table_addresses(enforcer)


def test_a_policy_change_is_rendered_from_its_watch_event_without_reading_etcd():
    """The run loop: an applied or deleted policy costs no etcd read (its watch event has
    it), and a resource policy is not made of (an IPPool) renders nothing."""
    from tests.support.wait import eventually

    kv, _, enforcer, applied = _cluster()
    _add(enforcer, 0, {"pod": "a"})
    writer = ResourceStore(kv._kv)  # the operator's routedctl: its reads are not the enforcer's
    stop = threading.Event()
    thread = threading.Thread(target=enforcer.run, args=(stop,), daemon=True)
    thread.start()
    try:
        eventually(lambda: len(applied) >= 3, timeout=10, what="the loop's first sync")
        renders, reads = len(applied), kv.reads
        deny = r.parse(netpol.knp("deny", "x", {"pod": "a"}, ingress=[]))
        writer.create(deny)
        eventually(lambda: any(p.name.endswith("/deny") for p in enforcer._policies) and len(applied) > renders,
                   timeout=10, what="the policy rendered")
        writer.create(r.parse({"apiVersion": "routed.io/v1", "kind": "IPPool", "metadata": {"name": "p"},
                               "spec": {"cidr": "10.9.0.0/16"}}))
        writer.delete(r.KubeNetworkPolicy, "deny", namespace="x")
        eventually(lambda: not any(p.name.endswith("/deny") for p in enforcer._policies), timeout=10,
                   what="the policy gone")
        assert kv.reads == reads
        assert len(applied) == renders + 2, applied[renders:]  # the policy came, went; the pool: nothing
    finally:
        stop.set()
        thread.join(10)
