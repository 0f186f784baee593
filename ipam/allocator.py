"""Pod addresses from blocks in etcd: every change is ONE etcd transaction.

- allocate: the block and the handle are written together, each compared with the
  mod revision it was read at. A crash before the transaction leaves nothing; after
  it, both. There is no pending state to clean up.
- claim: a new block, its affinity to the node and the first allocation in it are
  written together, only if neither the block nor the affinity exists yet.
- In the steady state the allocator needs no read at all: it keeps the node's blocks
  as it last wrote them and assumes the handle is new; a transaction that finds
  either stale returns the fresh values in its failure branch for the retry.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import NamedTuple
from datetime import datetime, timezone

from routed import resources as r
from routed.datastore import Compare, Op, keys
from routed.datastore.kv import KV, KeyValue
from routed.datastore.resources import Unreadable
from routed.errors import Conflict, NotFound

from .block import Block
from .blockmath import block_for, blocks_in_pool, overlap_test
from .errors import AddressNotInPool, NoMatchingPool, PoolExhausted, TooManyBlocks
from .handle import Handle

RETRIES = 64
# Allocations of one group commit: 2 compares and 1 put each, plus the block, stay within
# etcd's 128 operations per transaction.
GROUP_MAX = 32
HANDLES_CACHED = 4096
BLOCK_TRIES = 8  # lost races on one block retried at once, before the attempt starts over  # handle records kept as written (a node's pods), for reads-free releases
_RETRY = object()  # an allocation step lost a race: start the attempt over
_CONFIG_TTL = 1.0  # seconds a pool/IPAMConfig read is reused; pool edits are rare

log = logging.getLogger("routed.ipam")


def affinity_of(node: str) -> str:
    return f"host:{node}"


@dataclass
class Allocation:
    handle: str
    ips: list[ipaddress.IPv4Address | ipaddress.IPv6Address]
    pool: str
    # Addresses taken from blocks affine to other nodes: this node advertises them as /32.
    borrowed: list = field(default_factory=list)
    # True when the handle already held these (a retried request): nothing new was taken.
    reused: bool = False

    def prefixes(self) -> list[str]:
        return [f"{ip}/{ip.max_prefixlen}" for ip in self.ips]


class _Candidate(NamedTuple):
    pool: r.IPPool
    revision: int  # the pool's mod revision, compared when a block is claimed from it
    network: ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass
class _HandleState:
    id: str
    record: Handle
    revision: int  # 0: the handle does not exist yet


@dataclass(eq=False)  # compared by identity: two retries of one ADD are two callers
class _Request:
    """One allocate() call waiting to be served (group commit)."""
    handle: str
    node: str
    attrs: dict
    num: int
    pools: tuple
    version: int
    labels: tuple
    done: bool = False
    result: Allocation | None = None
    error: BaseException | None = None
    wake: threading.Event | None = None  # set when served or handed the lead; only callers that wait have one

    @property
    def group(self) -> tuple:
        """Requests with the same group may share a transaction."""
        return self.node, self.pools, self.version, self.labels

    def succeed(self, result: Allocation) -> None:
        self.result, self.done = result, True
        if self.wake is not None:
            self.wake.set()

    def fail(self, error: BaseException) -> None:
        self.error, self.done = error, True
        if self.wake is not None:
            self.wake.set()


@dataclass
class _Cached:
    block: Block
    revision: int


class IPAM:
    """The allocator of one node agent (or one CLI call). Thread-safe."""

    def __init__(self, kv: KV, clock=time.monotonic):
        self.kv = kv
        self._clock = clock
        self._lock = threading.Lock()  # one caller at a time talks to etcd for allocations
        self._queue_lock = threading.Lock()
        self._queue: list[_Request] = []  # allocate() calls not served yet (group commit)
        self._leading = False  # a caller is serving the queue, or about to
        self._handles: dict[str, tuple[Handle, int]] = {}  # handle -> (record, revision) as we wrote it
        self._borrowable: list[str] | None = None  # block keys of the last borrow's listing
        self._full_until: dict[tuple, float] = {}  # candidate pools -> until when no block is left to claim
        self._no_room_until: dict[str, float] = {}  # node -> until when its blocks are taken as full
        self._blocks: dict[str, _Cached] = {}  # block key -> as we last saw it
        self._affine: dict[str, list[str]] = {}  # node -> its block keys
        self._roomy: dict[str, str] = {}  # node -> the block key it last allocated from
        self._config_at = -1e9
        self._pools: list[tuple[r.IPPool, int]] = []
        self._ipam_config = r.IPAMConfig.model_validate({"metadata": {"name": "default"}})
        self._candidates_memo: tuple = (None, [])
        # Transactions written and lost (a compare failed), for metrics and benchmarks.
        self.stats: Counter = Counter()
        # Records that do not parse or validate: skipped so that one bad record stops nothing
        # else, logged once, counted in a metric; `routedctl ipam check` lists them.
        self.unreadable = Unreadable("IPAM (see routedctl ipam check)")

    def _parsed(self, item: KeyValue, parse):
        """parse(item), or None when the record is bad (then it is skipped, and said so once)."""
        return self.unreadable.parse(item, parse)

    def _block(self, item: KeyValue) -> Block | None:
        return self._parsed(item, lambda i: Block.from_json(i.value, key=i.key))

    # -- configuration --------------------------------------------------------------

    def _config(self, fresh: bool = False):
        now = self._clock()
        if fresh or now - self._config_at > _CONFIG_TTL:
            listing = self.kv.list(keys.resource(r.IPPool.plural))
            self.unreadable.forget(keys.RESOURCES)  # read again below; gone if deleted or repaired
            pools = [(self._parsed(i, lambda i: _decode_resource(r.IPPool, i)), i.mod_revision)
                     for i in listing.items]
            self._pools = [(p, rev) for p, rev in pools if p is not None]
            item = self.kv.get(keys.resource(r.IPAMConfig.plural, "default"))
            if item is None:
                self._ipam_config = r.IPAMConfig.model_validate({"metadata": {"name": "default"}})
            else:
                # A bad IPAMConfig leaves the last good one (or the defaults) in force.
                self._ipam_config = self._parsed(item, lambda i: _decode_resource(r.IPAMConfig, i)) or self._ipam_config
            self._config_at = now
        return self._pools, self._ipam_config.spec

    def pools_for(self, node_labels: dict, names: list[str] | None = None, version: int = 4,
                  fresh: bool = False, node: str | None = None):
        """The pools a node may allocate from, in a stable order."""
        pools, _ = self._config(fresh)
        memo_key = (self._config_at, tuple(sorted(node_labels.items())), tuple(names or ()), version, node)
        if self._candidates_memo[0] == memo_key:
            return self._candidates_memo[1]
        try:
            chosen = self._choose_pools(pools, node_labels, names, version, node)
        except NoMatchingPool:
            if fresh or not names:
                raise
            # A pool named by the caller may be newer than our cached read: look again once.
            return self.pools_for(node_labels, names, version, fresh=True, node=node)
        self._candidates_memo = (memo_key, chosen)
        return chosen

    @staticmethod
    def _choose_pools(pools, node_labels: dict, names: list[str] | None, version: int,
                      node: str | None = None) -> list[_Candidate]:
        if names:
            by_name = {p.metadata.name: (p, rev) for p, rev in pools}
            chosen = []
            for name in names:
                if name not in by_name:
                    raise NoMatchingPool(f'IP pool "{name}" does not exist')
                pool, rev = by_name[name]
                _check_usable(pool, node_labels, node)
                chosen.append((pool, rev))
        else:
            chosen = [(p, rev) for p, rev in sorted(pools, key=lambda x: x[0].metadata.name)
                      if not p.spec.disabled and r.parse_selector(p.spec.node_selector).matches(node_labels)]
        chosen = [_Candidate(p, rev, p.network) for p, rev in chosen]
        chosen = [c for c in chosen if c.network.version == version]
        if not chosen:
            raise NoMatchingPool(f"no enabled IPv{version} pool matches this node"
                                 + (f" among {', '.join(names)}" if names else ""))
        return chosen

    # -- allocate -------------------------------------------------------------------

    def allocate(self, handle: str, node: str, attrs: dict | None = None, num: int = 1,
                 pools: list[str] | None = None, version: int = 4, node_labels: dict | None = None) -> Allocation:
        """num addresses for handle, from the node's blocks, a new block, or a borrowed one.

        Idempotent: when the handle already holds addresses (a retried CNI ADD), those
        are returned and nothing new is taken.

        Group commit: calls that arrive while another is being served wait for it, and
        the next of them serves all that queued meanwhile together, in ONE transaction
        when one of the node's blocks has room for all (see _serve). A failed
        transaction takes nobody's address: each caller then goes its own way.
        """
        attrs = {"node": node, "time": _now(), **(attrs or {})}
        request = _Request(handle, node, attrs, num, tuple(pools or ()), version,
                           tuple(sorted((node_labels or {}).items())))
        with self._queue_lock:
            lead = not self._leading
            if not lead:  # made before the request is queued, where a leader could take it
                request.wake = threading.Event()
            self._queue.append(request)
            self._leading = True
        if not lead:
            # Woken when served, or when the leader hands the lead on to us.
            try:
                request.wake.wait()
            except BaseException:  # interrupted (^C in a CLI): never leave the queue without a leader
                self._withdraw(request)
                raise
        if not request.done:
            self._lead()
        if request.error is not None:
            raise request.error
        return request.result

    def _lead(self) -> None:
        """Serve everything queued (ours included), then hand the lead to the first caller
        queued meanwhile. The callers served wait on their own event, not on the lock: when
        they had to pass through the lock one by one to learn they were served, the leader
        came back with its next request before they did and served it alone (batches of 1-2
        with 16 callers)."""
        try:
            with self._lock:
                # Taken once the lock is ours, so that callers arriving while another user
                # of the lock (a release) held it join this batch.
                with self._queue_lock:
                    batch, self._queue = self._queue, []
                self._serve(batch)
        finally:
            with self._queue_lock:
                if self._queue:
                    self._queue[0].wake.set()  # still leading: that caller serves the next batch
                else:
                    self._leading = False

    def _withdraw(self, request: _Request) -> None:
        """Take a waiting caller's request back; if it was handed the lead, pass that on."""
        with self._queue_lock:
            if request in self._queue:
                self._queue.remove(request)
                if request.wake.is_set():  # handed the lead: the queue needs another leader
                    if self._queue:
                        self._queue[0].wake.set()
                    else:
                        self._leading = False

    def _serve(self, batch: list[_Request]) -> None:
        """Serve every request of batch (the lock is held): compatible requests (same node,
        pools, family, labels) together when they fit, the rest one by one."""
        groups: dict[tuple, list[_Request]] = {}
        for request in batch:
            groups.setdefault(request.group, []).append(request)
        for members in groups.values():
            for start in range(0, len(members), GROUP_MAX):
                chunk = members[start:start + GROUP_MAX]
                try:
                    pending = chunk
                    while pending:
                        # As many as the first block with room for two or more takes; when
                        # none has (a block just filled up), one alone, which may claim the
                        # next block, and the rest group into that.
                        if len(pending) < 2 or not self._group_commit(pending):
                            self._serve_one(pending[0])
                        pending = [q for q in pending if not q.done]
                finally:
                    for request in chunk:  # whatever happened, nobody waits forever
                        if not request.done:
                            request.fail(Conflict(f"IPAM: allocation for {request.handle} was not served"))

    def _serve_one(self, q: _Request) -> None:
        try:
            q.succeed(self._allocate_one(q.handle, q.node, q.attrs, q.num, list(q.pools) or None, q.version,
                                         dict(q.labels)))
        except Exception as err:  # the caller's error, raised in the caller's thread
            q.fail(err)

    def _group_commit(self, chunk: list[_Request]) -> int:
        """The first members of chunk that fit in one affine block, in one transaction,
        assuming every handle is new (as for every first ADD): how many were served. 0 leaves
        them all undone (for _serve_one): no block had room for two, or a compare failed.
        An etcd error fails them all."""
        first = chunk[0]
        if len({q.handle for q in chunk}) < len(chunk):
            return 0  # one handle twice (a retried ADD racing itself): one put per key per txn
        try:
            candidates = self.pools_for(dict(first.labels), list(first.pools) or None, first.version,
                                        node=first.node)
            for bkey in self._roomy_first(first.node):
                cached = self._blocks.get(bkey)
                if (cached is None or cached.block.free < first.num + chunk[1].num
                        or cached.block.affinity != affinity_of(first.node)):
                    continue  # full, or no longer the node's (released and claimed by another)
                pool = _pool_of(cached.block.cidr, candidates)
                if pool is None:
                    continue
                block = cached.block.copy()
                compare, ops, got, records = [Compare.mod(bkey, cached.revision)], [], [], []
                for q in chunk:
                    if block.free < q.num:
                        break
                    ips = block.assign(q.num, q.handle, _block_attrs(q.attrs))
                    record = Handle(q.handle, attrs=q.attrs)
                    record.add(block.cidr, len(ips))
                    hkey = keys.handle(q.handle)
                    compare.append(Compare.absent(hkey))
                    ops.append(Op.put(hkey, record.to_json()))
                    got.append(ips)
                    records.append(record)
                result = self.kv.txn(compare, [Op.put(bkey, block.to_json()), *ops], [Op.get(bkey)])
                self.stats["txn"] += 1
                if not result.succeeded:
                    # The block moved on, or a handle exists: each request finds out alone.
                    self.stats["conflict"] += 1
                    self._recache(bkey, result.results[0])
                    return 0
                self._blocks[bkey] = _Cached(block, result.revision)
                for record in records:
                    self._wrote_handle(record, result.revision)
                self.stats["grouped"] += len(got)
                self._roomy[first.node] = bkey
                for q, ips in zip(chunk, got):
                    q.succeed(Allocation(q.handle, ips, pool.metadata.name))
                return len(got)
        except Exception as err:
            # Nothing of the transaction is known to be written; each caller's CNI ADD fails
            # and is retried, and finds its handle if the transaction was applied after all.
            for q in chunk:
                q.fail(err)
            return len(chunk)
        return 0

    def _wrote_handle(self, record: Handle, revision: int) -> None:
        """Keep a handle record as written, so its release needs no read (release_handle)."""
        self._handles.pop(record.handle_id, None)
        self._handles[record.handle_id] = (record, revision)
        if len(self._handles) > HANDLES_CACHED:
            del self._handles[next(iter(self._handles))]  # the oldest: a long-lived pod's

    def _recache(self, bkey: str, item: KeyValue | None) -> None:
        """Cache what a failed transaction's failure branch read of a block."""
        block = self._block(item) if item is not None else None
        if block is None:
            self._blocks.pop(bkey, None)
        else:
            self._blocks[bkey] = _Cached(block, item.mod_revision)

    def _allocate_one(self, handle: str, node: str, attrs: dict, num: int, pools: list[str] | None,
                      version: int, node_labels: dict) -> Allocation:
        candidates = self.pools_for(node_labels, pools, version, node=node)
        steps = (self._from_affine, self._refreshed_affine, self._claim, self._borrow)
        # Assume the handle is new, as it is for every first ADD; a failed transaction's
        # failure branch tells us otherwise, so the steady state reads nothing first.
        held = _HandleState(handle, Handle(handle), 0)
        looked_again = False
        for _ in range(RETRIES):
            if held.revision:
                existing = self._existing(handle, held.record, candidates, version)
                if existing.ips:
                    return existing
            for step in steps:
                outcome = step(held, node, attrs, num, candidates)
                if outcome is _RETRY:
                    # A lost race may mean a pool changed (its revision is compared
                    # when claiming): read the configuration again, not from cache.
                    candidates = self.pools_for(node_labels, pools, version, fresh=True, node=node)
                    break
                if outcome is not None:
                    return outcome
            else:
                if not looked_again and self._no_room_until.pop(node, None) is not None:
                    looked_again = True  # the node's blocks were taken as full from cache
                    continue
                raise PoolExhausted([c.pool.metadata.name for c in candidates], node)
        raise Conflict(f"IPAM: could not allocate for {handle} after {RETRIES} tries; etcd is too busy")

    def _labels_of(self, node: str) -> dict:
        item = self.kv.get(keys.resource(r.Node.plural, node))
        found = self._parsed(item, lambda i: _decode_resource(r.Node, i)) if item else None
        return dict(found.metadata.labels or {}) if found else {}

    def _handle(self, handle: str) -> _HandleState:
        item = self.kv.get(keys.handle(handle))
        if item is None:
            return _HandleState(handle, Handle(handle), 0)
        return _HandleState(handle, Handle.from_json(item.value, key=item.key), item.mod_revision)

    def _write_allocation(self, held: _HandleState, cached: _Cached, n: int, attrs: dict,
                          extra_compare=(), extra_ops=()) -> list | None:
        """The one transaction of an allocation: block and handle together.

        None when a compare failed; the block's cache and `held` then hold what etcd has.
        """
        block = cached.block.copy()
        ips = block.assign(n, held.id, _block_attrs(attrs))
        record = Handle(held.id, dict(held.record.blocks), held.record.sequence, {**held.record.attrs, **attrs})
        record.add(block.cidr, len(ips))
        bkey, hkey = keys.block(block.cidr), keys.handle(held.id)
        result = self.kv.txn(
            [Compare.mod(bkey, cached.revision), Compare.mod(hkey, held.revision), *extra_compare],
            [Op.put(bkey, block.to_json()), Op.put(hkey, record.to_json()), *extra_ops],
            [Op.get(bkey), Op.get(hkey)])
        self.stats["txn"] += 1
        if result.succeeded:
            self._blocks[bkey] = _Cached(block, result.revision)
            self._wrote_handle(record, result.revision)
            return ips
        self.stats["conflict"] += 1
        current = result.results[1]
        if (current.mod_revision if current else 0) != held.revision:
            # The handle is not what we assumed (a retried request): learn what it is.
            held.record = Handle.from_json(current.value, key=hkey) if current else Handle(held.id)
            held.revision = current.mod_revision if current else 0
        self._recache(bkey, result.results[0])
        return None

    def _from_affine(self, held, node, attrs, num, candidates):
        for bkey in self._roomy_first(node):
            cached = self._blocks.get(bkey)
            if cached is None or cached.block.free < num:
                continue
            outcome = self._write_to(bkey, held, node, attrs, num, candidates, borrowing=False)
            if outcome is not None:
                if isinstance(outcome, Allocation):
                    self._roomy[node] = bkey
                return outcome
        return None

    def _roomy_first(self, node: str) -> list[str]:
        """The node's block keys, the one last allocated from first: a node with many full
        blocks passes over them only when that one fills up, not on every allocation."""
        bkeys = self._affine_blocks(node)
        hint = self._roomy.get(node)
        return [hint, *bkeys] if hint in self._blocks else bkeys

    def _write_to(self, bkey: str, held, node, attrs, num, candidates, borrowing: bool):
        """The allocation in one cached block, None when it has no room (or is not usable).

        A lost race is retried here at once, from the block the failed transaction's failure
        branch brought: a borrower's block is written by its node and other borrowers all
        the time, and a retry that read anything else first would find it changed again.
        """
        for _ in range(BLOCK_TRIES):
            cached = self._blocks.get(bkey)
            block = cached.block if cached else None
            if block is None or block.free < num or (block.affinity == affinity_of(node)) == borrowing:
                return None
            pool = _pool_of(block.cidr, candidates)
            if pool is None:
                return None
            ips = self._write_allocation(held, cached, num, attrs)
            if ips:
                return Allocation(held.id, ips, pool.metadata.name, borrowed=list(ips) if borrowing else [])
            if held.revision:
                return _RETRY  # the handle exists (a retried request): the caller looks at it
        return _RETRY

    def _refreshed_affine(self, held, node, attrs, num, candidates):
        """Before taking a new block, look again: another process may have freed addresses.

        Once a second at most while looking again finds no room: a node that borrows (its
        blocks full, the pool taken) would otherwise list its affinities and re-read its
        blocks on every allocation. The cost of not looking is a claim or a borrow that an
        address freed by another process within that second would have spared."""
        if self._clock() < self._no_room_until.get(node, 0.0) and not self._config()[1].strict_affinity:
            return None  # (with strictAffinity the next steps may refuse: always look again)
        self._forget(node)
        outcome = self._from_affine(held, node, attrs, num, candidates)
        if outcome is None:
            self._no_room_until[node] = self._clock() + _CONFIG_TTL
        return outcome

    def _forget(self, node: str) -> None:
        """Re-read the node's affinities next time; cached blocks are revalidated by revision."""
        self._affine.pop(node, None)

    def _affine_blocks(self, node: str) -> list[str]:
        if node not in self._affine:
            listing = self.kv.list(keys.affinity(node))
            bkeys = [keys.block(cidr) for cidr in _block_cidrs(listing.items)]
            self._load_blocks(bkeys)
            self._affine[node] = [b for b in bkeys if b in self._blocks]
        return self._affine[node]

    def _load_blocks(self, bkeys: list[str]) -> None:
        """Read blocks in batched transactions; parse only those that changed since cached."""
        for start in range(0, len(bkeys), 100):  # etcd allows 128 operations per transaction
            chunk = bkeys[start:start + 100]
            for bkey, item in zip(chunk, self.kv.txn([], [Op.get(b) for b in chunk]).results):
                cached = self._blocks.get(bkey)
                if cached is not None and item is not None and cached.revision == item.mod_revision:
                    continue
                block = self._block(item) if item is not None else None
                if block is None:
                    self._blocks.pop(bkey, None)
                else:
                    self._blocks[bkey] = _Cached(block, item.mod_revision)

    def _claim(self, held, node, attrs, num, candidates):
        """A new block for the node, its affinity and the allocation: one transaction."""
        _, config = self._config()
        if not config.auto_allocate_blocks:
            return None
        if config.max_blocks_per_host and len(self._affine_blocks(node)) >= config.max_blocks_per_host:
            if config.strict_affinity:
                raise TooManyBlocks(f"node {node!r} holds its maximum of {config.max_blocks_per_host} "
                                    "blocks and strictAffinity forbids borrowing")
            return None
        full = (tuple(c.pool.metadata.name for c in candidates), num)
        if self._clock() < self._full_until.get(full, 0.0):
            # No block was left to claim a moment ago: borrow without listing every block
            # key again (a borrower would otherwise list them per allocation).
            return None
        listing = self.kv.list(keys.BLOCKS, keys_only=True)
        existing = _block_cidrs(listing.items)
        # The claim holds only if no block was created since this listing: then the overlap
        # test below saw every block there is. One range compare instead of one per block
        # key that could overlap (a /26 has 126 smaller blocks inside it, and a leftover
        # of any size may exist); it compares create revisions, so allocations in existing
        # blocks do not disturb it, only a concurrent claim (then the claim is retried).
        complete = Compare.none_created_since(keys.BLOCKS, listing.revision)
        for pool, pool_rev, network in candidates:
            size = pool.spec.block_size
            if num > 1 << (network.max_prefixlen - size):
                continue
            overlaps = overlap_test(existing, network, size)
            for cidr in blocks_in_pool(network, size, node):
                if overlaps(cidr):
                    continue
                akey = keys.affinity(node, cidr)
                affinity = json.dumps({"node": node, "cidr": str(cidr), "pool": pool.metadata.name})
                ips = self._write_allocation(
                    held, _Cached(Block.new(cidr, affinity_of(node)), 0), num, attrs,
                    extra_compare=[Compare.absent(akey), complete,
                                   Compare.mod(keys.resource(r.IPPool.plural, pool.metadata.name), pool_rev)],
                    extra_ops=[Op.put(akey, affinity)])
                if ips:
                    self._affine.setdefault(node, []).append(keys.block(cidr))
                    return Allocation(held.id, ips, pool.metadata.name)
                # Lost to a claim (of this block or any other), a pool or a handle change:
                # start over from a fresh listing.
                return _RETRY
        self._full_until[full] = self._clock() + _CONFIG_TTL
        return None

    def _borrow(self, held, node, attrs, num, candidates):
        """An address from another node's block, when no block can be claimed."""
        _, config = self._config()
        if config.strict_affinity:
            return None
        # Other nodes' blocks as last listed (or written, or returned by a failed write): a
        # borrower tries them first and lists all blocks again only when none has room. A
        # stale one costs one failed transaction, which brings it up to date.
        for fresh in (False, True):
            if fresh or self._borrowable is None:
                listing = self.kv.list(keys.BLOCKS).items
                random.shuffle(listing)  # borrowers that all pick the first free block only collide
                self._borrowable = []
                for item in listing:
                    self._recache(item.key, item)
                    self._borrowable.append(item.key)
            for bkey in self._borrowable:
                outcome = self._write_to(bkey, held, node, attrs, num, candidates, borrowing=True)
                if outcome is not None:
                    return outcome
        return None

    def _existing(self, handle: str, record: Handle, candidates, version: int) -> Allocation:
        """What handle already holds in this address family (a retried ADD gets it back)."""
        ips, borrowed, pool_name = [], [], ""
        for cidr in record.blocks:
            if ipaddress.ip_network(cidr).version != version:
                continue
            item = self.kv.get(keys.block(cidr))
            block = self._block(item) if item is not None else None
            if block is None:
                continue
            held = block.ips_for_handle(handle)
            ips += held
            attrs = block.attributes_for(held[0]) if held else None
            if held and block.affinity != affinity_of(attrs["secondary"].get("node", "")):
                borrowed += held
            pool = _pool_of(block.cidr, candidates)
            pool_name = pool_name or (pool.metadata.name if pool else "")
        return Allocation(handle, ips, pool_name, borrowed, reused=True)

    # -- a specific address -----------------------------------------------------------

    def assign_ip(self, ip: str, handle: str, node: str, attrs: dict | None = None,
                  node_labels: dict | None = None) -> Allocation:
        """Allocate one given address (a static pod IP) to handle, from an enabled pool that
        selects node. Without node_labels, the labels of the node's registered Node count."""
        addr = ipaddress.ip_address(ip)
        attrs = {"node": node, "time": _now(), **(attrs or {})}
        with self._lock:
            for _ in range(RETRIES):
                pools, _ = self._config(fresh=True)
                match = [(p, rev) for p, rev in pools if addr in p.network]
                if not match:
                    raise AddressNotInPool(f"address {addr} is not in any IP pool")
                pool, pool_rev = match[0]
                _check_usable(pool, self._labels_of(node) if node_labels is None else node_labels, node,
                              f"address {addr}: ")
                cidr = block_for(addr, pool.spec.block_size)
                bkey, hkey = keys.block(cidr), keys.handle(handle)
                held = self._handle(handle)
                item = self.kv.get(bkey)
                compare = [Compare.mod(hkey, held.revision), Compare.mod(bkey, item.mod_revision if item else 0)]
                ops = []
                if item is None:
                    block = Block.new(cidr, affinity_of(node))
                    akey = keys.affinity(node, cidr)
                    compare += [Compare.absent(akey),
                                Compare.mod(keys.resource(r.IPPool.plural, pool.metadata.name), pool_rev)]
                    ops.append(Op.put(akey, json.dumps({"node": node, "cidr": str(cidr),
                                                         "pool": pool.metadata.name})))
                else:
                    block = Block.from_json(item.value, key=bkey)
                    owner = block.attributes_for(addr)
                    if owner and owner["handle"] == handle:  # a retried request
                        return Allocation(handle, [addr], pool.metadata.name, reused=True)
                got = block.assign_ip(addr, handle, _block_attrs(attrs))  # AddressInUse when taken
                record = Handle(handle, dict(held.record.blocks), held.record.sequence, {**held.record.attrs, **attrs})
                record.add(cidr, 1)
                ops += [Op.put(bkey, block.to_json()), Op.put(hkey, record.to_json())]
                if self.kv.txn(compare, ops).succeeded:
                    self._forget(node)
                    self._blocks.pop(bkey, None)
                    borrowed = [got] if block.affinity != affinity_of(node) else []
                    return Allocation(handle, [got], pool.metadata.name, borrowed)
            raise Conflict(f"IPAM: could not assign {addr} after {RETRIES} tries; etcd is too busy")

    # -- release ----------------------------------------------------------------------

    def release_handle(self, handle: str) -> list:
        """Free every address of handle. Releasing an unknown handle succeeds (CNI DEL twice).

        Like an allocation, the steady state reads nothing first: a handle this allocator
        wrote, in blocks it has cached, is released in one transaction comparing the
        revisions it wrote them at; a failed compare's failure branch brings the fresh ones.
        """
        hkey = keys.handle(handle)
        with self._lock:
            state = self._cached_release(handle)
        for _ in range(RETRIES):
            if state is None:
                item = self.kv.get(hkey)
                if item is None:
                    return []
                state = self._release_state(item, [keys.block(c) for c in Handle.from_json(item.value, key=hkey).blocks],
                                            None)
            record, hrev, blocks = state
            compare, ops, released, changed = [Compare.mod(hkey, hrev)], [Op.delete(hkey)], [], []
            for bkey, (block, brev) in blocks.items():
                compare.append(Compare.mod(bkey, brev))
                # An unreadable block keeps what it holds until repaired (ipam check then
                # finds an address without a handle); the DEL still frees everything else.
                if block is None:
                    continue
                block = block.copy()
                freed = block.release_handle(handle)
                if freed:
                    released += freed
                    changed.append(block)
                    ops.append(Op.put(bkey, block.to_json()))
            result = self.kv.txn(compare, ops, [Op.get(hkey), *(Op.get(b) for b in blocks)])
            self.stats["release_txn"] += 1
            if result.succeeded:
                with self._lock:
                    for block in changed:
                        self._remember(block, result.revision)
                return released
            self.stats["release_conflict"] += 1
            current = result.results[0]
            if current is None:
                return []  # released meanwhile (a DEL racing this one)
            state = self._release_state(current, list(blocks), result.results[1:])
        raise Conflict(f"IPAM: could not release {handle} after {RETRIES} tries; etcd is too busy")

    def _cached_release(self, handle: str):
        """(record, revision, {block key: (block, revision)}) as this allocator last wrote them,
        or None when it did not write the handle or no longer caches one of its blocks."""
        known = self._handles.pop(handle, None)
        if known is None:
            return None
        record, revision = known
        blocks = {}
        for cidr in record.blocks:
            cached = self._blocks.get(keys.block(cidr))
            if cached is None:
                return None
            blocks[keys.block(cidr)] = (cached.block, cached.revision)
        return record, revision, blocks

    def _release_state(self, item: KeyValue, bkeys: list[str], bitems):
        """The release state from a stored handle and its blocks (read here when bitems is None,
        or when the handle now names other blocks than bitems are of)."""
        record = Handle.from_json(item.value, key=item.key)
        wanted = [keys.block(c) for c in record.blocks]
        if bitems is None or wanted != bkeys:
            bitems = [self.kv.get(b) for b in wanted]
        return record, item.mod_revision, {
            bkey: (self._block(bitem) if bitem is not None else None, bitem.mod_revision if bitem else 0)
            for bkey, bitem in zip(wanted, bitems)}

    def _remember(self, block: Block, revision: int) -> None:
        """Keep a block we just wrote in the cache (only if we already track it)."""
        bkey = keys.block(block.cidr)
        if bkey in self._blocks:
            self._blocks[bkey] = _Cached(block, revision)

    def release_ips(self, ips: list[str]) -> list:
        """Free given addresses (an operator's `ipam release --ip`), fixing their handles too."""
        released = []
        for ip in ips:
            try:
                addr = ipaddress.ip_address(ip)
            except ValueError:
                raise AddressNotInPool(f"{ip!r} is not an IP address") from None
            for _ in range(RETRIES):
                found = self.find_block(addr)
                if found is None:
                    raise NotFound(f"address {addr} is not in any allocation block")
                block, bitem = found
                attrs = block.attributes_for(addr)
                if attrs is None:
                    break  # already free
                bkey = bitem.key
                hkey = keys.handle(attrs["handle"])
                hitem = self.kv.get(hkey)
                block.release([addr])
                compare = [Compare.mod(bkey, bitem.mod_revision), Compare.mod(hkey, hitem.mod_revision if hitem else 0)]
                ops = [Op.put(bkey, block.to_json())]
                if hitem is not None:
                    record = Handle.from_json(hitem.value, key=hkey)
                    record.remove(block.cidr, 1)
                    ops.append(Op.delete(hkey) if record.is_empty else Op.put(hkey, record.to_json()))
                result = self.kv.txn(compare, ops)
                if result.succeeded:
                    released.append(addr)
                    with self._lock:
                        self._remember(block, result.revision)
                    break
            else:
                raise Conflict(f"IPAM: could not release {addr}; etcd is too busy")
        return released

    def find_block(self, addr) -> tuple[Block, KeyValue] | None:
        """The block holding addr, whatever its pool's block size (pools may differ)."""
        pools, _ = self._config(fresh=True)
        sizes = sorted({p.spec.block_size for p, _ in pools if p.network.version == addr.version})
        sizes += [s for s in (26, 122) if s not in sizes and (s <= 32) == (addr.version == 4)]
        for size in sizes:
            bkey = keys.block(block_for(addr, size))
            item = self.kv.get(bkey)
            if item is not None:
                return Block.from_json(item.value, key=bkey), item
        return None

    # -- queries ------------------------------------------------------------------------

    def held_by(self, handle: str) -> list:
        """The addresses handle holds now (CNI CHECK compares them with prevResult)."""
        held = self._handle(handle)
        ips = []
        for cidr in held.record.blocks:
            item = self.kv.get(keys.block(cidr))
            block = self._block(item) if item is not None else None
            if block is not None:
                ips += block.ips_for_handle(handle)
        return ips

    def handles_on_node(self, node: str, prefix: str = "") -> set[str]:
        """Handles (starting with prefix) holding addresses allocated for node, borrowed ones included."""
        found = set()
        for item in self.kv.list(keys.BLOCKS).items:
            block = self._block(item)
            for handle in block.handles() if block else ():
                if handle.startswith(prefix):
                    attrs = block.attributes_for(block.ips_for_handle(handle)[0])
                    if attrs["secondary"].get("node") == node:
                        found.add(handle)
        return found

    # -- blocks of a node ---------------------------------------------------------------

    def release_node(self, node: str, unless_alive: str | None = None) -> list[str]:
        """A node is gone: its empty blocks are deleted; the others lose their affinity and
        stay until their last address is released (then release_empty_blocks takes them).
        With unless_alive (the node's liveness key), every transaction also requires that
        key to be absent: an agent that comes back half-way keeps the rest of its blocks."""
        guard = [Compare.absent(unless_alive)] if unless_alive else []
        done = []
        for aitem in self.kv.list(keys.affinity(node)).items:
            (cidr,) = _block_cidrs([aitem]) or (None,)
            for _ in range(RETRIES if cidr else 0):
                bitem = self.kv.get(keys.block(cidr))
                compare = [*guard, Compare.mod(aitem.key, aitem.mod_revision),
                           Compare.mod(keys.block(cidr), bitem.mod_revision if bitem else 0)]
                ops = [Op.delete(aitem.key)]
                block = self._block(bitem) if bitem is not None else None
                if bitem is not None and block is None:
                    break  # unreadable: it and its affinity stay until repaired
                if block is not None:
                    if block.is_empty:
                        ops.append(Op.delete(bitem.key))
                    else:
                        block.set_affinity(None)
                        ops.append(Op.put(bitem.key, block.to_json()))
                if self.kv.txn(compare, ops).succeeded:
                    done.append(str(cidr))
                    break
                if unless_alive and self.kv.get(unless_alive) is not None:
                    return done  # back: what was not released yet stays its own
                aitem = self.kv.get(aitem.key)
                if aitem is None:
                    break
        with self._lock:
            self._forget(node)
            self._full_until.clear()
            self._no_room_until.clear()
        return done

    def empty_blocks(self, node: str | None = None) -> list[tuple[str, int]]:
        """(block key, mod revision) of empty blocks affine to node, or, with no node,
        of every empty block that has no affinity left."""
        found = []
        for item in self.kv.list(keys.BLOCKS).items:
            block = self._block(item)
            if block is not None and block.is_empty and block.affinity == (affinity_of(node) if node else None):
                found.append((item.key, item.mod_revision))
        return found

    def release_block(self, bkey: str, revision: int) -> bool:
        """Delete an empty block and its affinity, only if it has not changed since revision."""
        item = self.kv.get(bkey)
        if item is None or item.mod_revision != revision:
            return False
        block = self._block(item)
        if block is None or not block.is_empty:
            return False
        compare, ops = [Compare.mod(bkey, revision)], [Op.delete(bkey)]
        if block.affinity and block.affinity.startswith("host:"):
            akey = keys.affinity(block.affinity[5:], block.cidr)
            ops.append(Op.delete(akey))
        ok = self.kv.txn(compare, ops).succeeded
        if ok:
            with self._lock:
                self._full_until.clear()  # room to claim a block again
                self._no_room_until.clear()
                self._blocks.pop(bkey, None)
                for bkeys in self._affine.values():
                    if bkey in bkeys:
                        bkeys.remove(bkey)
        return ok


class EmptyBlockReaper:
    """Releases a node's empty blocks once they stayed empty and untouched for grace seconds.

    Calico users see blocks flap when a node's last pod is replaced; the grace period
    keeps a block that is about to be reused.
    """

    def __init__(self, ipam: IPAM, node: str | None, grace: float, clock=time.monotonic):
        self.ipam, self.node, self.grace, self.clock = ipam, node, grace, clock
        self._seen: dict[str, tuple[int, float]] = {}

    def sweep(self) -> list[str]:
        now, released, current = self.clock(), [], {}
        for bkey, rev in self.ipam.empty_blocks(self.node):
            first = self._seen.get(bkey)
            since = first[1] if first and first[0] == rev else now
            if now - since >= self.grace and self.ipam.release_block(bkey, rev):
                released.append(keys.cidr_from_segment(keys.last_segment(bkey)).with_prefixlen)
                continue
            current[bkey] = (rev, since)
        self._seen = current
        return released


def _check_usable(pool: r.IPPool, node_labels: dict, node: str | None, what: str = "") -> None:
    """A pool named by a pod (annotation, fixed address) obeys the same rules as any other."""
    name = pool.metadata.name
    if pool.spec.disabled:
        raise NoMatchingPool(f'{what}IP pool "{name}" is disabled')
    if not r.parse_selector(pool.spec.node_selector).matches(node_labels):
        where = f'node "{node}"' if node else "this node"
        raise NoMatchingPool(f'{what}IP pool "{name}" does not select {where} '
                             f"(nodeSelector: {pool.spec.node_selector})")


def _block_cidrs(items) -> list:
    """The CIDRs of block keys; a key that names none is skipped (ipam check reports it)."""
    found = []
    for item in items:
        try:
            found.append(keys.cidr_from_segment(keys.last_segment(item.key)))
        except ValueError:
            continue
    return found


def _block_attrs(attrs: dict) -> dict:
    """What a block keeps of an allocation's attributes: the node holding the address, which
    BGP (ipam/origins.py) and borrowing need from the block alone. The rest (pod, namespace,
    time, ...) is in the handle record (layout 2)."""
    return {"node": attrs["node"]} if attrs.get("node") else {}


def _pool_of(cidr, candidates) -> r.IPPool | None:
    for pool, _, network in candidates:
        if cidr.version == network.version and cidr.subnet_of(network):
            return pool
    return None


def _decode_resource(cls, item: KeyValue):
    from routed.datastore.resources import ResourceStore

    return ResourceStore._decode(cls, item)


_stamp: tuple[int, str] = (-1, "")


def _now() -> str:
    """The time of an allocation, to the second (formatted once per second: strftime was a
    tenth of the allocator's own CPU time)."""
    global _stamp
    second = int(time.time())
    if _stamp[0] != second:
        _stamp = (second, datetime.fromtimestamp(second, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))
    return _stamp[1]


__all__ = ["IPAM", "Allocation", "EmptyBlockReaper"]
