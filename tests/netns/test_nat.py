"""natOutgoing through a real agent: pods reach a host outside every pool."""

from __future__ import annotations

import os
import time

import pytest

from routed import resources as r
from routed.datastore.resources import ResourceStore
from routed.dataplane import nat
from tests.support.agent import AgentProcess, cni
from tests.support.netns import Netns, node_host

pytestmark = pytest.mark.root


def test_rendered_rules_skip_traffic_between_pools():
    text = nat.render(["10.1.0.0/16"], ["10.1.0.0/16", "10.2.0.0/16"])
    lines = text.splitlines()
    assert lines.index("-A ROUTED-NAT-OUTGOING -s 10.1.0.0/16 -d 10.2.0.0/16 -j RETURN") < \
        lines.index("-A ROUTED-NAT-OUTGOING -s 10.1.0.0/16 -j MASQUERADE")


def test_pods_of_a_nat_pool_reach_the_outside(tmp_path, etcd, root):
    host = node_host("192.0.2.10/24")
    outside = Netns("ext")
    pod = Netns("pod")
    agent = None
    try:
        # "The internet": one address, a route back only to the node's subnet, not to the pods.
        host.run("ip", "link", "del", "uplink0")
        host.run("ip", "link", "add", "uplink0", "type", "veth", "peer", "name", "ext0", "netns", outside.name)
        host.run("ip", "addr", "add", "192.0.2.10/24", "dev", "uplink0")
        host.run("ip", "link", "set", "uplink0", "up")
        host.run("ip", "route", "add", "default", "via", "192.0.2.1")
        outside.run("ip", "addr", "add", "192.0.2.1/24", "dev", "ext0")
        outside.run("ip", "addr", "add", "198.51.100.7/32", "dev", "lo")
        outside.run("ip", "link", "set", "ext0", "up")
        store = ResourceStore(etcd.client())
        store.create(r.parse({"apiVersion": "routed.io/v1", "kind": "IPPool", "metadata": {"name": "p"},
                              "spec": {"cidr": "10.70.0.0/16", "natOutgoing": True}}))
        agent = AgentProcess(tmp_path / "agent", etcd.url, host, "node-1", "192.0.2.10/24").start()
        code, result, raw = cni("ADD", agent.conf(), netns=pod.path, container="nat1")
        assert code == 0, raw
        deadline = time.monotonic() + 15
        while "MASQUERADE" not in host.run("iptables-save", "-t", "nat").stdout:
            assert time.monotonic() < deadline, "natOutgoing rules never appeared"
            time.sleep(0.2)
        assert pod.run("ping", "-c1", "-W2", "198.51.100.7", check=False).returncode == 0
        # Turning natOutgoing off removes the rules, and the outside can no longer answer.
        store.patch(r.IPPool, "p", {"spec": {"natOutgoing": False}})
        deadline = time.monotonic() + 15
        while nat.CHAIN in host.run("iptables-save", "-t", "nat").stdout:
            assert time.monotonic() < deadline, "natOutgoing rules were not removed"
            time.sleep(0.2)
        assert pod.run("ping", "-c1", "-W1", "198.51.100.7", check=False).returncode != 0
        cni("DEL", agent.conf(), netns=pod.path, container="nat1")
    finally:
        if agent is not None:
            agent.stop()
        for ns in (pod, outside, host):
            ns.delete()


def test_a_hung_iptables_fails_the_pass_instead_of_stalling_it(tmp_path, monkeypatch, root):
    """An iptables-restore that never returns (a held xtables lock, a wedged kernel module)
    fails the pass with a clear error; the agent's loop counts it and tries again later."""
    from routed.dataplane.errors import DataplaneError

    stub, pidfile = tmp_path / "stub-bin", tmp_path / "hung.pid"
    stub.mkdir()
    (stub / "iptables-restore").write_text(f"#!/bin/sh\necho $$ > {pidfile}\nexec sleep 30\n")
    (stub / "iptables-restore").chmod(0o755)
    monkeypatch.setenv("PATH", f"{stub}:{os.environ.get('PATH', '/usr/sbin:/usr/bin')}")
    monkeypatch.setattr(nat, "TIMEOUT", 1.0)
    host = Netns("nat")
    try:
        with pytest.raises(DataplaneError, match=r"iptables-restore .*did not finish within 1\.0 s"):
            nat.sync(host.name, ["10.1.0.0/16"], ["10.1.0.0/16"])
        with pytest.raises(ProcessLookupError):  # killed and reaped, not left behind
            os.kill(int(pidfile.read_text()), 0)
    finally:
        host.delete()
