"""Nodes come back (issue 10.7): a real `routed agent` registers its Node again when
someone removes it, and a real `routed controller` never collects the Node or blocks of
a node whose agent is alive (its liveness lease in etcd), with or without Kubernetes,
while it still collects nodes whose agents are gone. Real etcd, a real kube-apiserver."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from ipam.allocator import IPAM
from routed import resources as r
from routed.datastore import keys
from routed.datastore.resources import ResourceStore
from tests.k8s.k8sutil import affinities, handles, pod_address, pod_handle, pool, routed_node
from tests.support.agent import AgentProcess
from tests.support.etcd import free_port
from tests.support.netns import node_host
from tests.support.wait import eventually

pytestmark = pytest.mark.root

ROUTED = str(Path(sys.executable).with_name("routed"))
NODE_IP = "192.0.2.10/24"
TTL = "3"  # the agent's liveness lease: a killed agent's node is collectable 3 s later


@pytest.fixture
def env(kv, etcd, tmp_path):
    if os.geteuid() != 0:
        pytest.fail("these tests need root (network namespaces)", pytrace=False)
    store = ResourceStore(kv)
    pool(store, "main", "10.71.0.0/16")
    host = node_host(NODE_IP)
    agent = AgentProcess(tmp_path / "agent", etcd.url, host, "node-1", NODE_IP, labels="rack=r1",
                         extra_args=["--liveness-ttl", TTL])
    try:
        yield type("Env", (), {"kv": kv, "etcd": etcd, "store": store, "ipam": IPAM(kv), "agent": agent,
                               "tmp": tmp_path})
    finally:
        agent.stop(signal.SIGKILL)
        host.delete()


class Controller:
    """`routed controller` as the chart runs it, with the API server or without Kubernetes."""

    def __init__(self, workdir: Path, etcd_url: str, kubeconfig: str | None):
        self.health_port = free_port()
        self.log = workdir / "controller.log"
        args = [ROUTED, "controller", "--etcd-endpoints", etcd_url, "--interval", "0.2", "--grace", "0",
                "--health-port", str(self.health_port)]
        env = {k: v for k, v in os.environ.items() if k != "KUBERNETES_SERVICE_HOST"}
        self.proc = subprocess.Popen(args + (["--kubeconfig", kubeconfig] if kubeconfig else []), env=env,
                                     stdout=open(self.log, "ab"), stderr=subprocess.STDOUT)

    def passes(self) -> float:
        if self.proc.poll() is not None:
            raise AssertionError(f"the controller exited with {self.proc.returncode}:\n{self.log.read_text()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/metrics", timeout=2) as resp:
                text = resp.read().decode()
        except OSError:
            return 0
        return next(float(line.split()[1]) for line in text.splitlines()
                    if line.startswith("routed_gc_passes_total "))

    def wait_passes(self, more: int) -> None:
        """`more` whole GC passes from now on."""
        start = self.passes()
        eventually(lambda: self.passes() >= start + more, f"{more} more GC passes", details=self.log.read_text)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def test_agent_registers_its_node_again_when_it_is_removed(env):
    store, kv = env.store, env.kv
    env.agent.start()
    node = eventually(lambda: store.find(r.Node, "node-1"), "the agent's Node")
    doc = node.to_dict()
    doc["spec"]["bgp"]["asNumber"] = 65123  # what an operator set on it
    store.apply(r.parse(doc))
    block = env.ipam.allocate("k8s-pod-network.c1.eth0", "node-1").ips[0]
    owned = affinities(kv, "node-1")
    assert owned
    live = eventually(lambda: kv.get(keys.liveness("node-1")), "the agent's liveness key")
    assert live.lease, "the liveness key must live under the agent's lease"

    for _ in range(2):  # removed twice: also after it came back once
        store.delete(r.Node, "node-1")
        back = eventually(lambda: store.find(r.Node, "node-1"), "the agent to register its Node again",
                          details=lambda: env.agent.log.read_text()[-3000:])
        assert back.spec.bgp.ipv4_address == NODE_IP
        assert back.spec.bgp.as_number == 65123
        assert (back.metadata.labels or {}).get("rack") == "r1"
        assert affinities(kv, "node-1") == owned  # its blocks were never touched
    assert env.ipam.find_block(block) is not None
    assert env.agent.proc.poll() is None


@pytest.mark.parametrize("kubernetes", [True, False], ids=["with-kubernetes", "without-kubernetes"])
def test_controller_keeps_live_agents_nodes_and_collects_dead_ones(env, request, kubernetes):
    kv, store, ipam = env.kv, env.store, env.ipam
    kube = request.getfixturevalue("kube") if kubernetes else None
    # Neither node is in Kubernetes (the API lost node-1's Node, or the node name differs):
    # only the liveness lease tells that node-1's agent runs.
    env.agent.start()
    eventually(lambda: kv.get(keys.liveness("node-1")), "the agent's liveness key")
    pod_address(ipam, "node-1", "ns", "web", "c-web")  # a pod's address on the live node
    routed_node(store, "node-2", "192.0.2.11/24")  # a node whose agent is gone
    ipam.allocate("other.c2.eth0", "node-2")
    ipam.release_handle("other.c2.eth0")
    assert affinities(kv, "node-1") and affinities(kv, "node-2")

    controller = Controller(env.tmp, env.etcd.url, kube.kubeconfig if kube else None)
    try:
        eventually(lambda: store.find(r.Node, "node-2") is None and not affinities(kv, "node-2"),
                   "the dead node-2 to be collected", details=controller.log.read_text)
        controller.wait_passes(3)
        assert store.find(r.Node, "node-1") is not None, controller.log.read_text()
        assert affinities(kv, "node-1")
        if not kubernetes:  # which pods exist only the API knows: nothing of a pod is released
            assert pod_handle("c-web") in handles(kv)

        env.agent.stop(signal.SIGKILL)  # no goodbye: its lease runs out after the TTL
        eventually(lambda: store.find(r.Node, "node-1") is None and not affinities(kv, "node-1"),
                   "node-1 collected once its agent is gone", timeout=30, details=controller.log.read_text)
    finally:
        controller.stop()
