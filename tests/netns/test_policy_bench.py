"""`python -m bench policy_latency` runs end to end (2 nodes, 2 applies) and prints its
figures with their references; the figures themselves are never asserted."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.root

ROOT = Path(__file__).resolve().parents[2]


def test_the_apply_to_enforcement_bench_runs_and_prints_ratios():
    if os.geteuid() != 0:
        pytest.fail("this test needs root (network namespaces)", pytrace=False)
    env = {**os.environ, "ROUTED_BENCH_POLICY_NODES": "2", "ROUTED_BENCH_POLICY_APPLIES": "2"}
    proc = subprocess.run([sys.executable, "-m", "bench", "policy_latency"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for line in ("apply -> enforced on every node p50", "apply -> enforced on every node p99",
                 "one node p50 (vs one watcher)", "beyond the floor p50 (vs kube-router restore)"):
        assert re.search(re.escape(line) + r" +[\d.]+ ms +reference +[\d.]+ ms +ratio [\d.]+x", proc.stdout), \
            proc.stdout
    assert "2 nodes" in proc.stdout and "2 applies" in proc.stdout
