"""Nodes peer in a full mesh with ExaBGP and install each other's blocks."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.support.agent import ROUTED

pytestmark = [pytest.mark.root, pytest.mark.etcd, pytest.mark.slow]


def test_three_node_mesh_pods_reach_each_other(cluster):
    cluster.apply({"kind": "IPPool", "metadata": {"name": "pods"}, "spec": {"cidr": "10.244.0.0/16"}})
    nodes = [cluster.add_node(f"n{i}", i) for i in (1, 2, 3)]
    pods = [node.add_pod("p") for node in nodes]
    for node in nodes:
        cluster.wait(lambda: cluster.sessions_up(node, 2), what=f"{node.name}'s 2 BGP sessions")
    blocks = {node.name: [line.split()[1] for line in node.routes(201).splitlines() if line.startswith("blackhole")]
              for node in nodes}
    cluster.wait_direct_routes(nodes, blocks)
    for (pod, _), node in zip(pods, nodes):
        for _, ip in pods:
            assert pod.run("ping", "-c1", "-W2", ip, check=False).returncode == 0, f"{node.name} -> {ip}"
    status = subprocess.run([ROUTED.replace("routed", "routedctl"), "node", "status", "--agent",
                             f"http://127.0.0.1:{nodes[0].agent.health_port}", "-o", "wide"],
                            capture_output=True, text=True)
    assert status.returncode == 0, status.stderr
    assert "2 of 2 BGP session(s) up" in status.stdout
    assert status.stdout.count(" mesh ") == 2 and status.stdout.count(" up ") == 2


def test_a_withdrawn_block_leaves_the_other_nodes(cluster):
    cluster.apply({"kind": "IPPool", "metadata": {"name": "pods"}, "spec": {"cidr": "10.244.0.0/16"}})
    a, b = cluster.add_node("a", 1), cluster.add_node("b", 2)
    pod, ip = a.add_pod("p")
    cluster.wait(lambda: cluster.sessions_up(b, 1), what="session up")
    block = [line.split()[1] for line in a.routes(201).splitlines() if line.startswith("blackhole")][0]
    cluster.wait(lambda: block in b.routes(), what="b to learn a's block")
    from ipam.allocator import IPAM

    ipam = IPAM(cluster.kv)
    from tests.support.agent import cni

    assert cni("DEL", a.agent.conf(), container="a-p", netns=pod.path, pod=("default", "a-p"))[0] == 0
    a.pods.clear()
    pod.delete()
    cluster.wait(lambda: len(ipam.empty_blocks("a")) == 1, what="a's block to empty after the DEL")
    (bkey, rev), = ipam.empty_blocks("a")
    assert ipam.release_block(bkey, rev)
    cluster.wait(lambda: block not in b.routes(), what="b to drop a's released block")


def test_a_new_node_does_not_reset_existing_sessions(cluster):
    cluster.apply({"kind": "IPPool", "metadata": {"name": "pods"}, "spec": {"cidr": "10.244.0.0/16"}})
    a, b = cluster.add_node("a", 1), cluster.add_node("b", 2)
    cluster.wait(lambda: cluster.sessions_up(a, 1), what="a-b session")
    (before,) = [p for p in a.peers() if p["address"] == b.ip]
    c = cluster.add_node("c", 3)
    cluster.wait(lambda: cluster.sessions_up(a, 2) and cluster.sessions_up(c, 2), what="c joins the mesh")
    (after,) = [p for p in a.peers() if p["address"] == b.ip]
    assert after["state"] == "up" and after["since"] == before["since"], "the a-b session was reset by the reload"
    assert "SIGUSR1" in (a.workdir / "bgp" / "exabgp.log").read_text() or \
        "reloading" in (a.workdir / "speaker.log").read_text()


def test_a_borrowed_address_is_advertised_as_a_host_route(cluster):
    # One block of 4 per node: a fills its block, b takes the last block, a then borrows from b.
    cluster.apply({"kind": "IPPool", "metadata": {"name": "pods"},
                   "spec": {"cidr": "10.244.0.0/29", "blockSize": 30}})
    a, b = cluster.add_node("a", 1), cluster.add_node("b", 2)
    cluster.wait(lambda: cluster.sessions_up(a, 1), what="a-b session")
    _, b_ip = b.add_pod("p0")
    a_pods = [a.add_pod(f"p{i}") for i in range(5)]
    borrowed = a_pods[-1][1]
    b_block = [line.split()[1] for line in b.routes(201).splitlines() if line.startswith("blackhole")][0]
    import ipaddress

    assert ipaddress.ip_address(borrowed) in ipaddress.ip_network(b_block)
    # b routes the borrowed address to a (the /32 beats its own block's blackhole) ...
    cluster.wait(lambda: f"{borrowed} via {a.ip}" in b.routes(), what="b to learn a's /32")
    # ... and pods on both nodes reach it.
    b_pod = b.pods[0][1]
    assert b_pod.run("ping", "-c1", "-W2", borrowed, check=False).returncode == 0
    assert a_pods[0][0].run("ping", "-c1", "-W2", b_ip, check=False).returncode == 0


def test_exabgp_does_not_outlive_a_killed_speaker(cluster):
    import signal

    from tests.support.wait import eventually

    a = cluster.add_node("a", 1)
    eventually(lambda: a.exabgp_pid() is not None, "ExaBGP started", timeout=30)
    exabgp = a.exabgp_pid()
    os.kill(a.speaker.pid, signal.SIGKILL)
    a.speaker.wait()
    eventually(lambda: not os.path.exists(f"/proc/{exabgp}") or
               open(f"/proc/{exabgp}/stat").read().split()[2] == "Z", "ExaBGP to exit with its speaker")

