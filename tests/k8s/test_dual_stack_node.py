"""Dual stack from Kubernetes (issue 15): an agent started without --node-ip/--node-ip6
registers both of its Kubernetes Node's InternalIPs, each with the prefix of the host
interface holding it; a hostile IPv6 InternalIP is refused in one line. Real etcd, a real
kube-apiserver, a real agent."""

from __future__ import annotations

import os

import pytest

from routed import resources as r
from routed.datastore.resources import ResourceStore
from tests.support.agent import AgentProcess
from tests.support.netns import node_host

pytestmark = pytest.mark.root

V4, V6 = "192.0.2.10", "2001:db8:5::10"


@pytest.fixture
def host():
    if os.geteuid() != 0:
        pytest.fail("these tests need root (network namespaces)", pytrace=False)
    ns = node_host(f"{V4}/24")
    ns.run("ip", "-6", "addr", "add", f"{V6}/64", "dev", "uplink0", "nodad")
    try:
        yield ns
    finally:
        ns.delete()


def test_the_agent_registers_both_internal_ips_of_its_kubernetes_node(tmp_path, etcd, kv, kube, host):
    kube.add_node("ds-node", internal_ip=[V4, V6])
    agent = AgentProcess(tmp_path / "agent", etcd.url, host, "ds-node", "",
                         extra_args=["--kubeconfig", kube.kubeconfig]).start()
    try:
        bgp = ResourceStore(kv).get(r.Node, "ds-node").spec.bgp
        assert (bgp.ipv4_address, bgp.ipv6_address) == (f"{V4}/24", f"{V6}/64")
    finally:
        agent.stop()


@pytest.mark.parametrize("internal", ["fe80::10", "ff02::1", "::1"])
def test_a_hostile_ipv6_internal_ip_is_refused_in_one_line(tmp_path, etcd, kube, host, internal):
    kube.add_node("ds-bad", internal_ip=[V4, internal])
    agent = AgentProcess(tmp_path / "agent", etcd.url, host, "ds-bad", "",
                         extra_args=["--kubeconfig", kube.kubeconfig])
    with pytest.raises(RuntimeError) as err:
        agent.start()
    text = str(err.value)
    assert f"the Kubernetes Node's IPv6 InternalIP '{internal}/128'" in text and "Traceback" not in text, text
