"""The agent's CNI path under faults: an etcd stall around DEL -> ADD, spooled DELs that
a later ADD made obsolete, wedged requests, silent clients, a hung iptables, a full disk.

Real etcd (SIGSTOPped by PID for a stall, always SIGCONTed), a real agent, the shim as
kubelet runs it, namespaces playing the node's host and its pods.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest

from cni import wire
from ipam.allocator import IPAM
from routed import resources as r
from routed.agent.spool import PendingReleases
from routed.datastore import keys
from routed.datastore.resources import ResourceStore
from routed.dataplane.names import host_veth_name
from routed.errors import RoutedError
from tests.support.agent import AgentProcess, cni
from tests.support.netns import node_host
from tests.support.wait import eventually

pytestmark = pytest.mark.root

NET = "k8s-pod-network"


def pool(name, cidr, **spec):
    return r.parse({"apiVersion": "routed.io/v1", "kind": "IPPool", "metadata": {"name": name},
                    "spec": {"cidr": cidr, **spec}})


@pytest.fixture
def node(tmp_path, etcd):
    """One node host and its agent, started by the test with the flags it needs."""
    hosts, agents = [], []

    def start(address: str, cidr: str, *extra_args: str, env: dict | None = None, **pool_spec) -> AgentProcess:
        ResourceStore(etcd.client()).create(pool(f"p{len(hosts)}", cidr, **pool_spec))
        host = node_host(address)
        hosts.append(host)
        agent = AgentProcess(tmp_path / f"agent{len(agents)}", etcd.url, host, f"node-{len(agents)}", address,
                             extra_args=list(extra_args), env=env)
        agents.append(agent)
        return agent.start()

    yield start
    for agent in agents:
        agent.stop()
    for host in hosts:
        host.delete()


@contextmanager
def stalled(etcd):
    """etcd stops answering (no RST, no error: requests just wait) until the block ends."""
    os.kill(etcd.proc.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(etcd.proc.pid, signal.SIGCONT)


def handle(cid: str) -> str:
    return f"{NET}.{cid}.eth0"


def held(kv, cid: str) -> list[str]:
    return [str(ip) for ip in IPAM(kv).held_by(handle(cid))]


def queued_releases(agent: AgentProcess) -> list[str]:
    path = agent.workdir / "state" / "pending-releases"
    return sorted(p.name for p in path.iterdir() if not p.name.startswith(".")) if path.is_dir() else []


def address_of(result: dict) -> str:
    return result["ips"][0]["address"].split("/")[0]


def add(agent, cid, ns) -> tuple[int, dict | None, str]:
    return cni("ADD", agent.conf(), container=cid, netns=ns.path, pod=("ns1", cid))


def delete(agent, cid, ns) -> tuple[int, dict | None, str]:
    return cni("DEL", agent.conf(), container=cid, netns=ns.path, pod=("ns1", cid))


def add_until_done(agent, cid, ns) -> str:
    """ADD as kubelet does: again while the answer is "try again later"."""
    while True:
        code, result, raw = add(agent, cid, ns)
        if code == 0:
            return address_of(result)
        assert result and result["code"] == 11, raw


def links(host) -> str:
    return host.run("ip", "-o", "link").stdout


def spool_del(agent, cid, ns, spooled_ns: int) -> Path:
    """A DEL as the plugin spools it: <containerid>-<ifname>-<time_ns>.req, written whole."""
    env = {"CNI_COMMAND": "DEL", "CNI_CONTAINERID": cid, "CNI_NETNS": ns.path, "CNI_IFNAME": "eth0",
           "CNI_PATH": "/opt/cni/bin", "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAMESPACE=ns1;K8S_POD_NAME={cid}"}
    spool = Path(agent.spool)
    spool.mkdir(parents=True, exist_ok=True)
    name = f"{cid}-eth0-{spooled_ns}.req"
    (spool / f".{name}").write_bytes(wire.encode_request(env, json.dumps(agent.conf())))
    (spool / f".{name}").rename(spool / name)
    return spool / name


def metric(text: str, name: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return None


# -- 10.4: a re-ADD never loses its address to an older DEL --------------------------------


def test_a_readd_during_an_etcd_stall_keeps_its_address(etcd, node, pods):
    agent = node("192.0.2.40/24", "10.53.0.0/16")
    kv = etcd.client()
    netns = {f"re-{i}": pods() for i in range(15)}
    for cid, ns in netns.items():
        assert add(agent, cid, ns)[0] == 0
    workers = ThreadPoolExecutor(len(netns))

    def del_then_add(cid):
        code, _, raw = delete(agent, cid, netns[cid])
        assert code == 0, raw
        return add_until_done(agent, cid, netns[cid])

    try:
        with stalled(etcd):
            futures = {cid: workers.submit(del_then_add, cid) for cid in netns}
            # Every DEL is answered while etcd is away (its release queued); the ADDs wait.
            eventually(lambda: len(queued_releases(agent)) == len(netns), "every DEL's release queued",
                       timeout=60, details=lambda: agent.log.read_text()[-3000:])
        addresses = {cid: f.result(timeout=120) for cid, f in futures.items()}
    finally:
        workers.shutdown(wait=True)
    eventually(lambda: not queued_releases(agent), "the queued releases done", timeout=30)
    lost = {cid: ip for cid, ip in addresses.items() if held(kv, cid) != [ip]}
    assert not lost, f"re-added pods whose address an older DEL released: {lost}"
    for cid, ns in netns.items():
        assert addresses[cid] in ns.run("ip", "-o", "addr", "show", "eth0").stdout


def test_a_spooled_del_older_than_a_later_add_is_dropped_at_replay(etcd, node, pods):
    agent = node("192.0.2.41/24", "10.54.0.0/16")
    kv = etcd.client()
    ns = pods()
    before = time.time_ns()
    code, result, raw = add(agent, "sd", ns)
    assert code == 0, raw
    address = address_of(result)
    # The plugin gave up on a DEL (its deadline) and spooled it; the runtime then added
    # the container again. Replaying that DEL now would take the running pod's network.
    old = spool_del(agent, "sd", ns, before)
    eventually(lambda: not old.exists(), "the spool replayed", timeout=30)
    assert held(kv, "sd") == [address]
    assert host_veth_name("ns1", "sd") in links(agent.host)
    assert address in ns.run("ip", "-o", "addr", "show", "eth0").stdout
    # A DEL spooled after the ADD is the pod's real end: replayed.
    spool_del(agent, "sd", ns, time.time_ns())
    eventually(lambda: not held(kv, "sd"), "the newer spooled DEL replayed", timeout=30)
    eventually(lambda: host_veth_name("ns1", "sd") not in links(agent.host), "the pod's veth removed")


# -- 10.6: the CNI path fits inside kubelet's deadlines -----------------------------------


def test_a_wedged_request_fails_liveness_and_holds_only_its_own_container(etcd, node, pods):
    agent = node("192.0.2.42/24", "10.55.0.0/16", "--stuck-after", "1")
    kv = etcd.client()
    x, y = pods(), pods()
    assert add(agent, "wy", y)[0] == 0
    eventually(lambda: agent.healthz()[0] == 200, "the agent live")
    workers = ThreadPoolExecutor(2)
    try:
        with stalled(etcd):
            add_x = workers.submit(add, agent, "wx", x)
            status, body = eventually(lambda: (lambda h: h if h[0] == 503 else None)(agent.healthz()),
                                      "/healthz to fail on the ADD stuck on etcd", timeout=30)
            assert "ADD" in body and "wx" in body, body
            # The runtime gives up on the ADD and deletes the container.
            del_x = workers.submit(delete, agent, "wx", x)
            # Another container is not held up by the wedged one.
            code, _, raw = delete(agent, "wy", y)
            assert code == 0, raw
    finally:
        workers.shutdown(wait=True)
    assert add_x.result()[0] in (0, 1) and del_x.result()[0] == 0, (add_x.result(), del_x.result())
    # The DEL came after the ADD, so it wins whichever way the ADD ended: nothing of wx is
    # left (had the DEL run first, the ADD would have set up a pod nobody deletes).
    eventually(lambda: not held(kv, "wx"), "wx's address released")
    eventually(lambda: host_veth_name("ns1", "wx") not in links(agent.host), "wx's veth removed")
    eventually(lambda: agent.healthz()[0] == 200, "/healthz back to ok")


def _threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def test_the_cni_server_bounds_its_workers_and_hangs_up_on_silent_clients(node):
    agent = node("192.0.2.43/24", "10.56.0.0/16", "--cni-workers", "4", "--cni-read-timeout", "1")
    assert cni("STATUS", agent.conf("1.1.0"))[0] == 0
    baseline = _threads(agent.proc.pid)
    silent = []
    try:
        for _ in range(40):  # connect and never send a request
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(agent.socket)
            silent.append(sock)
        code, _, raw = cni("STATUS", agent.conf("1.1.0"))  # served once the silent ones are hung up on
        assert code == 0, raw
        # 4 workers, and some slack for threads the agent starts on its own (controllers
        # after registration, watches): far from the thread per connection it once took.
        assert _threads(agent.proc.pid) < baseline + 20, "a thread per connection"
        for sock in silent:
            sock.settimeout(30)
            assert sock.recv(100) == b""  # the agent hung up
    finally:
        for sock in silent:
            sock.close()


# -- 10.11: spool, start-up, counters -------------------------------------------------


def test_spool_entries_that_can_never_succeed_move_to_failed_with_a_metric(tmp_path, etcd):
    host = node_host("192.0.2.44/24")
    agent = AgentProcess(tmp_path / "agent", etcd.url, host, "node-f", "192.0.2.44/24")
    try:
        ResourceStore(etcd.client()).create(pool("main", "10.57.0.0/16"))
        spool = Path(agent.spool)
        spool.mkdir(parents=True)
        (spool / "garbage-eth0-1.req").write_bytes(b"no environment here")
        env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "f1", "CNI_NETNS": "/x", "CNI_IFNAME": "eth0"}
        (spool / "f1-eth0-2.req").write_bytes(wire.encode_request(env, json.dumps(agent.conf())))
        env = {**env, "CNI_COMMAND": "DEL", "CNI_CONTAINERID": "f2"}
        (spool / "f2-eth0-3.req").write_bytes(wire.encode_request(env, "{not json"))
        agent.start()
        eventually(lambda: not list(spool.glob("*.req")), "the spool replayed", timeout=30)
        assert sorted(p.name for p in (spool / "failed").iterdir()) == \
            ["f1-eth0-2.req", "f2-eth0-3.req", "garbage-eth0-1.req"]
        assert metric(agent.metrics(), "routed_cni_spool_failed_total") == 3
    finally:
        agent.stop()
        host.delete()


@pytest.fixture
def tiny_disk(tmp_path):
    mount = tmp_path / "tiny"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8k", "rt-agentcni", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_a_release_that_cannot_be_queued_on_a_full_disk_is_a_clear_error_and_leaves_no_file(tiny_disk):
    releases = PendingReleases(tiny_disk / "pending")
    with open(tiny_disk / "filler", "wb", buffering=0) as filler:
        with pytest.raises(OSError, match="No space left"):
            while True:
                filler.write(b"x" * 512)
    with pytest.raises(RoutedError, match="cannot queue the release of k8s-pod-network.c1.eth0"):
        releases.add("k8s-pod-network.c1.eth0")
    assert os.listdir(tiny_disk / "pending") == []


def test_metrics_counters_are_counters(node, pods):
    agent = node("192.0.2.45/24", "10.58.0.0/16")
    ns = pods()
    assert add(agent, "m1", ns)[0] == 0
    first = agent.metrics()
    types = dict(line.split()[2:4] for line in first.splitlines() if line.startswith("# TYPE "))
    wrong = {name: kind for name, kind in types.items() if name.endswith("_total") != (kind == "counter")}
    assert not wrong, f"counters must be TYPE counter and named _total (and only they): {wrong}"
    assert delete(agent, "m1", ns)[0] == 0
    second = agent.metrics()
    for name in (n for n, kind in types.items() if kind == "counter"):
        for line in first.splitlines():
            if line.startswith(name):
                series, value = line.rsplit(" ", 1)
                now = next(l for l in second.splitlines() if l.startswith(series + " "))
                assert float(now.rsplit(" ", 1)[1]) >= float(value), series


def _broken_iptables(tmp_path: Path, meanwhile: str) -> tuple[dict, Path]:
    """The agent's environment with an iptables-restore that runs `meanwhile` (shell) until
    the returned path exists, then is the real one."""
    real = shutil.which("iptables-restore")
    assert real, "iptables-restore missing: run scripts/setup.sh"
    stub, release = tmp_path / "stub-bin", tmp_path / "iptables-released"
    stub.mkdir()
    (stub / "iptables-restore").write_text(f"#!/bin/sh\n{meanwhile.replace('{release}', str(release))}\n"
                                           f"exec {real} \"$@\"\n")
    (stub / "iptables-restore").chmod(0o755)
    return {**os.environ, "PATH": f"{stub}:{os.environ.get('PATH', '/usr/sbin:/usr/bin')}"}, release


def _hung_iptables(tmp_path: Path) -> tuple[dict, Path]:
    """As on a host whose xtables lock another program holds."""
    return _broken_iptables(tmp_path, "while [ ! -e {release} ]; do sleep 0.1; done")


def nat_installed(agent) -> bool:
    return agent.host.run("iptables", "-t", "nat", "-S", "ROUTED-NAT-OUTGOING", check=False).returncode == 0


def test_a_hung_iptables_blocks_neither_start_up_nor_the_other_controllers(tmp_path, etcd, node, pods):
    env, release = _hung_iptables(tmp_path)
    try:
        agent = node("192.0.2.46/24", "10.59.0.0/16", "--stuck-after", "1", env=env, natOutgoing=True)
        code, result, raw = add(agent, "n1", pods())
        assert code == 0, raw
        # block-routes runs although natOutgoing is stuck in iptables
        eventually(lambda: "blackhole 10.59." in agent.host.run("ip", "route", "show", "proto", "201").stdout,
                   "the block's blackhole route", timeout=30)
        status, body = eventually(lambda: (lambda h: h if h[0] == 503 else None)(agent.healthz()),
                                  "/healthz to name the stuck controller", timeout=60)
        assert "nat-outgoing" in body, body
    finally:
        release.touch()
    eventually(lambda: nat_installed(agent), "natOutgoing installed once iptables answers", timeout=60)
    eventually(lambda: agent.healthz()[0] == 200, "/healthz back to ok", timeout=30)


def test_a_failing_iptables_is_counted_retried_and_blocks_nothing_else(tmp_path, etcd, node, pods):
    env, release = _broken_iptables(tmp_path, "[ -e {release} ] || { echo 'xtables: simulated failure' >&2; exit 4; }")
    agent = node("192.0.2.48/24", "10.61.0.0/16", env=env, natOutgoing=True)
    errors = 'routed_controller_errors_total{controller="nat-outgoing"}'
    eventually(lambda: (metric(agent.metrics(), errors) or 0) >= 1, "the failure counted", timeout=30)
    assert "simulated failure" in agent.log.read_text()
    code, _, raw = add(agent, "n2", pods())
    assert code == 0, raw
    assert agent.healthz()[0] == 200  # failing is not stuck: the loop goes on and retries
    release.touch()
    eventually(lambda: nat_installed(agent), "natOutgoing installed on a retry", timeout=30)


# -- 11: controllers keep their contract ------------------------------------------------


def test_cleanup_on_stop_undoes_what_the_controllers_installed(node, pods):
    agent = node("192.0.2.47/24", "10.60.0.0/16", "--cleanup-on-stop", natOutgoing=True)
    ns = pods()
    code, result, raw = add(agent, "cl", ns)
    assert code == 0, raw
    host = agent.host
    eventually(lambda: "blackhole 10.60." in host.run("ip", "route", "show", "proto", "201").stdout,
               "the block's blackhole route")
    eventually(lambda: nat_installed(agent), "natOutgoing installed")
    agent.stop()
    assert "blackhole" not in host.run("ip", "route", "show", "proto", "201").stdout
    assert not nat_installed(agent)


# -- a DEL that could not reach etcd leaves no workload record behind ------------------------


def test_a_workload_record_a_del_could_not_remove_is_collected_once_its_veth_is_gone(etcd, node, pods):
    """etcd down (connections refused, so the DEL is answered in time and nobody replays it):
    the DEL tears the pod down and queues its release, but cannot remove the pod's record."""
    agent = node("192.0.2.46/24", "10.59.0.0/16", "--resync", "1")
    kv = etcd.client()
    gone, alive = pods(), pods()
    assert add(agent, "wl-gone", gone)[0] == 0
    assert add(agent, "wl-alive", alive)[0] == 0
    gone_key, alive_key = (keys.workload("node-0", "ns1", pod) for pod in ("wl-gone", "wl-alive"))
    assert kv.get(gone_key) is not None and kv.get(alive_key) is not None
    etcd.kill()
    try:
        code, _, raw = delete(agent, "wl-gone", gone)
        assert code == 0, raw
    finally:
        etcd.launch()
        etcd.wait_serving(15)
    log = agent.log.read_text()
    assert "workload endpoint not removed" in log and "replayed spooled DEL" not in log, log[-2000:]
    eventually(lambda: kv.get(gone_key) is None, "the gone pod's record collected", timeout=30,
               details=lambda: agent.log.read_text()[-2000:])
    assert kv.get(alive_key) is not None  # a running pod's record stays
    assert held(kv, "wl-alive")
