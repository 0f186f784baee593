"""The ExaBGP sidecar works with the privileges the chart gives it (issue 10.8): real
agents, real ExaBGP speakers in a two-node mesh, the speakers started through setpriv:

- port 179: uid 0 with NET_BIND_SERVICE as its only capability;
- an unprivileged listen port: a non-root user with no capability, sharing only the
  BGP directory's group with the agent (the chart's fsGroup; here a setgid directory).

Routes must flow both ways and the pods must reach each other; ExaBGP must run with
exactly those credentials."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from tests.support.cluster import Cluster

pytestmark = [pytest.mark.root, pytest.mark.etcd, pytest.mark.slow]

NOBODY = 65534  # nobody / nogroup
CAP_NET_BIND_SERVICE = 10
PRIVILEGES = {
    "root-net-bind-only": (179, 0, ["setpriv", "--inh-caps=-all", "--bounding-set=-all,+net_bind_service", "--"]),
    "non-root-port-1179": (1179, NOBODY, ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
                                          "--inh-caps=-all", "--bounding-set=-all", "--"]),
}


@pytest.fixture
def cluster(etcd, root):
    # Not pytest's tmp_path: a non-root speaker must be able to walk to its directory.
    workdir = Path(tempfile.mkdtemp(prefix="rt-lp-", dir="/tmp"))
    os.chmod(workdir, 0o755)
    c = Cluster(workdir, etcd)
    try:
        yield c
    finally:
        c.close()
        shutil.rmtree(workdir, ignore_errors=True)


def _status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {k: v.strip() for k, _, v in (line.partition(":") for line in lines)}


@pytest.mark.parametrize("mode", sorted(PRIVILEGES))
def test_speaker_with_least_privilege_peers_and_routes(cluster, mode):
    port, uid, drop = PRIVILEGES[mode]
    cluster.apply({"kind": "IPPool", "metadata": {"name": "pods"}, "spec": {"cidr": "10.244.0.0/16"}})
    cluster.apply({"kind": "BGPConfiguration", "metadata": {"name": "default"}, "spec": {"listenPort": port}})
    nodes = []
    for index, name in ((1, "a"), (2, "b")):
        node = cluster.add_node(name, index, start=False)
        shared = node.workdir / "bgp"
        shared.mkdir(parents=True)
        os.chown(shared, 0, uid)  # what fsGroup does to the pod's shared volume
        os.chmod(shared, 0o2770)
        node.agent.extra_args += ["--bgp-socket", str(shared / "agent.sock")]  # as the chart has it
        node.agent.start()
        node.start_speaker(drop)
        nodes.append(node)
    pods = [node.add_pod("p") for node in nodes]
    for node in nodes:
        cluster.wait(lambda: cluster.sessions_up(node, 1), what=f"{node.name}'s BGP session")
    for node, other in ((nodes[0], nodes[1]), (nodes[1], nodes[0])):
        cluster.wait(lambda: all(f"{b} via {other.ip} dev eth0" in node.routes() for b in other.blocks()),
                     what=f"{node.name} to learn {other.name}'s blocks")
    (pod_a, _), (_, ip_b) = pods
    assert pod_a.run("ping", "-c1", "-W2", ip_b, check=False).returncode == 0

    for node in nodes:
        exabgp = cluster.wait(node.exabgp_pid, what=f"{node.name}'s ExaBGP")
        status = _status(exabgp)
        assert status["Uid"].split()[:2] == [str(uid)] * 2 and status["Gid"].split()[:2] == [str(uid)] * 2
        expected = (1 << CAP_NET_BIND_SERVICE) if uid == 0 else 0
        assert int(status["CapEff"], 16) == expected and int(status["CapBnd"], 16) == expected
        assert f":{port}" in node.ns.run("ss", "-Htln").stdout
        # the MD5-capable configuration is never readable by others
        assert os.stat(node.workdir / "bgp" / "exabgp.conf").st_mode & 0o007 == 0
