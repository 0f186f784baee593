"""The IPAM under real concurrency: eight node agents as eight processes on one etcd.

Each worker (tests/support/ipam_worker.py) logs every operation it starts and every
operation it completes, fsync'd, so after the run (even after SIGKILLs) the logs say
which handles hold which addresses, and which single operation per killed process is
in doubt. The tests compare that with what etcd holds.
"""

from __future__ import annotations

import ipaddress
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from ipam.allocator import IPAM
from ipam.block import Block
from ipam.check import check, repair
from ipam.errors import PoolExhausted
from routed import resources as r
from routed.datastore import keys
from routed.datastore.resources import ResourceStore
from tests.support.ipam_worker import read_log

pytestmark = [pytest.mark.slow, pytest.mark.etcd]

REPO = Path(__file__).resolve().parents[2]
NODES = [f"node-{i}" for i in range(8)]
# 8 blocks of 16 = 128 addresses; 8 workers holding up to 20 each want 160: blocks run
# out (so nodes borrow) and the pool runs out (so allocations fail and are retried).
POOL = {"cidr": "10.9.0.0/25", "blockSize": 28}
HOLD = 20
HANG_GUARD = 120  # seconds; only there so that a hang fails instead of blocking the run


def make_pool(kv, name="p", **spec):
    ResourceStore(kv).create(r.parse({"apiVersion": "routed.io/v1", "kind": "IPPool",
                                      "metadata": {"name": name}, "spec": {**POOL, **spec}}))


def spawn(etcd, node, log: Path, ops, seed, hold=HOLD, alloc_ratio=None) -> subprocess.Popen:
    args = [sys.executable, "-m", "tests.support.ipam_worker", "--endpoint", etcd.url, "--node", node,
            "--ops", str(ops), "--hold", str(hold), "--seed", str(seed), "--log", str(log)]
    if alloc_ratio is not None:
        args += ["--alloc-ratio", str(alloc_ratio)]
    err_path = Path(f"{log}.{seed}.err")
    with open(err_path, "ab") as err:
        proc = subprocess.Popen(args, cwd=REPO, stdout=err, stderr=subprocess.STDOUT)
    proc.output = lambda: err_path.read_text()[-3000:]  # what the worker printed, for failures
    return proc


def finish(procs: dict[str, subprocess.Popen]) -> None:
    """Wait for workers that run to their end; any exit but 0 fails with the worker's output."""
    deadline = time.monotonic() + HANG_GUARD
    for node, proc in procs.items():
        try:
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            for p in procs.values():
                if p.poll() is None:
                    p.kill()
                    p.wait()
            pytest.fail(f"worker for {node} still running after {HANG_GUARD}s (hung?)")
        if proc.returncode != 0:
            pytest.fail(f"worker for {node} exited with {proc.returncode}:\n{proc.output()}")


class History:
    """Every worker log replayed: who held what, and which operations are in doubt."""

    def __init__(self, logs: dict[str, Path]):
        self.entries = {node: read_log(str(path)) for node, path in logs.items()}
        self.alloc: dict[str, dict] = {}  # handle -> its "alloc" entry
        self.releasing: dict[str, float] = {}  # handle -> when its release started
        self.release: dict[str, dict] = {}  # handle -> its "release" entry
        self.exhausted: list[dict] = []
        self.done: list[dict] = []
        self.in_doubt: set[str] = set()  # at most one operation per killed process
        for node, entries in self.entries.items():
            started: dict[str, dict] = {}  # intent lines not followed by their completion
            for e in entries:
                op, handle = e["op"], e.get("handle")
                if op == "start":
                    self.in_doubt |= set(started)  # the previous incarnation died here
                    started = {}
                elif op in ("allocating", "releasing"):
                    started[handle] = e
                    if op == "releasing":
                        self.releasing[handle] = e["t"]
                elif op in ("alloc", "exhausted", "release"):
                    started.pop(handle, None)
                    {"alloc": self.alloc, "release": self.release}.get(op, {})[handle] = e
                    if op == "exhausted":
                        self.exhausted.append(e)
                elif op == "done":
                    self.done.append(e)
            self.in_doubt |= set(started)

    @property
    def live(self) -> dict[str, list[str]]:
        """Handles allocated and not (even possibly) released, with their addresses."""
        return {h: e["ips"] for h, e in self.alloc.items() if h not in self.releasing}

    def stats(self, name: str) -> int:
        return sum(d["stats"].get(name, 0) for d in self.done)

    def double_holdings(self) -> list[str]:
        """Addresses two handles certainly held at the same moment.

        A handle certainly holds its address from the moment its "alloc" line was
        written (after the commit) until its "releasing" line was written (before the
        release); all workers log the same monotonic clock.
        """
        spans: dict[str, list[tuple[float, float, str]]] = {}
        for handle, e in self.alloc.items():
            for ip in e["ips"]:
                spans.setdefault(ip, []).append((e["t"], self.releasing.get(handle, float("inf")), handle))
        found = []
        for ip, held in spans.items():
            held.sort()
            for (_, end, a), (start, _, b) in zip(held, held[1:]):
                if start < end:
                    found.append(f"{ip}: {a} and {b}")
        return found

    def releases_that_freed_something_else(self) -> list[str]:
        return [f"{h}: allocated {self.alloc[h]['ips']}, release freed {e['ips']}"
                for h, e in self.release.items() if sorted(e["ips"]) != sorted(self.alloc[h]["ips"])]


def held_in_blocks(kv) -> dict[str, str]:
    """address -> handle, for every allocated address in every block."""
    held = {}
    for item in kv.list(keys.BLOCKS).items:
        block = Block.from_json(item.value, key=item.key)
        for handle in block.handles():
            for ip in block.ips_for_handle(handle):
                assert str(ip) not in held, f"{ip} is in two blocks"
                held[str(ip)] = handle
    return held


def handle_keys(kv) -> set[str]:
    return {keys.last_segment(k) for k in kv.keys(keys.HANDLES)}


def by_address(live: dict[str, list[str]]) -> dict[str, str]:
    pairs = [(ip, h) for h, ips in live.items() for ip in ips]
    flat = [ip for ip, _ in pairs]
    dups = sorted({ip for ip in flat if flat.count(ip) > 1})
    assert not dups, f"addresses held by two live handles at the end: {dups}"
    return dict(pairs)


# -- eight nodes, no crashes ----------------------------------------------------------


def test_eight_nodes_never_share_an_address(etcd, kv, tmp_path):
    make_pool(kv)
    logs = {node: tmp_path / f"{node}.log" for node in NODES}
    finish({node: spawn(etcd, node, logs[node], ops=300, seed=i) for i, node in enumerate(NODES)})

    history = History(logs)
    assert len(history.done) == len(NODES)
    assert history.in_doubt == set(), "a worker that ran to its end left an operation unfinished"
    assert history.double_holdings() == []
    assert history.releases_that_freed_something_else() == []

    live = history.live
    expected = by_address(live)
    assert held_in_blocks(kv) == expected  # exactly those addresses, for exactly those handles
    assert handle_keys(kv) == set(live)
    report = check(kv)
    assert report.clean, report.problems
    assert check(kv, live_handles=set(live)).clean
    assert report.counts["addressesInUse"] == len(expected)

    # The load did what it is for: blocks ran out (borrowing), the pool ran out
    # (PoolExhausted, survived), and lost compare-and-swaps were retried to success.
    borrowed = [e for e in history.alloc.values() if e["borrowed"]]
    assert borrowed, "no allocation borrowed from another node's block"
    for e in borrowed:
        node = e["handle"].split(".")[1].rsplit("-", 1)[0]
        for ip in e["borrowed"]:
            item = kv.get(keys.block(ipaddress.ip_network(f"{ip}/{POOL['blockSize']}", strict=False)))
            assert Block.from_json(item.value, key=item.key).affinity != f"host:{node}"
    assert history.exhausted, "the pool never ran out"
    assert history.stats("conflict") > 0, "no transaction ever lost a race"
    assert history.stats("alloc") == len(history.alloc)

    ipam = IPAM(kv)
    for handle, ips in live.items():
        assert sorted(str(ip) for ip in ipam.release_handle(handle)) == sorted(ips)
    blocks = [Block.from_json(i.value, key=i.key) for i in kv.list(keys.BLOCKS).items]
    assert blocks and all(b.is_empty for b in blocks), [str(b.cidr) for b in blocks if not b.is_empty]
    assert handle_keys(kv) == set()
    assert check(kv).clean


# -- SIGKILL at random moments -------------------------------------------------------


def wait_started(proc: subprocess.Popen, log: Path) -> None:
    """Until the worker has logged its start line (it is then inside its loop)."""
    deadline = time.monotonic() + HANG_GUARD
    while not any(e["op"] == "start" and e["pid"] == proc.pid for e in read_log(str(log))):
        if proc.poll() is not None:
            pytest.fail(f"worker pid {proc.pid} exited with {proc.returncode} before starting:\n{proc.output()}")
        if time.monotonic() > deadline:
            pytest.fail(f"worker pid {proc.pid} did not start within {HANG_GUARD}s")
        time.sleep(0.05)


def test_workers_killed_at_random_leave_only_repairable_orphans(etcd, kv, tmp_path):
    seed = int(os.environ.get("IPAM_CHAOS_SEED", random.randrange(1 << 32)))
    rng = random.Random(seed)
    print(f"IPAM_CHAOS_SEED={seed}")
    make_pool(kv)
    logs = {node: tmp_path / f"{node}.log" for node in NODES}
    endless = 100_000  # workers run until killed
    running = {node: spawn(etcd, node, logs[node], ops=endless, seed=rng.randrange(1 << 30)) for node in NODES}
    kills = 0
    try:
        for _ in range(6):
            for node, proc in running.items():
                wait_started(proc, logs[node])
            time.sleep(rng.uniform(0.2, 1.5))
            for node in rng.sample(NODES, rng.randint(1, 3)):
                os.kill(running[node].pid, signal.SIGKILL)
                code = running[node].wait()
                assert code == -signal.SIGKILL, f"worker for {node} had exited with {code}: {running[node].output()}"
                kills += 1
                running[node] = spawn(etcd, node, logs[node], ops=endless, seed=rng.randrange(1 << 30))
        for node, proc in running.items():
            wait_started(proc, logs[node])
        time.sleep(rng.uniform(0.2, 1.5))
    finally:
        for proc in running.values():  # the last generation dies the same way
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
    for node, proc in running.items():
        assert proc.returncode == -signal.SIGKILL, f"worker for {node} exited with {proc.returncode}: {proc.output()}"

    history = History(logs)
    where = f"(IPAM_CHAOS_SEED={seed})"
    assert history.in_doubt, f"no kill landed inside an operation {where}"
    assert len(history.in_doubt) <= kills + len(NODES), where  # one per killed process at most
    assert history.double_holdings() == [], where
    assert history.releases_that_freed_something_else() == [], where
    live = history.live
    expected = by_address(live)

    # Before repair: every live handle holds exactly its logged addresses; anything
    # else in etcd belongs to an operation cut short by a kill.
    held = held_in_blocks(kv)
    assert {ip: h for ip, h in held.items() if h in live} == expected, where
    assert {h for h in held.values() if h not in live} <= history.in_doubt, where
    assert handle_keys(kv) - set(live) <= history.in_doubt, where

    report = check(kv, live_handles=set(live))
    kinds = {p.type for p in report.problems}
    assert "overlapping-blocks" not in kinds, where
    assert all(p.fixable for p in report.problems), [p for p in report.problems if not p.fixable]
    # A crash loses at most a log line, never half a transaction: only orphans.
    assert kinds <= {"orphaned-address"}, (report.problems, where)
    assert {p.handle for p in report.problems} <= history.in_doubt, where

    result = repair(kv, report)
    assert result.skipped == [] and len(result.fixed) == len(report.problems), result
    print(f"{kills + len(NODES)} workers killed, {len(history.in_doubt)} operations in doubt, "
          f"{len(result.fixed)} orphans repaired, {len(live)} live handles")
    again = check(kv, live_handles=set(live))
    assert again.clean, again.problems
    assert check(kv).clean
    # The live handles' addresses came through intact; nothing else is held.
    assert held_in_blocks(kv) == expected, where
    assert handle_keys(kv) == set(live), where


# -- the pool runs out ----------------------------------------------------------------


def allocate_in_thread(ipam: IPAM, handle: str, node: str):
    """allocate() with a hang guard: returns (Allocation, None) or (None, exception)."""
    box: list = []

    def run():
        try:
            box.append((ipam.allocate(handle, node), None))
        except Exception as err:  # noqa: BLE001 - handed to the test
            box.append((None, err))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(HANG_GUARD)
    assert not thread.is_alive(), f"allocate({handle}) did not return within {HANG_GUARD}s"
    return box[0]


def test_an_exhausted_pool_fails_fast_with_one_line(etcd, kv, tmp_path):
    make_pool(kv, "tiny", cidr="10.9.0.0/28", blockSize=30)  # 4 blocks of 4 = 16 addresses
    fill = tmp_path / "node-a.log"
    finish({"node-a": spawn(etcd, "node-a", fill, ops=16, seed=1, hold=16, alloc_ratio=1.0)})
    history = History({"node-a": fill})
    assert len(history.alloc) == 16 and not history.exhausted and history.done
    assert len(held_in_blocks(kv)) == 16

    for node in ("node-b", "node-a"):  # borrowing finds nothing either
        got, err = allocate_in_thread(IPAM(kv), f"net.{node}-x.eth0", node)
        assert got is None and isinstance(err, PoolExhausted), (got, err)
        assert "\n" not in str(err) and "tiny" in str(err) and node in str(err)
        assert kv.get(keys.handle(f"net.{node}-x.eth0")) is None

    # A worker meeting the full pool logs it and goes on; with nothing of its own to
    # release it just tries again, and ends.
    other = tmp_path / "node-b.log"
    finish({"node-b": spawn(etcd, "node-b", other, ops=5, seed=2, hold=16, alloc_ratio=1.0)})
    history = History({"node-b": other})
    assert [e["op"] for e in history.entries["node-b"]] == ["start"] + ["allocating", "exhausted"] * 5 + ["done"]
    assert "no free address for node 'node-b' in pool(s) tiny" in history.exhausted[0]["error"]
    report = check(kv)
    assert report.clean and report.counts["addressesInUse"] == 16, report


# -- a regression found while writing these tests -------------------------------------


def test_a_pool_edit_does_not_fail_the_next_block_claim(kv):
    """A claim compares the pool's mod revision; it came from a config cache that lives
    1 s and a retry did not refresh it, so after any pool edit every allocation that
    needed a new block lost 64 times and raised Conflict ("etcd is too busy")."""
    make_pool(kv, cidr="10.9.0.0/24")
    ipam = IPAM(kv)
    ipam.allocate("net.a.eth0", "node-1")  # reads (and caches) the pool
    ResourceStore(kv).patch(r.IPPool, "p", {"spec": {"natOutgoing": True}})  # an operator edits it
    got = ipam.allocate("net.b.eth0", "node-2")  # node-2 has no block yet: claims one
    assert got.ips and got.pool == "p"
    assert ipam.stats["conflict"] <= 1  # one lost race against the edit, then the fresh pool
