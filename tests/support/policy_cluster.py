"""The policy cluster of the real-traffic policy tests, shared by tests/netns/test_policy.py
and the VM lane's tests/vm/guest_policy_sctp.py (the same machinery on a kernel with SCTP):
a real agent and etcd, nine pods (namespaces x, y, z × pods a, b, c) added through the CNI
shim, a prober in every pod serving 80/81 over TCP, UDP (and SCTP where the kernel has it);
install() applies a conformance case and waits for the agent's table, matrix() probes
every pair."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import pytest

from routed import resources as r
from routed.datastore import keys
from routed.datastore.resources import ResourceStore
from routed.dataplane.names import host_veth_name
from routed.policy import nft
from tests.support import netpol
from tests.support.agent import AgentProcess, cni
from tests.support.etcd import EtcdServer
from tests.support.netns import Netns, node_host
from tests.support.wait import eventually

NODE_IP = "192.0.2.10"
PROBER = str(Path(__file__).resolve().parent / "netpol_pod.py")
POLICY_KINDS = (r.KubeNetworkPolicy, r.NetworkPolicy, r.GlobalNetworkPolicy)
# How long to wait for etcd, the agent and a policy to be ready: waits, not timed asserts.
# Generous because the same cluster runs in the VM lane (tests/vm/guest_policy_sctp.py),
# where qemu without KVM on a busy machine takes a minute to start the agent.
READY_TIMEOUT = 180.0


def has_sctp() -> bool:
    try:
        socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_SCTP).close()
        return True
    except OSError:
        return False


class Pod:
    def __init__(self, name: str, netns: Netns, ports: tuple[int, ...] = ()):
        self.name, self.netns = name, netns
        self.proc = subprocess.Popen(["ip", "netns", "exec", netns.name, "/usr/bin/python3", "-u", PROBER,
                                      *map(str, ports)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "ready"

    def probe(self, proto: str, port: int, addrs: list[str], timeout: float = 1.0) -> dict[str, bool]:
        self.ask(proto, port, addrs, timeout)
        return self.answer()

    def ask(self, proto: str, port: int, addrs: list[str], timeout: float = 1.0) -> None:
        self.proc.stdin.write(f"probe {proto} {port} {timeout} {' '.join(addrs)}\n")
        self.proc.stdin.flush()

    def answer(self) -> dict[str, bool]:
        return {k: v == "1" for k, v in (item.split("=") for item in self.proc.stdout.readline().split())}

    def stop(self):
        self.proc.kill()
        self.proc.wait()


@contextmanager
def policy_cluster(workdir: Path):
    """The cluster: etcd, the node's host netns and agent, and the nine pods with their
    probers; everything removed at the end, also on failure."""
    if os.geteuid() != 0:
        pytest.fail("these tests need root (network namespaces)", pytrace=False)
    etcd = EtcdServer(workdir / "etcd").start(timeout=READY_TIMEOUT)
    host = node_host(f"{NODE_IP}/24")
    agent, pods = None, {}
    try:
        kv = etcd.client(timeout=30)  # the VM lane's etcd once took > 5 s to answer a put
        store = ResourceStore(kv)
        store.create(r.parse({"apiVersion": "routed.io/v1", "kind": "IPPool", "metadata": {"name": "main"},
                              "spec": {"cidr": "10.66.0.0/16"}}))
        agent = AgentProcess(workdir / "agent", etcd.url, host, "node-1", f"{NODE_IP}/24").start(timeout=READY_TIMEOUT)
        for name in netpol.ALL:
            ns, pod = name.split("/")
            netns = Netns("pol")
            # Labels as the lab passes them (runtimeConfig), there being no Kubernetes API here.
            conf = agent.conf(runtimeConfig={"IPs": [netpol.address(name) + "/32"],
                                             "labels": netpol.pod_labels(name)})
            code, _, raw = cni("ADD", conf, container=f"c-{ns}-{pod}", netns=netns.path, pod=(ns, pod))
            assert code == 0, raw
            record = json.loads(kv.get(keys.workload("node-1", ns, pod)).value)
            assert record["labels"] == netpol.pod_labels(name) and record["interface"] == host_veth_name(ns, pod)
            pods[name] = Pod(name, netns)
        yield SimpleNamespace(etcd=etcd, kv=kv, store=store, host=host, agent=agent, pods=pods)
    finally:
        for p in pods.values():
            p.stop()
            p.netns.delete()
        if agent:
            agent.stop()
        host.delete()
        etcd.stop()


def _table_comment(host) -> str:
    out = host.run("nft", "list", "table", "inet", nft.TABLE, check=False).stdout
    return next((line.strip() for line in out.splitlines() if line.strip().startswith("comment ")), "")


def _set_labels(cluster, case: netpol.Case) -> None:
    """A case's label changes and the named ports, which the agent's pod cache would give
    it (this test runs without a Kubernetes API), written into the workload records."""
    ports = [[n, netpol.PROTOS[p], port] for n, p, port in netpol.named_ports()]
    for name in netpol.ALL:
        ns, pod = name.split("/")
        key = keys.workload("node-1", ns, pod)
        doc = json.loads(cluster.kv.get(key).value)
        want = {**netpol.pod_labels(name), **case.pod_labels.get(name, {})}
        if doc["labels"] != want or doc["ports"] != ports:
            doc["labels"], doc["ports"] = want, ports
            cluster.kv.put(key, json.dumps(doc).encode())


def install(cluster, case: netpol.Case) -> None:
    store = cluster.store
    for cls in POLICY_KINDS:
        for p in store.list(cls):
            store.delete(cls, p.name, namespace=p.namespace)
    for ns in netpol.NAMESPACES:
        store.apply(r.parse({"apiVersion": "v1", "kind": "Namespace",
                             "metadata": {"name": ns, "labels": {"ns": ns, **case.namespace_labels.get(ns, {})}}}))
    _set_labels(cluster, case)
    for doc in case.policies:
        store.create(r.parse(doc))
    # The agent has it when its table carries the digest of a rendering of the same state.
    from routed.policy.enforcer import PolicyEnforcer

    text = PolicyEnforcer(cluster.kv, store, "node-1", None).desired().render()
    want = next(line.strip() for line in text.splitlines() if line.strip().startswith("comment "))
    eventually(lambda: _table_comment(cluster.host) == want, timeout=READY_TIMEOUT,
               what=f"policy of {case.name} programmed",
               details=lambda: f"want {want}, table {_table_comment(cluster.host)}\n"
                               + cluster.agent.log.read_text()[-2000:])


def _ask_all(cluster, probe: netpol.Probe, targets: dict[str, list[str]], timeout: float) -> dict[str, dict]:
    """Every source pod probes its targets at the same time: a matrix costs one probe
    timeout, not one per pod (it matters in the VM, where everything is slow)."""
    for src, addrs in targets.items():
        cluster.pods[src].ask(probe.protocol, probe.port, addrs, timeout)
    return {src: cluster.pods[src].answer() for src in targets}


def matrix(cluster, probe: netpol.Probe) -> list[str]:
    others = {src: [d for d in netpol.ALL if d != src] for src in cluster.pods}
    got = _ask_all(cluster, probe, {src: [netpol.address(d) for d in ds] for src, ds in others.items()}, 1.0)
    # A pair that should answer but did not is asked once more with time to spare: a busy
    # machine (or the VM's emulated CPU) is slow, not a policy. A pair that should not
    # answer is never retried: one answer is a failure.
    late = {src: [netpol.address(d) for d in ds if probe.expected.m[(src, d)] and not got[src][netpol.address(d)]]
            for src, ds in others.items()}
    for src, again in _ask_all(cluster, probe, {s: a for s, a in late.items() if a}, 5.0).items():
        got[src].update(again)
    return [f"{src}->{dst} {probe.port}/{probe.protocol}: expected {probe.expected.m[(src, dst)]}, "
            f"got {got[src][netpol.address(dst)]}"
            for src, ds in others.items() for dst in ds
            if got[src][netpol.address(dst)] != probe.expected.m[(src, dst)]]
