"""`routed lab up --dual-stack` end to end (issue 15): nodes, rack links and pods get IPv6
too, every session has an IPv6 twin, every pod reaches every other over IPv4 and IPv6
across racks, and each ToR kind (BIRD, FRR, GoBGP) holds every IPv6 block."""

from __future__ import annotations

import ipaddress
import subprocess

import pytest

from tests.e2e.labutil import LabRun, router_rib

pytestmark = [pytest.mark.root, pytest.mark.etcd, pytest.mark.slow]


def all_ok(reach: dict, pods: int) -> None:
    bad = [f"{s} -> {d}" for s, row in reach["matrix"].items() for d, ok in row.items() if s != d and not ok]
    assert not bad and reach["ok"] == pods * (pods - 1), f"unreachable: {bad}"


@pytest.mark.parametrize("tor, encap, nodes", [("bird", "crosssubnet", 4), ("frr", "none", 2), ("gobgp", "vxlan", 2)])
def test_dual_stack_lab_reaches_every_pod_over_both_families(lab: LabRun, tor, encap, nodes):
    lab.run("up", "--dual-stack", "--nodes", str(nodes), "--racks", "2", "--tor", tor, "--encap", encap,
            "--pods", "1")
    status = lab.status()
    state = lab.state()
    # Every session of the IPv4 lab, and its IPv6 twin: nodes n-1 mesh + 1 ToR, ToRs their nodes + 1.
    sessions = status["sessions"]
    assert all(s["state"] == "up" for s in sessions), [s for s in sessions if s["state"] != "up"]
    assert len(sessions) == 2 * (nodes * nodes + nodes + 2)
    assert sum(":" in s["peer"] for s in sessions) == len(sessions) // 2
    # Nodes registered both addresses; pods have both.
    assert all(n.get("address6", "").startswith("fd10:10:") for n in status["nodes"]), status["nodes"]
    assert all(p["ip"] and p.get("ip6", "").startswith("fd00:244:") for p in status["pods"]), status["pods"]
    all_ok(status["reachability"], nodes)
    all_ok(status["reachability6"], nodes)
    # Each ToR holds every IPv6 block (and every IPv4 one), asked through its own CLI.
    blocks6 = [b["cidr"] for b in status["blocks"] if ipaddress.ip_network(b["cidr"]).version == 6]
    blocks4 = [b["cidr"] for b in status["blocks"] if ipaddress.ip_network(b["cidr"]).version == 4]
    assert len(blocks6) == len(blocks4) == nodes
    for rack in state["racks"]:
        rib = router_rib(tor, rack, "ipv6")
        missing = [b for b in blocks6 if b not in rib]
        assert not missing, f"{rack['tor']} ({tor}) lacks {missing}:\n{rib}"
        row = next(r for r in status["routers"] if r["name"] == rack["tor"])
        assert row["podRoutes"] == 2 * nodes and set(blocks6 + blocks4) <= set(row["routes"]), row
    node1 = lab.run("routes", "node1").stdout
    v6 = subprocess.run(["ip", "-n", state["nodes"][0]["netns"], "-6", "route", "show", "proto", "202"],
                        capture_output=True, text=True).stdout
    other = next(b["cidr"] for b in status["blocks"] if b["node"] == f"node{nodes}" and ":" in b["cidr"])
    if encap == "none":  # through the ToRs: FRR's zebra installed the IPv6 blocks in their kernels
        assert other not in v6, v6
        tor_routes = subprocess.run(["ip", "-n", state["racks"][0]["tor_ns"], "-6", "route"],
                                    capture_output=True, text=True).stdout
        assert other in tor_routes and "proto bgp" in tor_routes, tor_routes
    else:  # the other rack's IPv6 block over VXLAN on IPv6
        assert f"{other} via fe80::" in v6 and "dev vxlan-v6.routed" in v6, v6
    assert "Traceback" not in lab.logs() and node1
    lab.down()
    assert not lab.namespaces() and not lab.running()


def test_dual_stack_with_ipip_is_refused_in_one_line(lab: LabRun):
    out = lab.run("up", "--dual-stack", "--encap", "ipip", check=False)
    assert out.returncode != 0 and "IPIP carries IPv4 only" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr and not lab.namespaces()
