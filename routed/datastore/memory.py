"""An in-memory KV with etcd's semantics, for tests of the logic above the datastore.

It keeps what the allocator and the resource store rely on: one global revision that
every write transaction bumps once; per key mod/create revision and version; compares
(range compares included, where an empty range compares as a zero-valued key, as etcd
does); reads at an older revision; watches that replay from a revision and resync
after compaction; leases that expire on an injectable clock. It is checked against a
real etcd by the same contract tests (tests/integration/test_datastore.py).

What it does not model (tests of those need a real etcd): network failures and
failover, TLS, request size limits.
"""

from __future__ import annotations

import bisect
import itertools
import queue
import threading
import time

from .kv import Compare, KeyValue, Listing, Op, QueuedWatch, SingleKeyWrites, TxnResult, WatchEvent, prefix_end


class MemoryKV(SingleKeyWrites):
    endpoints = ["memory://"]

    def __init__(self, clock=time.monotonic):
        self._clock = clock
        self._lock = threading.RLock()
        self._revision = 1  # etcd starts at 1 too
        self._compacted = 0
        # key -> its history, oldest first: (revision, KeyValue or None for a delete)
        self._history: dict[str, list[tuple[int, KeyValue | None]]] = {}
        self._sorted: list[str] = []  # every key ever written, sorted, for range reads
        self._events: list[WatchEvent] = []  # every change, in revision order
        self._watches: list[MemoryWatch] = []
        self._leases: dict[int, tuple[int, float]] = {}  # id -> (ttl, expires at)
        self._lease_ids = itertools.count(0x1000)

    # -- reads ----------------------------------------------------------------------

    def _at(self, key: str, revision: int = 0) -> KeyValue | None:
        history = self._history.get(key)
        if not history:
            return None
        if not revision:
            return history[-1][1]
        for rev, item in reversed(history):
            if rev <= revision:
                return item
        return None

    def _range(self, start: str, end: str, revision: int = 0) -> list[KeyValue]:
        lo = bisect.bisect_left(self._sorted, start)
        hi = bisect.bisect_left(self._sorted, end)
        found = (self._at(k, revision) for k in self._sorted[lo:hi])
        return [item for item in found if item is not None]

    def get(self, key: str) -> KeyValue | None:
        with self._lock:
            self._expire()
            return self._at(key)

    def revision(self) -> int:
        with self._lock:
            return self._revision

    def list(self, prefix: str, *, revision: int = 0, page_size: int = 1000, keys_only: bool = False) -> Listing:
        with self._lock:
            self._expire()
            if revision and revision < self._compacted:
                raise ValueError(f"revision {revision} has been compacted")
            items = self._range(prefix, prefix_end(prefix), revision)
            if keys_only:
                items = [KeyValue(i.key, b"", i.mod_revision, i.create_revision, i.version, i.lease) for i in items]
            return Listing(items, revision or self._revision)

    def keys(self, prefix: str) -> list[str]:
        return [item.key for item in self.list(prefix).items]

    # -- writes ---------------------------------------------------------------------

    def txn(self, compare: list[Compare], success: list[Op], failure: list[Op] = ()) -> TxnResult:
        with self._lock:
            self._expire()
            succeeded = all(self._holds(c) for c in compare)
            ops = success if succeeded else failure
            results, changes = [], []
            for op in ops:
                if op.kind == "get":
                    results.append(self._at(op.key))
                    continue
                results.append(None)
                if op.kind == "put":
                    if op.lease and op.lease not in self._leases:
                        raise ValueError("etcdserver: requested lease not found")
                    changes.append(op)
                elif self._at(op.key) is not None:
                    changes.append(op)
            if changes:
                self._apply(changes)
            return TxnResult(succeeded, self._revision, results)

    def _holds(self, c: Compare) -> bool:
        if c.range_end is None:
            items = [item] if (item := self._at(c.key)) is not None else []
        else:
            items = self._range(c.key, c.range_end)
        if not items:
            # etcd compares a missing key as a zero-valued one, except on its value.
            return c.target != "value" and _compare(c, KeyValue(c.key, b"", 0))
        return all(_compare(c, item) for item in items)

    def _apply(self, changes: list[Op]) -> None:
        """One revision for every change of a transaction, as etcd does."""
        self._revision += 1
        rev = self._revision
        for op in changes:
            old = self._at(op.key)
            if op.kind == "put":
                item = KeyValue(op.key, op.value, rev, old.create_revision if old else rev,
                                old.version + 1 if old else 1, op.lease)
                event = WatchEvent("put", rev, kv=item)
            else:
                item = None
                event = WatchEvent("delete", rev, kv=KeyValue(op.key, b"", rev))
            if op.key not in self._history:
                bisect.insort(self._sorted, op.key)
            self._history.setdefault(op.key, []).append((rev, item))
            self._events.append(event)
            for watch in self._watches:
                watch._offer(event)

    # -- history --------------------------------------------------------------------

    def compact(self, revision: int) -> None:
        with self._lock:
            self._compacted = max(self._compacted, revision)
            self._events = [e for e in self._events if e.revision > revision]
            for key, history in self._history.items():
                older = [h for h in history if h[0] <= revision]
                history[:] = older[-1:] + [h for h in history if h[0] > revision]

    # -- leases ---------------------------------------------------------------------

    def lease_grant(self, ttl: int) -> int:
        with self._lock:
            lease = next(self._lease_ids)
            self._leases[lease] = (ttl, self._clock() + ttl)
            return lease

    def lease_keepalive(self, lease_id: int) -> int:
        with self._lock:
            self._expire()
            if lease_id not in self._leases:
                return 0
            ttl, _ = self._leases[lease_id]
            self._leases[lease_id] = (ttl, self._clock() + ttl)
            return ttl

    def lease_revoke(self, lease_id: int) -> None:
        with self._lock:
            if self._leases.pop(lease_id, None) is not None:
                self._drop_leased({lease_id})

    def _expire(self) -> None:
        now = self._clock()
        gone = {lease for lease, (_, at) in self._leases.items() if at <= now}
        for lease in gone:
            del self._leases[lease]
        if gone:
            self._drop_leased(gone)

    def _drop_leased(self, leases: set[int]) -> None:
        doomed = [Op.delete(k) for k in self._sorted if (item := self._at(k)) is not None and item.lease in leases]
        if doomed:
            self._apply(doomed)

    # -- watch ----------------------------------------------------------------------

    def watch(self, prefix: str, start_revision: int) -> MemoryWatch:
        with self._lock:
            watch = MemoryWatch(self, prefix)
            if start_revision and start_revision <= self._compacted:
                watch._events.put(WatchEvent("resync", self._revision,
                                             items=self._range(prefix, prefix_end(prefix))))
            else:
                for event in self._events:
                    if event.revision >= start_revision:
                        watch._offer(event)
            self._watches.append(watch)
            return watch

    def close(self) -> None:
        with self._lock:
            for watch in list(self._watches):
                watch._events.put(None)
            self._watches.clear()


class MemoryWatch(QueuedWatch):
    def __init__(self, kv: MemoryKV, prefix: str):
        self._kv, self._prefix, self._end = kv, prefix, prefix_end(prefix)
        self._events: queue.Queue[WatchEvent | None] = queue.Queue()

    def _offer(self, event: WatchEvent) -> None:
        if self._prefix <= event.kv.key < self._end:
            self._events.put(event)

    def cancel(self) -> None:
        with self._kv._lock:
            if self in self._kv._watches:
                self._kv._watches.remove(self)
        self._events.put(None)


_FIELD = {"mod": "mod_revision", "create": "create_revision", "version": "version", "value": "value"}


def _compare(c: Compare, item: KeyValue) -> bool:
    have = getattr(item, _FIELD[c.target])
    return {"==": have == c.value, "!=": have != c.value, "<": have < c.value, ">": have > c.value}[c.op]


__all__ = ["MemoryKV", "MemoryWatch"]
