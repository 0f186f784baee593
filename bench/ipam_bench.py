"""IPAM allocation rate against etcd's raw compare-and-swap rate, same client, same etcd;
this code ("after") and the IPAM of BASELINE ("before", taken from git) in the same run.

Reference: txn(compare mod_revision(key) == R, put key), the writer keeping R from the
previous result: one round trip per op, as the allocator's steady state (one transaction
writing a block and the handle, no read).

    sequential          one node, IPAM.allocate back to back      vs one raw CAS writer
    one node, 16 ADDs   16 threads of one agent calling allocate   vs one raw CAS writer
                        at once (CNI ADDs in parallel): group commit
    8 nodes             8 processes, one node each, a big pool     vs 8 raw CAS writers on 8 keys
    8 nodes, 4 blocks   as above on a pool of 4 blocks, so half    vs the same, on a fresh etcd
                        the nodes borrow; each op also releases

A second reference, "bare transaction", in the scenarios with one transaction per allocation:
the same writers sending the allocator's transaction (a block value of the size it writes and
a handle record, 2 compares, the failure reads) with no allocator code; the most any allocator
that writes each allocation in its own transaction can reach there.

Every scenario runs on a fresh etcd, on which the reference, the baseline and this code
take turns ROUNDS times. The lines print lost transactions (IPAM.stats["conflict"], each one
a retry) per allocation. Prints only; never asserts.
"""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.common import note, private_etcd, report, run_for, seconds

# The allocator before issue 16's IPAM work (main at b0cfb14): the block kept every
# attribute, one transaction per allocation.
BASELINE = "b0cfb14"
REPO = Path(__file__).resolve().parents[1]

NODES = 8
THREADS = 16
POOL = {"cidr": "10.128.0.0/14", "blockSize": 26}  # 4096 blocks: never runs out here
# Fewer blocks than nodes, so half the nodes borrow and blocks are written by several
# nodes at once; 8 nodes holding at most 6 each leave 16 of its 64 addresses free (with
# all 64 held, nodes below their 6 would mostly find the pool exhausted, and the figure
# would measure that).
CONTENDED_POOL = {"cidr": "10.9.0.0/26", "blockSize": 28}
CONTENDED_HOLD = 6
WARMUP = 20
# The sizes "after" writes in the sequential scenario: its largest block value (printed on its
# line) and a handle record with the bench's attributes.
SHAPE = (3200, 190)
ROUNDS = 3  # the reference and each implementation take turns, per scenario


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


def shape_writer(kv, index: int, block_bytes: int, handle_bytes: int):
    """The allocator's transaction without the allocator: compare the block's revision and a
    new handle's absence, put both (values of the sizes given), the same failure reads. What
    one allocation costs etcd and the client library, whatever the allocator's code does."""
    from itertools import count

    from routed.datastore import Compare, Op

    block, handle = b"x" * block_bytes, b"h" * handle_bytes
    bkey = f"/bench/shape/{index}/block"
    kv.put(bkey, b"0")
    state = {"rev": kv.get(bkey).mod_revision, "lost": 0}  # one writer per block: never lost
    ids = count()

    def op():
        hkey = f"/bench/shape/{index}/handles/{os.getpid()}-{next(ids)}"
        result = kv.txn([Compare.mod(bkey, state["rev"]), Compare.absent(hkey)],
                        [Op.put(bkey, block), Op.put(hkey, handle)], [Op.get(bkey), Op.get(hkey)])
        state["rev"] = result.revision

    return op, state


def allocator(ipam, node: str, hold: int | None = None, pools: list[str] | None = None, prefix: str = ""):
    """One allocation per call; with hold, the node also releases its oldest handle
    whenever it holds that many (so a small pool never runs out)."""
    from collections import deque
    from itertools import count

    from ipam.errors import PoolExhausted

    counter = count()
    held: deque[str] = deque()
    prefix += f"{os.getpid()}-"  # a later round (another process) must not meet this round's handles

    def op():
        if hold is not None and len(held) >= hold:
            ipam.release_handle(held.popleft())
        i = next(counter)
        handle = f"net.{node}-{prefix}{i}.eth0"
        try:
            ipam.allocate(handle, node, {"pod": f"bench-{prefix}{i}", "namespace": "bench"}, pools=pools)
        except PoolExhausted:
            ipam.stats["exhausted"] += 1
            return
        held.append(handle)

    def release_all():
        """After the timed run: the next round's processes start from an empty pool."""
        while hold is not None and held:
            ipam.release_handle(held.popleft())

    op.release_all = release_all
    return op


def _worker(kind: str, impl: str | None, label: str, url: str, index: int, duration: float, barrier,
            results) -> None:
    """One writer, in its own process (spawned: no gRPC state across fork). With impl, the
    `ipam` package is imported from there (the baseline's). Each label (implementation) has
    its own nodes and its own small pool, so implementations taking turns never share a block."""
    if impl:
        sys.path.insert(0, impl)
    from routed.datastore.etcd import EtcdKV

    kv = EtcdKV([url])
    if kind in ("cas", "shape"):
        op, state = cas_writer(kv, f"/bench/cas/{index}") if kind == "cas" else shape_writer(kv, index, *SHAPE)
        for _ in range(WARMUP):
            op()
        barrier.wait()
        cpu = time.process_time()
        n, took = run_for(duration, op)
        results.put((n, took, {"txn": n, "conflict": state["lost"], "cpu_us": int((time.process_time() - cpu) * 1e6)}))
        kv.close()
        return
    from ipam.allocator import IPAM

    ipam = IPAM(kv)
    node = f"{label}-{kind}-{index}"
    if kind == "threads":
        ops = [allocator(ipam, node, prefix=f"t{i}-") for i in range(THREADS)]
    else:
        contended = kind == "contended"
        ops = [allocator(ipam, node, hold=CONTENDED_HOLD if contended else None,
                         pools=[f"small-{label}" if contended else "bench"])]
    for _ in range(WARMUP):
        ops[0]()
    before = dict(ipam.stats)
    barrier.wait()
    cpu = time.process_time()
    done: list[tuple[int, float]] = []
    threads = [threading.Thread(target=lambda op=op: done.append(run_for(duration, op))) for op in ops[1:]]
    for t in threads:
        t.start()
    done.append(run_for(duration, ops[0]))
    for t in threads:
        t.join()
    stats = {k: v - before.get(k, 0) for k, v in ipam.stats.items()}
    stats["cpu_us"] = int((time.process_time() - cpu) * 1e6)
    stats["blockBytes"] = max([len(c.block.to_json()) for c in ipam._blocks.values()
                               if c.block.affinity == f"host:{node}"] or [0])
    for op in ops:
        op.release_all()
    # An op that found the pool exhausted allocated nothing: count allocations only.
    results.put((sum(n for n, _ in done) - stats.get("exhausted", 0), max(t for _, t in done), stats))
    kv.close()


def measure(kind: str, url: str, duration: float, writers: int, impl: str | None = None,
            label: str = "") -> tuple[float, int, dict]:
    """(total ops/s, ops, summed stats) of `writers` processes running at once."""
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(writers), ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(kind, impl, label, url, i, duration, barrier, results))
             for i in range(writers)]
    for p in procs:
        p.start()
    got = [results.get(timeout=120 + duration) for _ in procs]
    for p in procs:
        p.join()
    ops = sum(g[0] for g in got)
    stats: dict[str, int] = {}
    for g in got:
        for k, v in g[2].items():
            stats[k] = max(stats.get(k, 0), v) if k == "blockBytes" else stats.get(k, 0) + v
    return ops / max(g[1] for g in got), ops, stats


def make_pools(kv, labels: list[str]) -> None:
    """The big pool, and a small pool per implementation (10.9.0.0/26, 10.9.0.64/26, ...)."""
    import ipaddress

    from routed import resources as r
    from routed.datastore.resources import ResourceStore

    small = ipaddress.ip_network(CONTENDED_POOL["cidr"])
    pools = [("bench", POOL)] + [(f"small-{label}", {**CONTENDED_POOL, "cidr": str(ipaddress.ip_network(
        (int(small.network_address) + i * small.num_addresses, small.prefixlen)))}) for i, label in enumerate(labels)]
    for name, spec in pools:
        ResourceStore(kv).create(r.parse({"apiVersion": "routed.io/v1", "kind": "IPPool",
                                          "metadata": {"name": name}, "spec": spec}))


def baseline_tree(workdir: str) -> tuple[str | None, str]:
    """The baseline's `ipam` package exported from git into workdir: (path, "") or (None, why not)."""
    try:
        archive = subprocess.run(["git", "-C", str(REPO), "archive", BASELINE, "ipam"], capture_output=True,
                                 check=True).stdout
        subprocess.run(["tar", "-x", "-C", workdir], input=archive, check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError) as err:
        stderr = getattr(err, "stderr", b"") or b""
        return None, f"{BASELINE} not available from git ({stderr.decode(errors='replace').strip() or err})"
    return workdir, ""


SCENARIOS = [
    # (title, kind, IPAM writers, reference writers)
    ("sequential IPAM.allocate, one node", "ipam", 1, 1),
    (f"one node, {THREADS} concurrent ADDs", "threads", 1, 1),
    (f"{NODES} nodes (processes), own blocks", "ipam", NODES, NODES),
    (f"{NODES} nodes, 4 blocks for {NODES} (borrowing)", "contended", NODES, NODES),
]


def _run(kind: str, writers: int, ref_writers: int, duration: float, impls: dict[str, str | None]):
    """The reference and each implementation, taking turns ROUNDS times on one etcd (the
    machine's load drifts; taking turns shares the drift): {name: summed (rate, ops, stats)}."""
    with private_etcd() as etcd:
        kv = etcd.client()
        make_pools(kv, list(impls))
        kv.close()
        runs: dict[str, list] = {"cas": [], **{label: [] for label in impls}}
        if kind == "ipam":
            runs["shape"] = []
        for _ in range(ROUNDS):
            runs["cas"].append(measure("cas", etcd.url, duration, ref_writers))
            for label, impl in impls.items():
                runs[label].append(measure(kind, etcd.url, duration, writers, impl, label))
            if "shape" in runs:
                runs["shape"].append(measure("shape", etcd.url, duration, writers))
        return {label: _sum(r) for label, r in runs.items()}


def _sum(runs) -> tuple[float, int, dict]:
    ops = sum(n for _, n, _ in runs)
    stats: dict[str, int] = {}
    for _, _, st in runs:
        for k, v in st.items():
            stats[k] = max(stats.get(k, 0), v) if k == "blockBytes" else stats.get(k, 0) + v
    # Each run lasted about as long: the rate over all of them is the mean of the rates.
    return sum(rate for rate, _, _ in runs) / len(runs), ops, stats


def main() -> None:
    duration = seconds()
    with tempfile.TemporaryDirectory(prefix="routed-bench-baseline-") as workdir:
        before, why = baseline_tree(workdir)
        if before is None:
            note(f"before: skipped, {why}")
        impls = {"before": before, "after": None} if before else {"after": None}
        for title, kind, writers, ref_writers in SCENARIOS:
            got = _run(kind, writers, ref_writers, duration, impls)
            ref_rate, ref_ops, ref_stats = got["cas"]
            ratios = {}
            for label in impls:
                rate, ops, stats = got[label]
                report(f"{title} [{label}]", rate, ref_rate, "ops/s")
                ratios[label] = rate / ref_rate
                conflicts = stats.get("conflict", 0)
                note(f"  {ops} allocations in {stats.get('txn', 0)} transactions ({stats.get('grouped', 0)} "
                     f"group-committed), {conflicts} lost and retried: "
                     f"{conflicts / max(ops, 1):.3f} conflicts per allocation"
                     + (f", {stats['exhausted']} exhausted" if stats.get("exhausted") else "")
                     + (f"; releases: {stats.get('release_txn', 0)} transactions, "
                        f"{stats.get('release_conflict', 0)} lost" if stats.get("release_txn") else "")
                     + f"; largest block value {stats.get('blockBytes', 0)} B; client CPU "
                     f"{stats.get('cpu_us', 0) / max(ops, 1):.0f} us per allocation")
                releases = stats.get("release_txn", 0) - stats.get("release_conflict", 0)
                if releases:
                    # Each op here is an ADD and a DEL: two IPAM changes, where a CAS writer makes one.
                    changes = rate * (ops + releases) / ops
                    note(f"  counting releases too (each a CNI DEL, one IPAM change like an allocation): "
                         f"{changes:.1f} changes/s, {changes / ref_rate:.2f}x the reference")
            if "shape" in got:
                rate, _, stats = got["shape"]
                report(f"{title} [bare transaction]", rate, ref_rate, "ops/s")
                note(f"  {writers} writer(s) of the allocator's transaction alone (a {SHAPE[0]} B block and a "
                     f"{SHAPE[1]} B handle, 2 compares, no allocator code): the most an allocator writing one "
                     f"such transaction per allocation can reach; "
                     f"client CPU {stats.get('cpu_us', 0) / max(got['shape'][1], 1):.0f} us per txn")
            note(f"  reference: {ref_writers} raw CAS writer(s) of 64 B, {ref_ops} txns, {ref_stats['conflict']} lost, "
                 f"client CPU {ref_stats.get('cpu_us', 0) / max(ref_ops, 1):.0f} us per txn"
                 + (f"; after/before: {ratios['after'] / ratios['before']:.2f}x" if len(ratios) == 2 else ""))
    note(f"before = ipam/ at {BASELINE}; each scenario on its own etcd, reference and implementations taking "
         f"turns {ROUNDS} times; 'borrowing' also releases the node's oldest address once it holds "
         f"{CONTENDED_HOLD}")


if __name__ == "__main__":
    main()
