"""etcd failover for the failure that matters: a member that stops answering.

A three-member etcd (Debian's etcd 3.4) on loopback; one member is SIGSTOPped, which
keeps its sockets open and answers nothing, as a black-holed host would (no RST). Reads,
writes, IPAM allocations, routedctl and a watch must carry on through the other two,
each call bounded by the client's own deadline (no test waits on a clock of its own).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from ipam.allocator import IPAM
from routed import resources as r
from routed.datastore.etcd import EtcdKV
from routed.datastore.resources import ResourceStore
from tests.conftest import _require
from tests.support.etcd import ETCD, EtcdCluster
from tests.support.wait import eventually

pytestmark = pytest.mark.etcd

ROUTEDCTL = str(Path(__file__).resolve().parents[2] / ".venv" / "bin" / "routedctl")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    _require(os.access(ETCD, os.X_OK), "etcd (Debian package etcd-server)")
    cluster = EtcdCluster(tmp_path_factory.mktemp("etcd-cluster"))
    try:
        yield cluster.start()
    finally:
        cluster.stop()


@pytest.fixture
def client(cluster):
    kv = EtcdKV(cluster.urls, timeout=5.0)  # the agent's budget per call
    try:
        yield kv
    finally:
        kv.close()


def _next_event(watch, key):
    def seen():
        event = watch.get(timeout=0.2)
        return event if event is not None and event.kv.key == key else None
    return eventually(seen, f"the watch to deliver {key}", timeout=30)


@pytest.mark.parametrize("which", ["connected", "other"])
def test_a_stopped_member_stalls_nothing(cluster, client, which, tmp_path):
    store = ResourceStore(client)
    pool = f"p-{which}"
    store.create(r.parse({"apiVersion": "routed.io/v1", "kind": "IPPool", "metadata": {"name": pool},
                          "spec": {"cidr": "10.60.0.0/16" if which == "connected" else "10.61.0.0/16",
                                   "blockSize": 28}}))
    ipam = IPAM(client)
    ipam.allocate(f"net.{which}-0.eth0", "node-1", pools=[pool])
    watch = client.watch(f"/w/{which}/", client.revision() + 1)
    try:
        client.put(f"/w/{which}/before", b"1")
        _next_event(watch, f"/w/{which}/before")
        connected = cluster.member(client.endpoint)
        stopped = connected if which == "connected" else next(m for m in cluster.members if m is not connected)
        stopped.pause()
        try:
            # Each of these fails (DatastoreUnavailable) if the client waits on the stopped member.
            assert client.get(f"/w/{which}/before").value == b"1"
            client.put(f"/w/{which}/during", b"2")
            allocation = ipam.allocate(f"net.{which}-1.eth0", "node-1", pools=[pool])
            assert allocation.ips and not allocation.reused
            assert _next_event(watch, f"/w/{which}/during").kv.value == b"2"
            env = {**os.environ, "ROUTED_ETCD_ENDPOINTS": ",".join(cluster.urls)}
            for _ in range(3):  # routedctl starts on a random member: give each a chance to be the stopped one
                proc = subprocess.run([ROUTEDCTL, "get", "ippool", pool], env=env, capture_output=True,
                                      text=True, timeout=60)
                assert proc.returncode == 0, proc.stderr
            if which == "connected":
                assert client.endpoint != stopped.url
        finally:
            stopped.resume()
        # Nothing was delivered twice, and the watch follows on.
        client.put(f"/w/{which}/after", b"3")
        assert _next_event(watch, f"/w/{which}/after").kv.value == b"3"
    finally:
        watch.cancel()


def test_clients_spread_over_the_endpoints(cluster):
    clients = [EtcdKV(cluster.urls) for _ in range(30)]
    try:
        used = {kv.endpoint for kv in clients}
    finally:
        for kv in clients:
            kv.close()
    assert len(used) > 1, "every client starts on the same etcd member"


def test_a_watch_alone_leaves_a_member_that_went_silent(cluster, client):
    """No unary call notices the stopped member here: the watch itself must."""
    watch = client.watch("/w/alone/", client.revision() + 1)
    stopped = cluster.member(client.endpoint)
    # The writer uses the two other members: if the stopped one was the leader, a write in
    # flight during the election is lost and goes again to the other member.
    writer = EtcdKV([u for u in cluster.urls if u != stopped.url])
    try:
        writer.put("/w/alone/before", b"1")
        _next_event(watch, "/w/alone/before")
        stopped.pause()
        try:
            writer.put("/w/alone/during", b"2")
            assert _next_event(watch, "/w/alone/during").kv.value == b"2"
        finally:
            stopped.resume()
    finally:
        watch.cancel()
        writer.close()
