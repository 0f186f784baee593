"""Scale on this machine: 8 nodes in 2 racks and 200 pods come up and reach each other."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from routed.lab.status import ping
from tests.e2e.labutil import up_retrying

pytestmark = [pytest.mark.slow, pytest.mark.root, pytest.mark.etcd]


def test_eight_nodes_and_two_hundred_pods(lab):
    started = time.monotonic()
    up_retrying(lab, "--nodes", "8", "--racks", "2", "--pods", "25", "--no-ping")
    pods = lab.state()["pods"]
    assert len(pods) == 200 and len({p["ip"] for p in pods}) == 200
    # Every pod pings one pod on each other node (1,400 pairs): every node pair, both
    # directions, many times over, in bounded time; the full matrix is 39,800 pairs.
    by_node: dict[str, list[dict]] = {}
    for p in pods:
        by_node.setdefault(p["node"], []).append(p)
    pairs = [(src, by_node[other][i % len(by_node[other])])
             for i, src in enumerate(pods) for other in sorted(by_node) if other != src["node"]]

    def reaches(pair) -> bool:
        src, dst = pair
        return ping(src["netns"], dst["ip"]) or ping(src["netns"], dst["ip"])  # one retry: ARP on a busy box

    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(reaches, pairs))
    failed = [(s["name"], s["node"], d["ip"]) for (s, d), ok in zip(pairs, results) if not ok]
    assert not failed, f"{len(failed)} of {len(pairs)} pairs unreachable, e.g. {failed[:5]}\n{lab.logs()}"
    print(f"8 nodes, 200 pods, {len(pairs)} cross-node pairs reachable: {time.monotonic() - started:.1f} s "
          "from `lab up` to all reachable")
