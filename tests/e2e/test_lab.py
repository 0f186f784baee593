"""`routed lab` end to end: racks of node namespaces behind BIRD / FRR / GoBGP ToRs, pods
plugged by the real CNI plugin, every pod reaching every other, and `down` leaving nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess

import pytest

from tests.e2e.labutil import LabRun, router_rib
from tests.support.wait import eventually

pytestmark = [pytest.mark.root, pytest.mark.etcd, pytest.mark.slow]


def full_mesh(status: dict, pods: int) -> None:
    reach = status["reachability"]
    assert len(reach["pods"]) == pods
    bad = [f"{s} -> {d}" for s, row in reach["matrix"].items() for d, ok in row.items() if s != d and not ok]
    assert not bad and reach["ok"] == pods * (pods - 1), f"unreachable: {bad}"


def tors_hold_every_block(lab: LabRun, status: dict) -> None:
    state = lab.state()
    blocks = [b["cidr"] for b in status["blocks"]]
    assert len(blocks) == len(state["nodes"])  # one /26 per node for these few pods
    for rack in state["racks"]:
        rib = router_rib(rack["kind"], rack)
        missing = [b for b in blocks if b not in rib]
        assert not missing, f"{rack['tor']} ({rack['kind']}) lacks {missing}:\n{rib}"
        assert sorted(r for r in status["routers"] if r["name"] == rack["tor"])[0]["podRoutes"] == len(blocks)


def assert_gone(lab: LabRun) -> None:
    assert not lab.namespaces(), lab.namespaces()
    assert not lab.running(), lab.running()
    assert not lab.dir.exists()


def test_two_racks_of_bird_full_reachability_then_down_leaves_nothing(lab):
    out = lab.run("up", "--nodes", "4", "--racks", "2", "--pods", "2")
    assert "ALL REACHABLE" in out.stdout and "make lab-down" in out.stdout
    assert "BGP sessions up: 22/22" in out.stderr
    status = lab.status()
    assert [n["rack"] for n in status["nodes"]] == [1, 1, 2, 2]
    assert all(n["agent"] == "ready" and n["speaker"] == "running" for n in status["nodes"])
    if not (all(s["state"] == "up" for s in status["sessions"]) and len(status["sessions"]) == 22):
        # Once in a full run on the 2 cores, a status read right after `up` found a session
        # row not "up" (an agent's /bgp/peers answers within 2 s, or counts as not answering):
        # every session must report up again within seconds, and stay a full mesh.
        def all_up():
            st = lab.status()
            return st if all(s["state"] == "up" for s in st["sessions"]) and len(st["sessions"]) == 22 else None

        status = eventually(all_up, "every BGP session up in status", timeout=60, interval=1.0,
                            details=lambda: json.dumps(lab.status()["sessions"]))
    full_mesh(status, 8)
    tors_hold_every_block(lab, status)
    # Same rack: direct; other rack: VXLAN to the owning node (the mesh's next hop).
    routes = lab.run("routes", "node1").stdout
    assert "via 10.10.1.12 dev eth0 proto 202" in routes
    assert routes.count("dev vxlan.routed proto 202 onlink") == 2 and "blackhole" in routes
    # up again: nothing to do; a pod comes and goes exactly as kubelet does it.
    again = lab.run("up", "--nodes", "4", "--racks", "2")
    assert "already up" in again.stderr and "every process is running" in again.stderr
    added = lab.run("pod", "add", "node3", "web", "--namespace", "shop").stdout
    ip = added.split(": ")[1].split()[0]
    pod = next(p for p in lab.state()["pods"] if p["name"] == "web")
    assert pod["namespace"] == "shop" and os.path.exists(f"/var/run/netns/{pod['netns']}")
    lab.run("pod", "del", "node3", "web")
    assert not os.path.exists(f"/var/run/netns/{pod['netns']}")
    assert ip not in json.dumps(lab.status()["pods"])
    lab.down()
    assert_gone(lab)


@pytest.mark.parametrize("tor, encap", [("frr", "none"), ("gobgp", "vxlan")])
def test_two_nodes_in_two_racks_with_other_tor_daemons(lab, tor, encap):
    """FRR with no encapsulation: pods of different racks reach each other only through the
    ToRs' kernel routes (zebra installs them). GoBGP (RIB only) with VXLAN everywhere."""
    lab.run("up", "--nodes", "2", "--racks", "2", "--tor", tor, "--encap", encap, "--pods", "1")
    status = lab.status()
    # each node: 1 mesh + its ToR; each ToR: its node + the other ToR
    assert all(s["state"] == "up" for s in status["sessions"]) and len(status["sessions"]) == 8
    full_mesh(status, 2)
    tors_hold_every_block(lab, status)
    state = lab.state()
    node1 = lab.run("routes", "node1").stdout
    other_block = next(b["cidr"] for b in status["blocks"] if b["node"] == "node2")
    if encap == "none":
        assert other_block not in node1  # the default route to the ToR carries it
        tor = subprocess.run(["ip", "-n", state["racks"][0]["tor_ns"], "route"], capture_output=True, text=True)
        assert f"{other_block} nhid" in tor.stdout and "proto bgp" in tor.stdout, tor.stdout
    else:
        assert f"{other_block} via 10.10.2.12 dev vxlan.routed" in node1
    lab.down()
    assert_gone(lab)


def test_down_after_a_crash_finds_everything(lab):
    """The state file lost, a speaker SIGKILLed (its ExaBGP orphaned): down still cleans up."""
    lab.run("up", "--nodes", "1", "--racks", "1", "--pods", "1")
    state = lab.state()
    os.kill(state["nodes"][0]["pids"]["speaker"], signal.SIGKILL)
    (lab.dir / "lab.json").unlink()
    lab.down()
    assert_gone(lab)


def test_ipip_is_refused_on_a_kernel_without_it(lab):
    out = lab.run("up", "--encap", "ipip", check=False)
    assert out.returncode == 1 and "no IPIP support" in out.stderr
    assert not lab.namespaces()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_wireguard_lab_encrypts_between_racks_and_down_stops_wireguard_go(lab):
    lab.run("up", "--nodes", "2", "--racks", "2", "--wireguard", "--pods", "1")
    state = lab.state()
    ips = {p["node"]: p["ip"] for p in state["pods"]}

    def via_wireguard(node: dict, other: str) -> bool:
        return "dev wg.routed" in subprocess.run(["ip", "-n", node["netns"], "route", "get", ips[other]],
                                                 capture_output=True, text=True).stdout

    # The agents bring WireGuard up a pass after registering: until then, in clear.
    eventually(lambda: via_wireguard(state["nodes"][0], "node2") and via_wireguard(state["nodes"][1], "node1"),
               "pod routes through wg.routed on both nodes", timeout=60)
    status = lab.status()
    full_mesh(status, 2)
    peers = {(w["node"], w["peer"]): w for w in status["wireguard"]}
    assert set(peers) == {("node1", "node2"), ("node2", "node1")}, status["wireguard"]
    assert all(w["state"].startswith("handshake") and w["rx"] > 0 for w in peers.values()), peers
    shown = lab.run("status", "--no-ping").stdout
    assert "+ WireGuard" in shown and "WIREGUARD PEERS" in shown
    daemons = [int(pid) for n in state["nodes"] for pid in subprocess.run(
        ["ip", "netns", "pids", n["netns"]], capture_output=True, text=True).stdout.split()
        if open(f"/proc/{pid}/comm").read().strip() == "wireguard-go"]
    assert len(daemons) == 2, daemons
    lab.down()
    assert_gone(lab)
    assert not [pid for pid in daemons if _alive(pid)], "wireguard-go outlived the lab"
