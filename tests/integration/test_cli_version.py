"""`routedctl version` when only some of what it asks answers (the agent's own row is tested with a
real agent in tests/netns/test_cli_node_diags.py)."""

from __future__ import annotations

import json

import pytest

from routed.version import version
from tests.integration.test_cli import ok
from tests.support.etcd import free_port

pytestmark = pytest.mark.etcd


def test_version_without_an_agent_still_shows_client_and_cluster(etcd):
    dead = f"http://127.0.0.1:{free_port()}"
    rows = [line.split(None, 2) for line in ok(etcd.env(), "version", "--agent", dead).stdout.splitlines()]
    assert rows[1] == ["client", version(), "routedctl"]
    assert rows[2][:2] == ["cluster", "routed/v1"] and rows[2][2].startswith("datastore empty at revision")
    assert rows[3][:2] == ["agent", "unknown"] and f"cannot ask the routed agent at {dead}" in rows[3][2]


def test_version_without_etcd_names_it(tmp_path):
    dead = f"http://127.0.0.1:{free_port()}"
    doc = json.loads(ok({"ROUTED_ETCD_ENDPOINTS": dead}, "-o", "json", "version", "--agent", dead).stdout)
    assert doc["client"] == {"version": version()}
    assert dead in doc["cluster"]["error"] and dead in doc["agent"]["error"]
