"""BGP: how fast a new block on one node becomes a route on another (convergence).

A two-node ExaBGP mesh of real agents and speakers in namespaces. Each run claims a
new block for node A (filling its current one first), and times until node B's kernel
has the proto-202 route to it. The whole path is measured: etcd watch on A, announce
through bgp.helper and ExaBGP, BGP UPDATE, ExaBGP on B, the agent, the bulk route sync.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

from bench.common import note, private_etcd

RUNS = 15


def main() -> None:
    from ipam.allocator import IPAM
    from routed.datastore import keys
    from tests.support.cluster import Cluster

    with private_etcd() as etcd:
        cluster = Cluster(Path(tempfile.mkdtemp(prefix="routed-bench-bgp-")), etcd)
        try:
            cluster.apply({"kind": "IPPool", "metadata": {"name": "pods"},
                           "spec": {"cidr": "10.244.0.0/16", "blockSize": 30}})  # 4 addresses a block
            a, b = cluster.add_node("a", 1), cluster.add_node("b", 2)
            cluster.wait(lambda: cluster.sessions_up(b, 1), what="the session between a and b")
            ipam = IPAM(cluster.kv)
            times = []
            for run in range(RUNS):
                # Allocate until a new block is claimed: blocks hold 4 addresses, so it
                # takes at most 5 allocations, and the last one is what we time from.
                before = set(cluster.kv.keys(keys.affinity("a")))
                for i in range(5):
                    ipam.allocate(f"bench.r{run}-{i}.eth0", "a")
                    claimed_at = time.monotonic()
                    new = set(cluster.kv.keys(keys.affinity("a"))) - before
                    if new:
                        break
                block = str(keys.cidr_from_segment(keys.last_segment(new.pop())))
                while f"{block} via {a.ip}" not in b.routes():
                    if time.monotonic() - claimed_at > 10:
                        raise RuntimeError(f"block {block} never reached node b")
                    time.sleep(0.002)
                times.append(time.monotonic() - claimed_at)
            median = statistics.median(times)
            note(f"   convergence, new block on node a -> route on node b: median {median * 1000:.0f} ms, "
                 f"p90 {sorted(times)[int(len(times) * 0.9)] * 1000:.0f} ms, max {max(times) * 1000:.0f} ms "
                 f"over {RUNS} runs; target <= 500 ms: {'met' if median <= 0.5 else 'MISSED'}")
        finally:
            cluster.close()
