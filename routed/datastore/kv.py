"""The key-value interface routed needs from its datastore, and its value types.

Everything above the datastore (IPAM, resources, agent) speaks only this interface,
so the etcd client behind it can change without touching them. Keys and values are
``str`` and ``bytes``; revisions are etcd's global revision numbers.
"""

from __future__ import annotations

import queue
from dataclasses import dataclass, field
from typing import Iterator, Protocol


@dataclass(frozen=True)
class KeyValue:
    key: str
    value: bytes
    mod_revision: int
    create_revision: int = 0
    version: int = 0
    lease: int = 0


@dataclass(frozen=True)
class Compare:
    """One condition of a transaction.

    ``Compare.mod(key, 0)`` holds when the key does not exist, which is how a
    create-only write is expressed. ``Compare.unchanged_since(prefix, rev)`` holds
    when no key under the prefix was written after ``rev`` (etcd range compare),
    which lets a check over a whole collection be part of one transaction.
    """

    key: str
    target: str  # "mod" | "create" | "value" | "version"
    op: str  # "==" | "!=" | "<" | ">"
    value: int | bytes
    range_end: str | None = None

    @staticmethod
    def mod(key: str, revision: int) -> Compare:
        return Compare(key, "mod", "==", revision)

    @staticmethod
    def absent(key: str) -> Compare:
        return Compare(key, "create", "==", 0)

    @staticmethod
    def unchanged_since(prefix: str, revision: int) -> Compare:
        return Compare(prefix, "mod", "<", revision + 1, range_end=prefix_end(prefix))

    @staticmethod
    def none_created_since(prefix: str, revision: int) -> Compare:
        """No key under prefix was created after revision (changes to existing keys and
        deletions do not count): "the set of keys I listed at revision is still complete"."""
        return Compare(prefix, "create", "<", revision + 1, range_end=prefix_end(prefix))


@dataclass(frozen=True)
class Op:
    kind: str  # "put" | "delete" | "get"
    key: str
    value: bytes = b""
    lease: int = 0

    @staticmethod
    def put(key: str, value: bytes | str, lease: int = 0) -> Op:
        return Op("put", key, value.encode() if isinstance(value, str) else value, lease)

    @staticmethod
    def delete(key: str) -> Op:
        return Op("delete", key)

    @staticmethod
    def get(key: str) -> Op:
        return Op("get", key)


@dataclass(frozen=True)
class TxnResult:
    succeeded: bool
    revision: int
    # One entry per op of the branch that ran: the KeyValue for a "get" (None when
    # absent), None for puts and deletes.
    results: list[KeyValue | None] = field(default_factory=list)


@dataclass(frozen=True)
class Listing:
    items: list[KeyValue]
    revision: int


@dataclass(frozen=True)
class WatchEvent:
    """A change under a watched prefix.

    ``type`` is "put" or "delete"; after etcd compacted away the revision a watch
    needed, the watch re-lists and sends one "resync" event whose ``items`` hold
    the whole prefix at ``revision``: consumers replace their state with it.
    """

    type: str
    revision: int
    kv: KeyValue | None = None
    items: list[KeyValue] | None = None


class QueuedWatch:
    """A watch whose events arrive on self._events (None once it is cancelled)."""

    _events: queue.Queue[WatchEvent | None]

    def __iter__(self) -> Iterator[WatchEvent]:
        while (event := self._events.get()) is not None:
            yield event

    def get(self, timeout: float | None = None) -> WatchEvent | None:
        try:
            return self._events.get(timeout=timeout)
        except queue.Empty:
            return None


class Watch(Protocol):
    def __iter__(self) -> Iterator[WatchEvent]: ...

    def get(self, timeout: float | None = None) -> WatchEvent | None: ...

    def cancel(self) -> None: ...


class KV(Protocol):
    """What routed needs from etcd. Implemented by ``routed.datastore.etcd.EtcdKV``."""

    endpoints: list[str]

    def get(self, key: str) -> KeyValue | None: ...

    def create(self, key: str, value: bytes, lease: int = 0) -> bool:
        """Write only if the key does not exist; False when it does."""

    def put(self, key: str, value: bytes, *, mod_revision: int | None = None, lease: int = 0) -> bool:
        """Write; with mod_revision, only if the key is still at it (0: absent)."""

    def delete(self, key: str, *, mod_revision: int | None = None) -> bool:
        """Delete; with mod_revision, only if unchanged. False when nothing was deleted."""

    def txn(self, compare: list[Compare], success: list[Op], failure: list[Op] = ()) -> TxnResult: ...

    def list(self, prefix: str, *, revision: int = 0, page_size: int = 1000, keys_only: bool = False) -> Listing:
        """Every key under prefix, at one revision, read in pages; keys_only leaves values empty."""

    def keys(self, prefix: str) -> list[str]:
        """The keys under prefix, without values."""

    def watch(self, prefix: str, start_revision: int) -> Watch:
        """Changes under prefix from start_revision on, surviving etcd restarts."""

    def lease_grant(self, ttl: int) -> int: ...

    def lease_keepalive(self, lease_id: int) -> int:
        """Refresh once; returns the new TTL, 0 when the lease is gone."""

    def lease_revoke(self, lease_id: int) -> None: ...

    def close(self) -> None: ...


class SingleKeyWrites:
    """create, put and delete of one key, as transactions: one definition for every KV."""

    def create(self, key: str, value: bytes, lease: int = 0) -> bool:
        return self.txn([Compare.absent(key)], [Op.put(key, value, lease)]).succeeded

    def put(self, key: str, value: bytes, *, mod_revision: int | None = None, lease: int = 0) -> bool:
        compare = [] if mod_revision is None else [Compare.mod(key, mod_revision)]
        return self.txn(compare, [Op.put(key, value, lease)]).succeeded

    def delete(self, key: str, *, mod_revision: int | None = None) -> bool:
        compare = [Compare(key, "create", ">", 0)]
        if mod_revision is not None:
            compare.append(Compare.mod(key, mod_revision))
        return self.txn(compare, [Op.delete(key)]).succeeded


def prefix_end(prefix: str) -> str:
    """The first key after every key that starts with prefix (etcd's range_end).

    Keys are ASCII by construction (routed.datastore.keys), so bumping the last
    character is enough.
    """
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)
