"""The GC controller against real etcd and a real kube-apiserver: deleted nodes' blocks and
routed Nodes, deleted pods' addresses (never a live pod's, also under a race), and
leader election through an etcd lease (in-process and as real `routed controller`
processes)."""

from __future__ import annotations

import ipaddress
import os
import signal
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import pytest

from ipam.allocator import IPAM
from ipam.blockmath import handle_id
from routed import resources as r
from routed.controller.gc import GarbageCollector
from routed.controller.leader import LeaderElector
from routed.datastore import keys
from routed.datastore.resources import ResourceStore
from tests.k8s.k8sutil import (
    affinities, block_of, handles, kube_client, pod_address, pod_handle, pool, routed_node)
from tests.support.etcd import free_port
from tests.support.wait import eventually

ROUTED = str(Path(sys.executable).with_name("routed"))


class Clock:
    """A hand-moved clock: grace periods without waiting (no timed assertions)."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def env(kv, kube):
    store = ResourceStore(kv)
    pool(store, "main", "10.70.0.0/16")
    return type("Env", (), {"kv": kv, "store": store, "kube": kube, "ipam": IPAM(kv),
                            "client": kube_client(kube)})


def gc_for(env, grace=0.0, clock=None) -> GarbageCollector:
    return GarbageCollector(env.kv, env.client, grace=grace, **({"clock": clock} if clock else {}))


def ip_of(allocation) -> ipaddress.IPv4Address:
    return allocation.ips[0]


# -- nodes ---------------------------------------------------------------------------------------

def test_deleted_node_releases_its_blocks_and_routed_node_but_never_a_reflector(env):
    kube, store, ipam, kv = env.kube, env.store, env.ipam, env.kv
    for name, ip in (("node-a", "192.0.2.1/24"), ("node-b", "192.0.2.2/24")):
        kube.add_node(name)
        routed_node(store, name, ip)
    # reflectors as the chart registers them: routed Nodes with no Kubernetes Node
    routed_node(store, "rr-1", "192.0.2.250/24", cluster_id="244.0.0.1")
    routed_node(store, "rr-2", "192.0.2.251/24", labels={"routed.io/route-reflector": "true"})
    kube.add_namespace("ns")
    kube.add_pod("ns", "busy", node="node-a")
    busy = pod_address(ipam, "node-a", "ns", "busy", "c-busy")
    # a second block for node-a, emptied again: an empty affine block
    ipam.allocate("other.x.eth0", "node-a", num=64)
    freed = ipam.held_by("other.x.eth0")
    ipam.release_handle("other.x.eth0")
    on_b = pod_address(ipam, "node-b", "ns", "b-pod", "c-b")
    kube.add_pod("ns", "b-pod", node="node-b")
    assert len(affinities(kv, "node-a")) == 2

    kube.delete("nodes", "node-a")
    gc = gc_for(env)
    assert gc.run_once().nodes == []  # seen missing once: a suspicion, nothing released
    assert len(affinities(kv, "node-a")) == 2 and store.find(r.Node, "node-a") is not None
    assert gc.run_once().nodes == ["node-a"]

    assert affinities(kv, "node-a") == set()
    assert block_of(kv, freed[0]) is None  # the empty block is deleted
    assert block_of(kv, ip_of(busy)) == (None, 1)  # the busy block stays, owned by no node
    assert store.find(r.Node, "node-a") is None
    assert store.find(r.Node, "node-b") is not None and len(affinities(kv, "node-b")) == 1
    assert store.find(r.Node, "rr-1") is not None and store.find(r.Node, "rr-2") is not None
    assert pod_handle("c-busy") in handles(kv) and pod_handle("c-b") in handles(kv)
    assert ipam.held_by(pod_handle("c-b")) == on_b.ips

    # the node's pod goes too: its address is released, then its block (no owner, empty)
    kube.delete("pods", "busy", "ns")
    assert gc.run_once().handles == []
    result = gc.run_once()
    assert result.handles == [pod_handle("c-busy")]
    assert block_of(kv, ip_of(busy)) is None and str(ipaddress.ip_network(f"{ip_of(busy)}/26", strict=False)) \
        in result.blocks
    assert gc.run_once() == type(result)()  # nothing left to do


def test_node_release_waits_for_the_grace_period(env):
    env.kube.add_node("node-a")
    routed_node(env.store, "node-a", "192.0.2.1/24")
    pod_address(env.ipam, "node-a", "ns", "p", "c-p")
    env.kube.delete("nodes", "node-a")
    clock = Clock()
    gc = gc_for(env, grace=300, clock=clock)
    for _ in range(3):
        assert gc.run_once().nodes == []
        clock.now += 100  # 0, 100, 200 seconds: still within the grace period
    assert gc.run_once().nodes == ["node-a"]  # 300 seconds after it was first missed
    assert affinities(env.kv, "node-a") == set()


def test_node_back_in_kubernetes_is_forgiven(env):
    env.kube.add_node("node-a")
    routed_node(env.store, "node-a", "192.0.2.1/24")
    pod_address(env.ipam, "node-a", "ns", "p", "c-p")
    env.kube.delete("nodes", "node-a")
    gc = gc_for(env)
    gc.run_once()
    env.kube.add_node("node-a")  # it came back (re-registered) before the next pass
    assert gc.run_once().nodes == []
    env.kube.delete("nodes", "node-a")
    assert gc.run_once().nodes == []  # a new suspicion: one sighting is not enough
    assert len(affinities(env.kv, "node-a")) == 1 and env.store.find(r.Node, "node-a") is not None


def test_node_with_affinities_but_no_routed_node_is_released(env):
    pod_address(env.ipam, "ghost", "ns", "p", "c-p")  # its routed Node was deleted by hand
    gc = gc_for(env)
    gc.run_once()
    assert gc.run_once().nodes == ["ghost"]
    assert affinities(env.kv, "ghost") == set()


# -- pods ----------------------------------------------------------------------------------------

def test_deleted_pod_is_released_after_two_passes_and_live_pods_never(env):
    kube, kv = env.kube, env.kv
    kube.add_node("node-a")
    for name in ("live-1", "live-2", "gone"):
        kube.add_pod("ns", name, node="node-a")
        pod_address(env.ipam, "node-a", "ns", name, f"c-{name}")
    same_name_elsewhere = pod_address(env.ipam, "node-a", "other-ns", "live-1", "c-other")
    kube.delete("pods", "gone", "ns")
    gc = gc_for(env)
    assert gc.run_once().handles == []
    assert gc.run_once().handles == sorted([pod_handle("c-gone"), pod_handle("c-other")])
    for _ in range(3):
        assert gc.run_once().handles == []
    assert handles(kv) == {pod_handle("c-live-1"), pod_handle("c-live-2")}
    assert env.ipam.held_by(pod_handle("c-other")) == []
    assert block_of(kv, ip_of(same_name_elsewhere)) == ("host:node-a", 2)


def test_pod_missing_on_only_one_pass_survives(env):
    """A static pod's mirror (or any pod) the API does not show for one pass keeps its address."""
    env.kube.add_node("node-a")
    allocation = pod_address(env.ipam, "node-a", "kube-system", "static-web", "c-static")
    gc = gc_for(env)
    assert gc.run_once().handles == []  # the mirror pod is not there yet
    env.kube.add_pod("kube-system", "static-web", node="node-a")
    for _ in range(3):
        assert gc.run_once().handles == []
    assert env.ipam.held_by(pod_handle("c-static")) == allocation.ips
    # gone, back, gone: every reappearance starts the count over
    env.kube.delete("pods", "static-web", "kube-system")
    assert gc.run_once().handles == []
    env.kube.add_pod("kube-system", "static-web", node="node-a")
    assert gc.run_once().handles == []
    env.kube.delete("pods", "static-web", "kube-system")
    assert gc.run_once().handles == []
    assert gc.run_once().handles == [pod_handle("c-static")]


def test_pod_release_waits_for_the_grace_period(env):
    pod_address(env.ipam, "node-a", "ns", "p", "c-p")
    clock = Clock()
    gc = gc_for(env, grace=60, clock=clock)
    assert gc.run_once().handles == []
    clock.now += 59
    assert gc.run_once().handles == []
    clock.now += 1
    assert gc.run_once().handles == [pod_handle("c-p")]


def test_handles_without_pod_attributes_are_left_alone(env):
    env.ipam.allocate(handle_id("podman", "c1", "eth0"), "node-a", {"pod": "only-a-name"})  # no namespace
    env.ipam.allocate(handle_id("other", "c2", "eth0"), "node-a")  # no pod at all
    gc = gc_for(env)
    for _ in range(3):
        assert gc.run_once().handles == []
    assert handles(env.kv) == {handle_id("podman", "c1", "eth0"), handle_id("other", "c2", "eth0")}


def test_handle_that_changed_between_passes_is_not_released(env):
    """The release compares the handle's revision first seen missing."""
    first = pod_address(env.ipam, "node-a", "ns", "p", "c-p")
    gc = gc_for(env)
    assert gc.run_once().handles == []
    env.ipam.release_handle(pod_handle("c-p"))  # a retried sandbox reuses the handle: a new record
    second = pod_address(env.ipam, "node-a", "ns", "p", "c-p")
    assert gc.run_once().handles == []  # a new suspicion, not the old one
    assert env.ipam.held_by(pod_handle("c-p")) == second.ips
    assert gc.run_once().handles == [pod_handle("c-p")]
    assert first.ips  # (the first address was released by the test itself)


class Interleaved:
    """The kube client the GC uses, doing `during` while the GC asks it for the pods list:
    `before` runs after the GC's etcd snapshot and before the API answers, `after` once the
    API has answered (before the GC decides anything)."""

    def __init__(self, client, before=None, after=None):
        self.client, self.before, self.after = client, before, after

    def list(self, kind, **kw):
        if kind == "pods" and self.before:
            self.before()
        result = self.client.list(kind, **kw)
        if kind == "pods" and self.after:
            self.after()
        return result


@pytest.mark.parametrize("where", ["before", "after"])
def test_race_pod_created_while_the_gc_reads_survives(env, where):
    """kubelet creates pods (API first, then CNI ADD) while a pass reads etcd and the API."""
    kube, ipam = env.kube, env.ipam
    kube.add_node("node-a")
    created = []

    def new_pod():
        name = f"new-{len(created)}"
        kube.add_pod("ns", name, node="node-a")
        pod_address(ipam, "node-a", "ns", name, f"c-{name}")
        created.append(pod_handle(f"c-{name}"))

    gc = GarbageCollector(env.kv, Interleaved(env.client, **{where: new_pod}), grace=0)
    for _ in range(4):
        assert gc.run_once().handles == []
    assert len(created) == 4 and set(created) <= handles(env.kv)
    assert all(ipam.held_by(h) for h in created)


def test_race_gc_running_in_a_loop_never_frees_a_live_pod(env, etcd):
    """Pods come and go (deleted ones leave their address behind, as if CNI DEL was lost)
    while the GC runs passes back to back with no grace at all: no live pod ever loses
    its address, and once the churn stops every dead pod's address is released."""
    kube = env.kube
    kube.add_node("node-a")
    stop = threading.Event()
    gc = gc_for(env)
    passes = []

    def gc_loop():
        while not stop.is_set():
            passes.append(gc.run_once())

    def kubelet(worker: int, kv):
        ipam = IPAM(kv)  # each "node agent" has its own allocator
        for i in range(40):
            name = f"w{worker}-{i}"
            kube.add_pod("ns", name, node="node-a")
            pod_address(ipam, "node-a", "ns", name, f"c-{name}")
            if i % 3 == 0:
                kube.delete("pods", name, "ns")

    clients = [etcd.client() for _ in range(2)]
    runner = threading.Thread(target=gc_loop)
    runner.start()
    try:
        workers = [threading.Thread(target=kubelet, args=(w, clients[w])) for w in range(2)]
        for t in workers:
            t.start()
        for t in workers:
            t.join()
        eventually(lambda: len(passes) >= 3, "GC passes during the churn")
    finally:
        stop.set()
        runner.join()
        for c in clients:
            c.close()
    live = {pod_handle(f"c-{p['metadata']['name']}") for p in kube.list("pods")}
    dead = {pod_handle(f"c-w{w}-{i}") for w in range(2) for i in range(0, 40, 3)}
    released = {h for p in passes for h in p.handles}
    assert released <= dead  # never a live pod's
    assert live <= handles(env.kv) and all(env.ipam.held_by(h) for h in live)
    gc.run_once()
    gc.run_once()
    assert handles(env.kv) == live


# -- leader election ------------------------------------------------------------------------------

@pytest.fixture
def electors(etcd):
    """Electors on separate etcd clients (as separate replicas would be), stopped at the end."""
    made = []

    def make(identity: str, **kw) -> LeaderElector:
        kv = etcd.client()
        elector = LeaderElector(kv, "controller", identity, ttl=kw.pop("ttl", 2), **kw)
        stop = threading.Event()
        thread = threading.Thread(target=elector.run, args=(stop,), daemon=True)
        thread.start()
        made.append((elector, stop, thread, kv))
        elector.stop = lambda: (stop.set(), thread.join(10))
        return elector

    yield make
    for elector, stop, thread, kv in made:
        stop.set()
        thread.join(10)
        kv.close()


def test_only_one_controller_leads_and_the_other_takes_over(electors, kv):
    a = electors("ctl-a")
    eventually(lambda: a.leading.is_set(), "a to lead")
    b = electors("ctl-b")
    assert kv.get(keys.leader("controller")).value == b"ctl-a"
    assert not b.leading.is_set()
    a.stop()  # a clean stop revokes the lease: b takes over without waiting for the TTL
    assert not a.leading.is_set()
    eventually(lambda: b.leading.is_set(), "b to take over")
    assert b.holder() == "ctl-b" and b.terms == 1


def test_leader_whose_keepalive_fails_steps_down(electors, kv):
    lost = threading.Event()
    a = electors("ctl-a", on_stopped=lost.set)
    eventually(lambda: a.leading.is_set(), "a to lead")
    b = electors("ctl-b")
    kv.lease_revoke(a.lease)  # a's lease is gone (as after a partition longer than the TTL)
    assert lost.wait(10)  # a's next keepalive fails: it stops leading
    eventually(lambda: b.leading.is_set(), "b to take over")
    assert b.holder() == "ctl-b"
    eventually(lambda: not a.leading.is_set() and a.holder() == "ctl-b", "a to stay a follower")


class ControllerProcess:
    def __init__(self, workdir: Path, etcd_url: str, kubeconfig: str, identity: str):
        self.health_port = free_port()
        self.log = workdir / f"{identity}.log"
        self.proc = subprocess.Popen(
            [ROUTED, "controller", "--leader-election", "--kubeconfig", kubeconfig, "--etcd-endpoints", etcd_url,
             "--identity", identity, "--lease-ttl", "2", "--interval", "0.2", "--grace", "0",
             "--health-port", str(self.health_port)],
            stdout=open(self.log, "ab"), stderr=subprocess.STDOUT)

    def get(self, path: str) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}{path}", timeout=2) as resp:
            return resp.read().decode()

    def metric(self, name: str) -> float | None:
        try:
            text = self.get("/metrics")
        except OSError:
            return None
        return next((float(line.split()[1]) for line in text.splitlines() if line.startswith(name + " ")), None)

    def stop(self, sig=signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
        return self.proc.wait(15)


def test_controller_processes_elect_one_leader_and_survive_a_killed_leader(env, etcd, tmp_path):
    """Two `routed controller --leader-election` processes: one runs GC; SIGKILL it (no
    revoke, its lease runs out) and the other takes over and does the work."""
    kube = env.kube
    kube.add_node("node-a")
    procs = {name: ControllerProcess(tmp_path, etcd.url, kube.kubeconfig, name) for name in ("ctl-a", "ctl-b")}
    try:
        # Two Python processes importing the kubernetes client: slow on a loaded machine.
        eventually(lambda: env.kv.get(keys.leader("controller")) is not None, "a leader", timeout=60,
                   details=lambda: "\n".join(p.log.read_text()[-1000:] for p in procs.values()))
        leader = env.kv.get(keys.leader("controller")).value.decode()
        follower = next(n for n in procs if n != leader)
        eventually(lambda: (procs[leader].metric("routed_gc_passes_total") or 0) >= 2, "the leader's GC passes")
        # The follower may still be starting (its health server not up yet) on a busy machine.
        eventually(lambda: procs[follower].metric("routed_controller_leader") is not None, "the follower's metrics",
                   timeout=60)
        assert procs[follower].metric("routed_controller_leader") == 0
        assert procs[follower].metric("routed_gc_passes_total") == 0
        assert procs[follower].get("/readyz").strip() == "standby"
        assert procs[follower].get("/healthz") == procs[leader].get("/healthz") == "ok\n"

        assert procs[leader].stop(signal.SIGKILL) == -signal.SIGKILL
        eventually(lambda: procs[follower].metric("routed_controller_leader") == 1, "the follower to lead",
                   timeout=30)
        assert env.kv.get(keys.leader("controller")).value.decode() == follower
        # the new leader collects: a deleted pod's address goes
        pod_address(env.ipam, "node-a", "ns", "gone", "c-gone")
        eventually(lambda: pod_handle("c-gone") not in handles(env.kv), "the new leader's GC")
        assert procs[follower].stop() == 0
        eventually(lambda: env.kv.get(keys.leader("controller")) is None, "the lease revoked on SIGTERM",
                   timeout=5)
    finally:
        for proc in procs.values():
            proc.stop(signal.SIGKILL)
