"""The datastore's layout version against a real etcd: agent, controller and routedctl
meeting a layout they do not know refuse in one line; the first writer records it."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from routed.datastore import keys
from tests.integration.test_cli_ipam import fails, ok
from tests.support.etcd import free_port

pytestmark = pytest.mark.etcd

BIN = Path(__file__).resolve().parents[2] / ".venv" / "bin"
POOL = "apiVersion: routed.io/v1\nkind: IPPool\nmetadata: {name: p}\nspec: {cidr: 10.70.0.0/16}\n"


def _routed(etcd, *args):
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("ROUTED_")}, **etcd.env()}
    return subprocess.run([str(BIN / "routed"), *args], env=env, capture_output=True, text=True, timeout=120)


def test_routedctl_refuses_a_layout_it_does_not_know(etcd, kv):
    kv.put(keys.SCHEMA, b"3")
    line = fails(etcd.env(), "get", "ippools")
    assert "layout 3" in line and "upgrade" in line, line


def test_the_first_writing_routedctl_records_the_layout(etcd, kv, tmp_path):
    ok(etcd.env(), "get", "ippools")
    assert kv.get(keys.SCHEMA) is None  # reading writes nothing
    (tmp_path / "pool.yaml").write_text(POOL)
    ok(etcd.env(), "apply", "-f", str(tmp_path / "pool.yaml"))
    assert kv.get(keys.SCHEMA).value == b"2"


def test_the_agent_refuses_a_layout_it_does_not_know(etcd, kv, tmp_path):
    kv.put(keys.SCHEMA, b"7")
    # The netns does not exist: were the layout not checked first, the agent would fail on it instead.
    proc = _routed(etcd, "agent", "--node-name", "n1", "--netns", "rt-schema-none",
                   "--cni-socket", str(tmp_path / "cni.sock"), "--state-dir", str(tmp_path),
                   "--spool-dir", str(tmp_path / "spool"), "--health-port", str(free_port()), "--no-bgp")
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and "layout 7" in lines[-1] and "Traceback" not in proc.stderr, proc.stderr


def test_the_controller_refuses_a_layout_it_does_not_know(etcd, kv):
    kv.put(keys.SCHEMA, b"7")
    proc = _routed(etcd, "controller", "--kube-server", f"http://127.0.0.1:{free_port()}",
                   "--health-port", str(free_port()))
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and "layout 7" in lines[-1] and "Traceback" not in proc.stderr, proc.stderr
