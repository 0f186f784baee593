"""IPAM allocation rate against etcd's raw compare-and-swap rate, same client, same etcd.

Reference: sequential txn(compare mod_revision(key) == R, put key), the writer keeping
R from the previous result: one round trip per op, as the allocator's steady state
(which reads the handle, then writes a block and the handle in one transaction).

    sequential        one node, IPAM.allocate back to back        vs one raw CAS writer
    8 nodes           8 processes, one node each, a big pool      vs 8 raw CAS writers on 8 keys
    8 nodes, 4 blocks as above on a pool of 4 blocks, so half    vs the same, on a fresh etcd
                      the nodes borrow; each op also releases

The 8-node lines also print lost transactions (IPAM.stats["conflict"], each one a
retry) per allocation. Prints only; never asserts.
"""

from __future__ import annotations

import multiprocessing
import time

from bench.common import note, private_etcd, report, run_for, seconds

NODES = 8
POOL = {"cidr": "10.128.0.0/14", "blockSize": 26}  # 4096 blocks: never runs out here
# Fewer blocks than nodes, so half the nodes borrow and blocks are written by several
# nodes at once; 8 nodes holding at most 8 each fit in its 64 addresses.
CONTENDED_POOL = {"cidr": "10.9.0.0/26", "blockSize": 28}
CONTENDED_HOLD = 8
WARMUP = 20


def cas_writer(kv, key: str, size: int = 64):
    """A function doing one compare-and-swap of a size-byte value per call, and its state."""
    from routed.datastore import Compare, Op

    kv.put(key, b"0")
    state = {"rev": kv.get(key).mod_revision, "lost": 0}
    value = b"x" * size

    def op():
        result = kv.txn([Compare.mod(key, state["rev"])], [Op.put(key, value)], [Op.get(key)])
        if result.succeeded:
            state["rev"] = result.revision
        else:  # only with another writer on the key
            state["lost"] += 1
            state["rev"] = result.results[0].mod_revision

    return op, state


def allocator(kv, node: str, hold: int | None = None, pools: list[str] | None = None):
    """One allocation per call; with hold, the node also releases its oldest handle
    whenever it holds that many (so a small pool never runs out)."""
    from collections import deque

    from ipam.allocator import IPAM
    from ipam.errors import PoolExhausted

    ipam = IPAM(kv)
    counter = iter(range(10**9))
    held: deque[str] = deque()

    def op():
        if hold is not None and len(held) >= hold:
            ipam.release_handle(held.popleft())
        handle = f"net.{node}-{next(counter)}.eth0"
        try:
            ipam.allocate(handle, node, {"pod": "bench", "namespace": "bench"}, pools=pools)
        except PoolExhausted:
            ipam.stats["exhausted"] += 1
            return
        held.append(handle)

    return op, ipam


def _worker(kind: str, url: str, index: int, duration: float, barrier, results) -> None:
    """One of the parallel writers, in its own process (spawned: no gRPC state across fork)."""
    from routed.datastore.etcd import EtcdKV

    kv = EtcdKV([url])
    if kind == "cas":
        op, state = cas_writer(kv, f"/bench/cas/{index}")
    else:
        contended = kind == "contended"
        op, ipam = allocator(kv, f"{kind}-{index}", hold=CONTENDED_HOLD if contended else None,
                             pools=["small" if contended else "bench"])
    for _ in range(WARMUP):
        op()
    before = dict(ipam.stats) if kind != "cas" else {}
    barrier.wait()
    n, took = run_for(duration, op)
    if kind == "cas":
        stats = {"txn": n, "conflict": state["lost"]}
    else:
        stats = {k: v - before.get(k, 0) for k, v in ipam.stats.items()}
    results.put((n, took, stats))
    kv.close()


def parallel(kind: str, url: str, duration: float) -> tuple[float, int, dict]:
    """(total ops/s, ops, summed stats) of NODES processes running at once."""
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(NODES), ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(kind, url, i, duration, barrier, results)) for i in range(NODES)]
    for p in procs:
        p.start()
    got = [results.get(timeout=120 + duration) for _ in procs]
    for p in procs:
        p.join()
    ops = sum(g[0] for g in got)
    stats: dict[str, int] = {}
    for g in got:
        for k, v in g[2].items():
            stats[k] = stats.get(k, 0) + v
    return ops / max(g[1] for g in got), ops, stats


def make_pools(kv) -> None:
    from routed import resources as r
    from routed.datastore.resources import ResourceStore

    for name, spec in (("bench", POOL), ("small", CONTENDED_POOL)):
        ResourceStore(kv).create(r.parse({"apiVersion": "routed.io/v1", "kind": "IPPool",
                                          "metadata": {"name": name}, "spec": spec}))


def main() -> None:
    from routed.datastore import keys

    duration = seconds()

    def rate(op) -> float:
        for _ in range(WARMUP):
            op()
        n, took = run_for(duration, op)
        return n / took

    with private_etcd() as etcd:
        kv = etcd.client()
        make_pools(kv)
        reference = rate(cas_writer(kv, "/bench/cas/seq")[0])
        op, ipam = allocator(kv, "bench-seq")
        for _ in range(WARMUP):
            op()
        times = []
        n, took = run_for(duration, lambda: (op(), times.append(time.monotonic())))
        ours = n / took
        report("sequential IPAM.allocate, one node", ours, reference, "ops/s")
        blocks = len(kv.keys(keys.affinity("bench-seq")))
        first = sum(1 for t in times if t - times[0] < 0.5) / 0.5
        last = sum(1 for t in times if times[-1] - t < 0.5) / 0.5
        note(f"  reference: one raw CAS writer, 64-byte value; the node ended with {blocks} /26 blocks, "
             f"first 0.5 s {first:.0f}/s, last 0.5 s {last:.0f}/s")
        # Where the gap goes, on the same etcd: an allocation reads the handle, then
        # writes a whole block (and the handle) in its transaction.
        block_bytes = max(len(i.value) for i in kv.list(keys.BLOCKS).items)
        big = rate(cas_writer(kv, "/bench/cas/big", block_bytes)[0])
        cas_op = cas_writer(kv, "/bench/cas/read", block_bytes)[0]
        read_then_cas = rate(lambda: (kv.get("/bench/absent"), cas_op()))
        note(f"  same etcd: CAS of a full block's size ({block_bytes} B) {big:.0f}/s; "
             f"a get + that CAS {read_then_cas:.0f}/s, ours/that = {ours / read_then_cas:.2f}x")
        kv.close()

        ref_rate, ref_ops, ref_stats = parallel("cas", etcd.url, duration)
        got, ops, stats = parallel("ipam", etcd.url, duration)
        report(f"{NODES} nodes (processes), own blocks", got, ref_rate, "ops/s")
        note(f"  {ops} allocations, {stats.get('txn', 0)} transactions, {stats.get('conflict', 0)} lost and "
             f"retried: {stats.get('conflict', 0) / max(ops, 1):.3f} conflicts per allocation")
        note(f"  reference: {NODES} raw CAS writers (processes) on {NODES} keys: {ref_ops} txns, "
             f"{ref_stats['conflict']} lost")

    # Contention on a fresh etcd, so borrowing (which reads every block) sees only this pool.
    with private_etcd() as etcd:
        kv = etcd.client()
        make_pools(kv)
        kv.close()
        ref_rate, _, _ = parallel("cas", etcd.url, duration)
        got, ops, stats = parallel("contended", etcd.url, duration)
        report(f"{NODES} nodes, 4 blocks for {NODES} (borrowing)", got, ref_rate, "ops/s")
        note(f"  {ops} allocations, {stats.get('txn', 0)} transactions, {stats.get('conflict', 0)} lost and "
             f"retried: {stats.get('conflict', 0) / max(ops, 1):.3f} conflicts per allocation, "
             f"{stats.get('exhausted', 0)} exhausted; each op also releases the node's oldest address "
             f"once it holds {CONTENDED_HOLD}; reference: {NODES} raw CAS writers on {NODES} keys, this etcd")


if __name__ == "__main__":
    main()
