"""The plugin on a node with nothing else: a root filesystem holding only what
`routed install-cni` wrote (no interpreter, no shared libraries), with the agent's
directory (socket and spool) and /var/run/netns bind-mounted in, as on a distroless host.

The bind mounts live in a mount namespace of the plugin's own (`unshare --mount`), so they
vanish with it; chroot execs the plugin, the only program that runs inside.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from ipam.allocator import IPAM
from routed import resources as r
from routed.datastore.resources import ResourceStore
from tests.support.agent import ROUTED, AgentProcess
from tests.support.netns import Netns, node_host
from tests.support.wait import eventually

pytestmark = pytest.mark.root

NODE_IP = "192.0.2.40"


def _require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.fail(f"missing test dependency: {tool} (Debian package util-linux/coreutils)", pytrace=False)
    return path


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if not p.is_dir())


def in_chroot(root: Path, agent_dir: Path, command: str, container: str, netns: str, stdin: str):
    """Exec /opt/cni/bin/routed inside root as a runtime would; (exit code, stdout)."""
    for tool in ("mount", "chroot"):
        _require(tool)
    script = ('set -e; mount --bind "$1" "$2$1"; mount --rbind /var/run/netns "$2/var/run/netns"; '
              'exec chroot "$2" /opt/cni/bin/routed')
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "CNI_COMMAND": command, "CNI_CONTAINERID": container,
           "CNI_NETNS": netns, "CNI_IFNAME": "eth0", "CNI_PATH": "/opt/cni/bin",
           "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAMESPACE=ns1;K8S_POD_NAME={container}"}
    proc = subprocess.run([_require("unshare"), "--mount", "--propagation", "private", "sh", "-c", script, "sh",
                           str(agent_dir), str(root)], input=stdin, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.stderr == "", proc.stderr
    return proc.returncode, proc.stdout


def test_add_and_del_in_an_empty_root_filesystem(tmp_path, etcd):
    root = tmp_path / "root"
    host = node_host(f"{NODE_IP}/24")
    agent = pod = None
    try:
        ResourceStore(etcd.client()).create(r.parse({"apiVersion": "routed.io/v1", "kind": "IPPool",
                                                     "metadata": {"name": "main"}, "spec": {"cidr": "10.53.0.0/16"}}))
        agent = AgentProcess(tmp_path / "agent", etcd.url, host, "node-c", f"{NODE_IP}/24").start()
        proc = subprocess.run([ROUTED, "install-cni", "--bin-dir", str(root / "opt/cni/bin"), "--conf-dir",
                               str(root / "etc/cni/net.d"), "--cni-socket", agent.socket, "--spool-dir", agent.spool,
                               "--no-chain"], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        assert files_under(root) == ["etc/cni/net.d/10-routed.conflist", "opt/cni/bin/routed"]
        # Mount points only: empty directories where the node's paths are bound in.
        agent_dir = Path(agent.socket).parent
        (root / agent_dir.relative_to("/")).mkdir(parents=True)
        (root / "var/run/netns").mkdir(parents=True)

        conflist = json.loads((root / "etc/cni/net.d/10-routed.conflist").read_text())
        stdin = json.dumps({**conflist["plugins"][0], "name": conflist["name"], "cniVersion": conflist["cniVersion"]})
        pod = Netns("pod")
        code, out = in_chroot(root, agent_dir, "ADD", "chroot-a", pod.path, stdin)
        assert code == 0, out + agent.log.read_text()[-2000:]
        ip = json.loads(out)["ips"][0]["address"].split("/")[0]
        assert f"inet {ip}/32 " in pod.run("ip", "-4", "-o", "addr", "show", "dev", "eth0").stdout
        ipam = IPAM(etcd.client())
        assert [str(a) for a in ipam.held_by("k8s-pod-network.chroot-a.eth0")] == [ip]

        code, out = in_chroot(root, agent_dir, "DEL", "chroot-a", pod.path, stdin)
        assert code == 0, out
        eventually(lambda: not ipam.held_by("k8s-pod-network.chroot-a.eth0"), "the address released")

        # With the agent away, DEL spools into the agent's (bound) spool directory from inside.
        agent.stop()
        code, out = in_chroot(root, agent_dir, "DEL", "chroot-b", pod.path, stdin)
        assert code == 0, out
        assert len(list(Path(agent.spool).glob("chroot-b-eth0-*.req"))) == 1
        # Nothing of the node leaked into the root: the mounts went with their namespace.
        assert files_under(root) == ["etc/cni/net.d/10-routed.conflist", "opt/cni/bin/routed"]
    finally:
        if agent is not None:
            agent.stop()
        if pod is not None:
            pod.delete()
        host.delete()
