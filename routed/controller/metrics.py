"""The controller's view of IPAM as metrics: per pool, and per node holding blocks.

The cluster-wide numbers come from the controller (one leader per cluster), not from
each agent: summed over agents they would count every block once per node. They are
read from one etcd snapshot when Prometheus scrapes (two range requests).
"""

from __future__ import annotations

from collections import Counter

from ipam.usage import Snapshot, block_usage, borrowed, pool_usage
from routed.runtime.metrics import Family


def ipam_families(snap: Snapshot) -> list[Family]:
    pools = pool_usage(None, snap)
    blocks, in_use, free = Counter(), Counter(), Counter()  # (pool, node) -> n
    for row in block_usage(None, snap):
        where = (row["pool"], row["node"])
        blocks[where] += 1
        in_use[where] += row["inUse"]
        free[where] += row["free"]
    lent = Counter(row["node"] for row in borrowed(None, snap))

    def by_pool(key: str) -> list:
        return [({"pool": p["name"]}, p[key]) for p in pools]

    def by_node(counts: Counter) -> list:
        return [({"pool": pool, "node": node}, n) for (pool, node), n in sorted(counts.items())]

    return [Family("routed_ipam_pool_size", "gauge", "Addresses in the pool's CIDR, by pool.", by_pool("total")),
            Family("routed_ipam_pool_addresses_in_use", "gauge", "Addresses allocated from the pool.",
                   by_pool("inUse")),
            Family("routed_ipam_pool_addresses_free", "gauge", "Addresses of the pool not allocated (also those in "
                   "no block yet).", by_pool("free")),
            Family("routed_ipam_blocks", "gauge", "Blocks by pool and the node they are affine to (node \"\": "
                   "none; pool \"\": a block no pool holds any more).", by_node(blocks)),
            Family("routed_ipam_addresses_in_use", "gauge", "Addresses allocated in the blocks affine to a node, "
                   "by pool and node.", by_node(in_use)),
            Family("routed_ipam_addresses_free", "gauge", "Addresses free in the blocks affine to a node, by pool "
                   "and node.", by_node(free)),
            Family("routed_ipam_borrowed_addresses", "gauge", "Addresses a node holds in another node's block, by "
                   "the node holding them.", [({"node": node}, n) for node, n in sorted(lent.items())])]
