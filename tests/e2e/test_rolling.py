"""Upgrades lose nothing (issue 10.10, the rolling part): the agents and their ExaBGP
speakers are restarted one node at a time, as a DaemonSet rolling update does (SIGTERM to
both containers, new ones started a while later, as after an image pull), while pods on
different nodes keep talking: a long-lived TCP connection and a ping across each pair of
nodes (also across racks, VXLAN). While a node's agent is away, kubelet deletes a pod
there (the DEL is spooled) and tries to add one (refused: try again later), as it does.

No established connection breaks and none stalls for longer than graceful restart
promises (the mesh's restart time); every address, block, blackhole and route is still
there afterwards, the deleted pods' addresses are released, the retried ADDs work, and
`routedctl ipam check` is clean."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from routed.lab import procs
from tests.e2e.labutil import LabRun, up_retrying
from tests.e2e.test_faults import bgp_routes, ipam_check, node, own_block, ping, pod, sessions_up, wait_until

pytestmark = [pytest.mark.root, pytest.mark.etcd, pytest.mark.slow]

FLOW = str(Path(__file__).with_name("flow.py"))
SHAPE = ("--nodes", "3", "--racks", "2")  # node1, node2 in rack 1 (direct); node3 in rack 2 (VXLAN)
PORT = 7070
GRACEFUL_RESTART = 120  # seconds: the mesh peers' restart time (bgp.peers.Peer.graceful_restart)
PING_INTERVAL = 0.2
DOWNTIME = 8  # seconds between a node's old containers stopping and the new ones starting


def _in(netns: str, *argv: str, **kw) -> subprocess.Popen:
    return subprocess.Popen(["ip", "netns", "exec", netns, *argv], **kw)


def _longest_ping_gap(output: str) -> float:
    """Seconds of the longest run of unanswered echo requests (from the sequence numbers)."""
    seqs = sorted({int(part.split("=")[1]) for line in output.splitlines() for part in line.split()
                   if part.startswith("icmp_seq=") and "bytes from" in line})
    if not seqs:
        return float("inf")
    gaps = [b - a - 1 for a, b in zip(seqs, seqs[1:])]
    return max(gaps, default=0) * PING_INTERVAL


def _stopped(pid: int, marker: str) -> bool:
    return not procs.alive(pid, marker)


def test_rolling_restart_of_agents_and_speakers_loses_nothing(lab: LabRun, tmp_path):
    up_retrying(lab, *SHAPE, "--pods", "2")
    names = [n["name"] for n in lab.state()["nodes"]]
    pods = {name: pod(lab, name, "p1") for name in names}
    blocks = {name: own_block(lab, name) for name in names}
    before = ipam_check(lab)
    assert before["problems"] == [], before

    # Every pod serves; each pod keeps a connection and a ping open to the next node's pod.
    running: list[subprocess.Popen] = []
    flows: dict[str, tuple[subprocess.Popen, Path]] = {}
    pings: dict[str, subprocess.Popen] = {}
    os.chmod(tmp_path, 0o755)
    try:
        for name in names:
            running.append(_in(pods[name]["netns"], "/usr/bin/python3", "-I", FLOW, "serve", str(PORT),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        for name in names:
            wait_until(lambda: f":{PORT}" in subprocess.run(
                ["ip", "netns", "exec", pods[name]["netns"], "ss", "-Htln"], capture_output=True, text=True).stdout,
                30, f"the TCP server in {name}'s pod")
        for i, name in enumerate(names):
            dst = pods[names[(i + 1) % len(names)]]
            wait_until(lambda: ping(pods[name]["netns"], dst["ip"]), 30, f"{name} to reach {dst['ip']}")
            report = tmp_path / f"flow-{name}.json"
            flows[name] = (_in(pods[name]["netns"], "/usr/bin/python3", "-I", FLOW, "send", dst["ip"], str(PORT),
                               str(report), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE), report)
            pings[name] = _in(pods[name]["netns"], "ping", "-i", str(PING_INTERVAL), "-W", "1", dst["ip"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

        # The roll: one node at a time, both containers SIGTERMed, then started again.
        for name in names:
            pids = node(lab, name)["pids"]
            for role in ("agent", "speaker"):
                os.kill(pids[role], signal.SIGTERM)
            for role in ("agent", "speaker"):
                wait_until(lambda: _stopped(pids[role], f"{lab.dir}/"), 60, f"{name}'s {role} to stop")
            # kubelet meanwhile: a pod deleted (spooled), a pod that cannot start yet
            lab.run("pod", "del", name, "p2")
            refused = lab.run("pod", "add", name, "late", check=False)
            assert refused.returncode != 0 and "code 11" in refused.stderr, refused.stderr
            time.sleep(DOWNTIME)  # the new containers are not there yet: traffic must not care
            again = lab.run("up", *SHAPE, "--no-ping")
            assert f"{name}: agent not running: starting" in again.stderr, again.stderr
            assert f"{name}: speaker not running: starting" in again.stderr, again.stderr
            for other in names:
                wait_until(lambda: sessions_up(lab, other), 60, f"{other}'s sessions after {name}'s restart",
                           lab.logs)
            lab.run("pod", "add", name, "late")  # kubelet's retry
    finally:
        for proc, _ in flows.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc, _ in flows.values():
            proc.wait(30)
        for proc in pings.values():
            proc.send_signal(signal.SIGINT)
        outputs = {name: proc.communicate(timeout=10)[0] for name, proc in pings.items()}
        for proc in running:
            proc.kill()
            proc.wait()

    results = {name: json.loads(report.read_text()) for name, (_, report) in flows.items()}
    gaps = {name: _longest_ping_gap(outputs[name]) for name in names}
    print(f"rolling restart of {len(names)} nodes: TCP flows {json.dumps(results)}; longest ping gaps {gaps}")
    for name, result in results.items():
        assert result["connected"] and result["broken"] is None, (name, result)
        assert result["sent"] >= 20 and result["echoed"] == result["sent"], (name, result)
        assert result["longest_gap"] < GRACEFUL_RESTART, (name, result)
        assert gaps[name] < GRACEFUL_RESTART, (name, outputs[name][-2000:])

    # Nothing leaked, nothing lost: the same addresses, blocks, blackholes and routes; the
    # deleted pods' addresses released, the late pods' held.
    after = ipam_check(lab)
    assert after["problems"] == [], after
    state = lab.state()["pods"]
    assert sorted((p["node"], p["name"]) for p in state) == sorted((n, p) for n in names for p in ("p1", "late"))
    wait_until(lambda: ipam_check(lab)["counts"]["addressesInUse"] == len(state), 30,
               f"exactly the {len(state)} pods' addresses held", lab.logs)
    ips = [p["ip"] for p in state]
    assert all(ips) and len(set(ips)) == len(ips), ips
    assert {name: pod(lab, name, "p1")["ip"] for name in names} == {n: p["ip"] for n, p in pods.items()}
    assert {name: own_block(lab, name) for name in names} == blocks
    for name in names:
        wanted = sorted(blocks[o] for o in names if o != name)
        wait_until(lambda: sorted(line.split()[0] for line in bgp_routes(lab, name)) == wanted, 30,
                   f"{name}: one BGP route per other node's block", lambda: "\n".join(bgp_routes(lab, name)))
    for i, name in enumerate(names):  # the late pods are reachable like the others
        src = pods[names[(i + 1) % len(names)]]["netns"]
        late = pod(lab, name, "late")["ip"]
        wait_until(lambda: ping(src, late), 30, f"{late} (late pod on {name}) from another node", lab.logs)
