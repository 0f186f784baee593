"""Network policy in the lab: pods with labels on two nodes, a Kubernetes NetworkPolicy
applied with routedctl, enforced across nodes, and `routed lab status` showing the pairs
the policy blocks as such (not as failures)."""

from __future__ import annotations

import pytest

from tests.e2e.labutil import LabRun
from tests.support.wait import eventually

pytestmark = [pytest.mark.root, pytest.mark.etcd, pytest.mark.slow]

def test_policy_across_nodes_and_status_marks_blocked_pairs(lab: LabRun):
    lab.run("up", "--nodes", "2", "--racks", "1")
    lab.add_shop((("node1", "web", "web"), ("node2", "cli", "cli"), ("node2", "other", "other")))
    # Each status tries a blocked pair once: wait until the agents have the policy.
    reach = eventually(lambda: (lambda r: r if r["matrix"]["node2/other"]["node1/web"] == "policy" else None)(
        lab.status()["reachability"]), timeout=60, what="the policy enforced on node1")
    m = reach["matrix"]
    assert m["node2/cli"]["node1/web"] is True
    assert m["node2/other"]["node1/web"] == "policy"
    assert m["node1/web"]["node2/other"] is True and m["node1/web"]["node2/cli"] is True
    assert reach["failed"] == 0 and reach["blocked"] == 1, reach
    assert "blocked by policy" in lab.run("status").stdout
    lab.down()
