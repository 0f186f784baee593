"""The KV contract, against a real etcd (Debian's etcd-server) and the in-memory KV.

Tests taking `kv` run against both: that is what lets the pure allocator tests use
the in-memory one. Tests of failures, restarts and TLS take `etcd` and run only there.
"""

from __future__ import annotations

import threading
import time

import pytest

from routed.datastore import Compare, Op
from routed.datastore.etcd import EtcdKV
from routed.datastore.memory import MemoryKV
from routed.errors import DatastoreUnavailable
from tests.support.etcd import free_port

pytestmark = pytest.mark.etcd


@pytest.fixture(params=["etcd", "memory"])
def kv(request):
    client = request.getfixturevalue("etcd").client() if request.param == "etcd" else MemoryKV()
    try:
        yield client
    finally:
        client.close()


def test_memory_value_compare_on_a_missing_key_fails_as_in_etcd(kv):
    assert not kv.txn([Compare("/t/none", "value", "==", b"")], [Op.put("/t/x", b"1")]).succeeded
    assert kv.txn([Compare("/t/none", "version", "==", 0)], [Op.put("/t/x", b"1")]).succeeded


def test_create_is_create_only(kv):
    assert kv.create("/t/a", b"1")
    assert not kv.create("/t/a", b"2")
    assert kv.get("/t/a").value == b"1"


def test_compare_and_swap_put_and_delete(kv):
    kv.put("/t/k", b"v1")
    first = kv.get("/t/k")
    assert kv.put("/t/k", b"v2", mod_revision=first.mod_revision)
    # The revision it compared against is stale now: both writes are refused.
    assert not kv.put("/t/k", b"v3", mod_revision=first.mod_revision)
    assert not kv.delete("/t/k", mod_revision=first.mod_revision)
    assert kv.get("/t/k").value == b"v2"
    assert kv.delete("/t/k", mod_revision=kv.get("/t/k").mod_revision)
    assert kv.get("/t/k") is None
    assert not kv.delete("/t/k")
    # mod_revision=0 means "only if absent".
    assert kv.put("/t/k", b"new", mod_revision=0)
    assert not kv.put("/t/k", b"again", mod_revision=0)


def test_multi_key_transaction_is_all_or_nothing(kv):
    kv.put("/t/x", b"x")
    kv.put("/t/y", b"y")
    x, y = kv.get("/t/x"), kv.get("/t/y")
    kv.put("/t/y", b"y2")  # y moves on: a transaction comparing both must not write either
    result = kv.txn([Compare.mod("/t/x", x.mod_revision), Compare.mod("/t/y", y.mod_revision)],
                    [Op.put("/t/x", b"X"), Op.put("/t/y", b"Y")],
                    [Op.get("/t/x"), Op.get("/t/y")])
    assert not result.succeeded
    assert [r.value for r in result.results] == [b"x", b"y2"]
    assert kv.get("/t/x").value == b"x"
    y = kv.get("/t/y")
    result = kv.txn([Compare.mod("/t/x", x.mod_revision), Compare.mod("/t/y", y.mod_revision)],
                    [Op.put("/t/x", b"X"), Op.delete("/t/y")])
    assert result.succeeded
    assert kv.get("/t/x").value == b"X" and kv.get("/t/y") is None
    assert kv.get("/t/x").mod_revision == result.revision


def test_unchanged_since_guards_a_whole_prefix(kv):
    kv.put("/pools/a", b"a")
    rev = kv.revision()
    assert kv.txn([Compare.unchanged_since("/pools/", rev)], [Op.put("/pools/b", b"b")]).succeeded
    # /pools/b was written after rev: a writer that checked the collection at rev loses.
    assert not kv.txn([Compare.unchanged_since("/pools/", rev)], [Op.put("/pools/c", b"c")]).succeeded
    assert kv.get("/pools/c") is None
    # Keys beside the prefix do not count.
    kv.put("/poolsX", b"other")
    assert kv.txn([Compare.unchanged_since("/pools/", kv.revision() - 1)], [Op.put("/pools/c", b"c")]).succeeded


def test_list_pages_at_one_revision(kv):
    for i in range(53):
        kv.put(f"/p/{i:03d}", str(i).encode())
    kv.put("/p0", b"not under the prefix")
    listing = kv.list("/p/", page_size=7)
    assert [item.key for item in listing.items] == [f"/p/{i:03d}" for i in range(53)]
    for i in range(53, 60):
        kv.put(f"/p/{i:03d}", b"later")
    kv.delete("/p/000")
    again = kv.list("/p/", revision=listing.revision, page_size=5)
    assert [item.key for item in again.items] == [item.key for item in listing.items]
    assert len(kv.list("/p/").items) == 59


def _collect(watch, count, timeout=10.0):
    events, deadline = [], time.monotonic() + timeout
    while len(events) < count and time.monotonic() < deadline:
        ev = watch.get(timeout=0.2)
        if ev is not None:
            events.append(ev)
    return events


def test_watch_from_revision_sees_every_change_in_order(kv):
    start = kv.revision() + 1
    kv.put("/w/a", b"1")
    watch = kv.watch("/w/", start)
    try:
        kv.put("/w/b", b"2")
        kv.delete("/w/a")
        kv.put("/elsewhere", b"x")
        events = _collect(watch, 3)
        assert [(e.type, e.kv.key) for e in events] == [("put", "/w/a"), ("put", "/w/b"), ("delete", "/w/a")]
        assert events[1].kv.value == b"2"
        assert watch.get(timeout=0.3) is None
    finally:
        watch.cancel()


def test_watch_resumes_across_an_etcd_restart(etcd):
    kv = etcd.client(timeout=2.0)
    try:
        watch = kv.watch("/w/", kv.revision() + 1)
        kv.put("/w/before", b"1")
        assert [e.kv.key for e in _collect(watch, 1)] == ["/w/before"]
        etcd.kill()
        etcd.start()
        deadline = time.monotonic() + 10
        while True:
            try:
                kv.put("/w/after", b"2")
                break
            except DatastoreUnavailable:
                assert time.monotonic() < deadline, "etcd did not come back"
                time.sleep(0.1)
        events = _collect(watch, 1)
        assert [(e.type, e.kv.key) for e in events] == [("put", "/w/after")]
        assert watch.get(timeout=0.5) is None, "an event was delivered twice"
        watch.cancel()
    finally:
        kv.close()


def test_watch_from_a_compacted_revision_resyncs(kv):
    start = kv.revision() + 1
    kv.put("/w/a", b"1")
    kv.put("/w/a", b"2")
    kv.put("/w/b", b"3")
    kv.compact(kv.revision())
    watch = kv.watch("/w/", start)
    try:
        (resync,) = _collect(watch, 1)
        assert resync.type == "resync"
        assert {i.key: i.value for i in resync.items} == {"/w/a": b"2", "/w/b": b"3"}
        kv.put("/w/c", b"4")
        (event,) = _collect(watch, 1)
        assert (event.type, event.kv.key) == ("put", "/w/c")
    finally:
        watch.cancel()


def test_lease_expiry_removes_its_keys(kv):
    lease = kv.lease_grant(1)
    assert kv.put("/l/short", b"x", lease=lease)
    assert kv.get("/l/short").lease == lease
    deadline = time.monotonic() + 10
    while kv.get("/l/short") is not None:
        assert time.monotonic() < deadline, "leased key outlived its lease"
        time.sleep(0.2)
    assert kv.lease_keepalive(lease) == 0


def test_lease_keepalive_and_revoke(kv):
    lease = kv.lease_grant(3)
    kv.put("/l/kept", b"x", lease=lease)
    for _ in range(3):
        time.sleep(1.2)
        assert kv.lease_keepalive(lease) > 0
    assert kv.get("/l/kept") is not None
    kv.lease_revoke(lease)
    assert kv.get("/l/kept") is None
    kv.lease_revoke(lease)  # revoking twice is harmless


def test_concurrent_cas_increments_lose_nothing(kv):
    kv.put("/c/n", b"0")

    def bump(times):
        for _ in range(times):
            while True:
                cur = kv.get("/c/n")
                if kv.put("/c/n", str(int(cur.value) + 1).encode(), mod_revision=cur.mod_revision):
                    break

    threads = [threading.Thread(target=bump, args=(25,)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert kv.get("/c/n").value == b"100"


def test_unreachable_endpoint_is_named():
    url = f"http://127.0.0.1:{free_port()}"
    kv = EtcdKV([url], timeout=2.0)
    with pytest.raises(DatastoreUnavailable) as err:
        kv.get("/x")
    assert url in str(err.value) and "\n" not in str(err.value)
    kv.close()


def test_fails_over_to_the_next_endpoint(etcd):
    dead = f"http://127.0.0.1:{free_port()}"
    kv = EtcdKV([dead, etcd.url], timeout=2.0)
    try:
        kv.put("/f/a", b"1")
        assert kv.get("/f/a").value == b"1"
    finally:
        kv.close()


def test_mutual_tls(etcd_tls):
    kv = etcd_tls.client()
    try:
        kv.put("/tls/a", b"1")
        assert kv.get("/tls/a").value == b"1"
    finally:
        kv.close()
    anonymous = etcd_tls.client(with_client_cert=False, timeout=2.0)
    try:
        with pytest.raises(DatastoreUnavailable) as err:
            anonymous.get("/tls/a")
        assert etcd_tls.url in str(err.value)
    finally:
        anonymous.close()
