"""Network policy in the lab: pods with labels on two nodes, a Kubernetes NetworkPolicy
applied with routedctl, enforced across nodes, and `routed lab status` showing the pairs
the policy blocks as such (not as failures)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.labutil import LabRun
from tests.support.wait import eventually

pytestmark = [pytest.mark.root, pytest.mark.etcd, pytest.mark.slow]

ROUTEDCTL = str(Path(sys.executable).with_name("routedctl"))
POLICY = """\
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {team: shop}}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-from-cli, namespace: shop}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: cli}}}]
"""


def test_policy_across_nodes_and_status_marks_blocked_pairs(lab: LabRun):
    lab.run("up", "--nodes", "2", "--racks", "1")
    for node, name, app in (("node1", "web", "web"), ("node2", "cli", "cli"), ("node2", "other", "other")):
        lab.run("pod", "add", node, name, "--namespace", "shop", "--labels", f"app={app}")
    env = {**lab.env, "ROUTED_ETCD_ENDPOINTS": lab.state()["etcd"]["endpoint"]}
    applied = subprocess.run([ROUTEDCTL, "apply", "-f", "-"], input=POLICY, env=env, capture_output=True,
                             text=True, timeout=60)
    assert applied.returncode == 0, applied.stderr
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
