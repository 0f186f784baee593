"""Fault tests on the lab (issue 6): a node leaves, etcd restarts under load, an agent is
SIGKILLed during a burst of ADDs, ExaBGP is SIGKILLed, a peer is misconfigured.

Each test has a small lab of its own (own state directory, namespace prefix and etcd port,
see labutil.LabRun) and always tears it down. Only processes the lab recorded (or their
children) are killed, by PID."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from routed.lab import procs
from tests.e2e.labutil import LabRun, up_retrying
from tests.support.wait import eventually

pytestmark = [pytest.mark.root, pytest.mark.etcd, pytest.mark.slow]

# --------------------------------------------------------------------------- helpers


def node(lab: LabRun, name: str) -> dict:
    return next(n for n in lab.state()["nodes"] if n["name"] == name)


def pod(lab: LabRun, node_name: str, name: str) -> dict:
    return next(p for p in lab.state()["pods"] if p["node"] == node_name and p["name"] == name)


def bgp_routes(lab: LabRun, node_name: str) -> list[str]:
    """The routes the agent programmed from BGP (proto 202), one line each."""
    out = subprocess.run(["ip", "-n", node(lab, node_name)["netns"], "route", "show", "proto", "202"],
                         capture_output=True, text=True, timeout=10, check=True).stdout
    return [line.strip() for line in out.splitlines() if line.strip()]


def ping(src_netns: str, ip: str, count: int = 1, wait: float = 1.0) -> bool:
    return subprocess.run(["ip", "netns", "exec", src_netns, "ping", "-c", str(count), "-W", str(wait), "-q", ip],
                          capture_output=True, timeout=count * wait + 10).returncode == 0


def wait_until(predicate, timeout: float, what: str, details=lambda: ""):
    return eventually(predicate, what, timeout, 0.3, details)


def ipam_check(lab: LabRun) -> dict:
    return json.loads(lab.ctl("ipam", "check", "-o", "json").stdout)


def children_of(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def exabgp_pid(speaker: int) -> int | None:
    for child in children_of(speaker):
        try:
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
        except OSError:
            continue
        if b"exabgp" in cmdline:
            return child
    return None


def sessions_up(lab: LabRun, node_name: str) -> bool:
    from routed.lab.cluster import node_sessions

    peers = node_sessions(node(lab, node_name))
    return bool(peers) and all(p.get("state") == "up" for p in peers)


def own_block(lab: LabRun, node_name: str) -> str:
    """The node's block: its blackhole route (proto 201)."""
    out = subprocess.run(["ip", "-n", node(lab, node_name)["netns"], "route", "show", "type", "blackhole"],
                         capture_output=True, text=True, timeout=10, check=True).stdout
    blocks = [line.split()[1] for line in out.splitlines() if line.startswith("blackhole")]
    assert len(blocks) == 1, out
    return blocks[0]


def one_route_per_block(lab: LabRun, node_name: str, blocks: list[str]) -> bool:
    dests = [line.split()[0] for line in bgp_routes(lab, node_name)]
    return sorted(dests) == sorted(blocks)


# --------------------------------------------------------------------------- tests


def test_node_leaves_its_routes_are_withdrawn_and_other_pods_unaffected(lab):
    up_retrying(lab, "--nodes", "3", "--racks", "2", "--pods", "1")
    gone = own_block(lab, "node3")
    for name in ("node1", "node2"):
        assert any(line.startswith(gone) for line in bgp_routes(lab, name)), bgp_routes(lab, name)
    # The node leaves: its agent stops, its Node resource is deleted, and its affinities are
    # released as the GC controller would.
    agent = node(lab, "node3")["pids"]["agent"]
    os.kill(agent, signal.SIGTERM)
    # An agent still running registers its Node again (it is alive): delete it once gone.
    wait_until(lambda: not procs.alive(agent, f"{lab.dir}/"), 60, "node3's agent to stop")
    lab.ctl("delete", "node", "node3")
    assert "node3" not in lab.ctl("get", "nodes").stdout
    from ipam.allocator import IPAM
    from routed.datastore.etcd import EtcdKV

    kv = EtcdKV([lab.state()["etcd"]["endpoint"]])
    try:
        assert IPAM(kv).release_node("node3") == [gone]
    finally:
        kv.close()
    for name in ("node1", "node2"):
        wait_until(lambda: not any(line.startswith(gone) for line in bgp_routes(lab, name)), 30,
                   f"{name} to withdraw {gone}", lambda: "\n".join(bgp_routes(lab, name)) + lab.logs())
    # The remaining pods reach each other, both ways, and the routes between them stay.
    p1, p2 = pod(lab, "node1", "p1"), pod(lab, "node2", "p1")
    assert ping(p1["netns"], p2["ip"], count=2) and ping(p2["netns"], p1["ip"], count=2)
    assert one_route_per_block(lab, "node1", [own_block(lab, "node2")])
    assert one_route_per_block(lab, "node2", [own_block(lab, "node1")])
    assert ipam_check(lab)["problems"] == []


def test_etcd_restart_under_load_no_duplicates_and_watches_resume(lab):
    from routed.lab import etcd

    up_retrying(lab, "--nodes", "2", "--racks", "1", "--pods", "1")
    state = lab.state()
    stop = threading.Event()
    added: list[tuple[str, str]] = []
    failures: list[str] = []

    def loop():
        i = 0
        while not stop.is_set() and i < 40:
            where = ("node1", "node2")[i % 2]
            name = f"l{i}"
            for attempt in range(30):
                out = lab.run("pod", "add", where, name, check=False, timeout=150)
                if out.returncode == 0:
                    added.append((where, name))
                    break
                failures.append(out.stderr.strip()[-300:])
                time.sleep(0.5)
            else:
                return
            i += 1

    worker = threading.Thread(target=loop, daemon=True)
    worker.start()
    try:
        wait_until(lambda: len(added) >= 3, 60, "the first pods of the loop")
        pid = etcd.running_pid(lab.dir)
        assert pid
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not Path(f"/proc/{pid}").exists() or
                   Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z", 10, "etcd to die")
        during = len(added)
        time.sleep(3)  # ADDs meet no etcd meanwhile
        etcd.start(lab.dir, state["etcd"]["port"], state["etcd"]["peer_port"])
        wait_until(lambda: len(added) >= during + 4, 120, "pods to be created after etcd came back",
                   lambda: "\n".join(failures[-5:]) + lab.logs())
    finally:
        stop.set()
        worker.join(timeout=200)
    assert not worker.is_alive()
    # No duplicate address, and IPAM is consistent.
    pods = lab.state()["pods"]
    ips = [p["ip"] for p in pods]
    assert all(ips) and len(set(ips)) == len(ips), ips
    report = ipam_check(lab)
    assert report["problems"] == [], report
    # An ADD that failed during the outage may have had its address written before its answer
    # was lost; like kubelet, `pod add` then sends a DEL, whose release is queued (or spooled)
    # and done once etcd answers: in the end exactly the pods' addresses are held.
    wait_until(lambda: ipam_check(lab)["counts"]["addressesInUse"] == len(pods), 30,
               f"exactly the {len(pods)} pods' addresses held after {len(failures)} failed ADD(s)", lab.logs)
    # The watches resumed: a pod added now on node1 is reached from node2 (node2 learned
    # node1's routes, through the agents' watches and BGP, after the restart).
    fresh = lab.run("pod", "add", "node1", "fresh").stdout.split(": ")[1].split()[0]
    src = pod(lab, "node2", "p1")["netns"]
    wait_until(lambda: ping(src, fresh), 30, f"node2's pod to reach {fresh}", lab.logs)
    back = pod(lab, "node1", "fresh")["netns"]
    assert ping(back, pod(lab, "node2", "p1")["ip"])


def test_agent_sigkill_during_a_burst_of_adds(lab):
    up_retrying(lab, "--nodes", "2", "--racks", "1", "--pods", "1")
    agent = node(lab, "node1")["pids"]["agent"]
    from tests.e2e.labutil import ROUTED

    # Ten ADDs, started 0.1 s apart; the agent is SIGKILLed as soon as two have their IP, so
    # some are done, some in flight, and the last ones meet no agent at all.
    burst: dict[str, subprocess.Popen] = {}
    killed_at = None
    try:
        for i in range(10):
            burst[f"b{i}"] = subprocess.Popen([ROUTED, "lab", "pod", "add", "node1", f"b{i}"], env=lab.env,
                                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            if killed_at is None and i >= 6:
                wait_until(lambda: sum(1 for p in lab.state()["pods"] if p["name"].startswith("b") and p["ip"]) >= 2,
                           60, "the first ADDs of the burst")
            if killed_at is None and sum(1 for p in lab.state()["pods"] if p["name"].startswith("b") and p["ip"]) >= 2:
                os.kill(agent, signal.SIGKILL)
                killed_at = i
            time.sleep(0.1)
        outcomes = {name: proc.communicate(timeout=150) + (proc.returncode,) for name, proc in burst.items()}
    finally:
        for proc in burst.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    ok = sorted(n for n, (_, _, rc) in outcomes.items() if rc == 0)
    failed = sorted(n for n, (_, _, rc) in outcomes.items() if rc != 0)
    assert ok, outcomes
    assert failed, f"the SIGKILL came too late: every ADD succeeded ({outcomes})"
    # `up` again brings the agent back.
    again = lab.run("up", "--nodes", "2", "--racks", "1")
    assert "node1: agent not running: starting" in again.stderr, again.stderr
    report = ipam_check(lab)
    pods = [p for p in lab.state()["pods"] if p["name"].startswith("b")]
    assert sorted(p["name"] for p in pods) == ok  # failed ADDs left no pod behind
    assert all(p["ip"] for p in pods) and len({p["ip"] for p in pods}) == len(pods)
    assert report["problems"] == [], json.dumps(report, indent=1)
    # + the two p1s. A failed ADD's address (if it got one) goes with the DEL that followed
    # it, spooled while the agent was away and replayed when it came back.
    wait_until(lambda: ipam_check(lab)["counts"]["addressesInUse"] == len(pods) + 2, 30,
               f"exactly {len(pods) + 2} addresses held after {len(failed)} failed ADD(s)", lab.logs)
    src = pod(lab, "node2", "p1")["netns"]
    for p in pods:
        wait_until(lambda: ping(src, p["ip"]), 30, f"node2/p1 to reach {p['name']} ({p['ip']})", lab.logs)


def test_exabgp_sigkill_traffic_keeps_flowing_and_routes_converge(lab):
    up_retrying(lab, "--nodes", "2", "--racks", "1", "--pods", "1")
    speaker = node(lab, "node1")["pids"]["speaker"]
    old = exabgp_pid(speaker)
    assert old, f"no ExaBGP under speaker {speaker}"
    blocks = {name: own_block(lab, name) for name in ("node1", "node2")}
    src, dst = pod(lab, "node2", "p1"), pod(lab, "node1", "p1")
    pinger = subprocess.Popen(["ip", "netns", "exec", src["netns"], "ping", "-i", "0.2", "-W", "1", dst["ip"]],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        time.sleep(2)
        os.kill(old, signal.SIGKILL)
        new = wait_until(lambda: (lambda p: p if p and p != old else None)(exabgp_pid(speaker)), 30,
                         "the speaker to restart ExaBGP")
        assert new != old
        wait_until(lambda: sessions_up(lab, "node1") and sessions_up(lab, "node2"), 60,
                   "the BGP sessions to come back", lab.logs)
        time.sleep(2)
    finally:
        pinger.send_signal(signal.SIGINT)
        out = pinger.communicate(timeout=10)[0]
    summary = next(line for line in out.splitlines() if "packets transmitted" in line)
    sent, received = (int(summary.split()[0]), int(summary.split(", ")[1].split()[0]))
    assert sent >= 20 and sent - received <= 3, out[-2000:]
    for name, other in (("node1", "node2"), ("node2", "node1")):
        wait_until(lambda: one_route_per_block(lab, name, [blocks[other]]), 30,
                   f"{name}: exactly one proto-202 route, for {blocks[other]}",
                   lambda: "\n".join(bgp_routes(lab, name)))
    assert ping(dst["netns"], src["ip"], count=2) and ping(src["netns"], dst["ip"], count=2)


def test_misconfigured_peer_shows_in_node_status_and_nothing_else_breaks(lab, tmp_path):
    up_retrying(lab, "--nodes", "2", "--racks", "2", "--pods", "1")
    # rack1's ToR is AS 65001: node1 (the only node of rack 1) is told 65099.
    peer = {"apiVersion": "routed.io/v1", "kind": "BGPPeer", "metadata": {"name": "rack1-tor"},
            "spec": {"peerIP": "10.10.1.1", "asNumber": 65099, "nodeSelector": "rack == '1'"}}
    path = tmp_path / "peer.json"
    path.write_text(json.dumps(peer))
    lab.ctl("apply", "-f", str(path))
    agent = f"http://127.0.0.1:{node(lab, 'node1')['health_port']}"

    def tor_session() -> dict | None:
        out = lab.ctl("-o", "json", "node", "status", "--agent", agent, check=False)
        try:
            data = json.loads(out.stdout)
        except ValueError:
            return None
        peers = data.get("peers", data) if isinstance(data, dict) else data
        for p in peers or []:
            if "10.10.1.1" in json.dumps(p):
                return p
        return None

    bad = wait_until(lambda: (lambda p: p if p and p.get("state") != "up" and "bad peer AS" in json.dumps(p)
                              else None)(tor_session()), 60, "node1's ToR session to show the bad AS",
                     lambda: lab.ctl("node", "status", "--agent", agent, check=False).stdout)
    assert bad["state"] != "up"
    text = lab.ctl("node", "status", "--agent", agent).stdout
    assert "bad peer AS" in text, text
    # Nothing else breaks: the mesh is up, and every pod reaches every other.
    status = lab.status()
    reach = status["reachability"]
    assert reach["ok"] == 2 and not reach["failed"], reach
    # Only the misconfigured session is down (both ends of it); the mesh and rack 2 are up.
    down = sorted((s["speaker"], s["name"]) for s in status["sessions"] if s["state"] != "up")
    assert down == [("node1", "rack1-tor"), ("rack1-tor", "node1")], status["sessions"]
    assert len(status["sessions"]) == 8
