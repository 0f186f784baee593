"""Taking routed off a node: the agent on the uninstall marker, and `routed cleanup-node`
by hand. Real agent, real etcd, real namespaces and iptables; only what is ours goes."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from routed import resources as r
from routed.dataplane import nat
from routed.dataplane.constants import VXLAN_DEV
from routed.datastore import keys, uninstall
from routed.datastore.resources import ResourceStore
from tests.support.agent import ROUTED, AgentProcess, cni
from tests.support.netns import Netns, node_host
from tests.support.wait import eventually

pytestmark = pytest.mark.root

FOREIGN = "203.0.113.0/24"  # the administrator's route: must stay


def install_cni(workdir: Path) -> tuple[Path, Path]:
    conf_dir, bin_dir = workdir / "net.d", workdir / "bin"
    subprocess.run([ROUTED, "install-cni", "--bin-dir", str(bin_dir), "--conf-dir", str(conf_dir)],
                   check=True, capture_output=True, timeout=60)
    return conf_dir / "10-routed.conflist", bin_dir / "routed"


def dirty(host: Netns) -> None:
    """What BGP would have installed on a VXLAN node (no peers here), and a route not ours."""
    host.run("ip", "link", "add", VXLAN_DEV, "type", "vxlan", "id", "4096", "dstport", "4789", "dev", "uplink0")
    host.run("ip", "link", "set", VXLAN_DEV, "up")
    host.run("ip", "route", "add", "10.99.1.0/26", "via", "192.0.2.11", "dev", "uplink0", "proto", "202")
    host.run("ip", "route", "add", FOREIGN, "dev", "uplink0", "proto", "static")


def ours_left(host: Netns) -> list[str]:
    found = []
    for proto in ("201", "202"):
        found += [f"proto {proto}: {line}" for line in
                  host.run("ip", "route", "show", "table", "all", "proto", proto).stdout.splitlines()]
    if host.run("ip", "link", "show", VXLAN_DEV, check=False).returncode == 0:
        found.append(VXLAN_DEV)
    if nat.CHAIN in host.run("iptables-save", "-t", "nat").stdout:
        found.append(nat.CHAIN)
    return found


def test_agent_takes_routed_off_its_node_on_the_uninstall_marker(tmp_path, etcd, kv, root):
    host, pod, agent = node_host("192.0.2.10/24"), Netns("pod"), None
    try:
        conflist, plugin = install_cni(tmp_path / "cni")
        ResourceStore(kv).create(r.parse({"apiVersion": "routed.io/v1", "kind": "IPPool", "metadata": {"name": "p"},
                                          "spec": {"cidr": "10.70.0.0/16", "natOutgoing": True}}))
        agent = AgentProcess(tmp_path / "agent", etcd.url, host, "node-1", "192.0.2.10/24",
                             extra_args=["--cni-conf-dir", str(conflist.parent),
                                         "--cni-bin-dir", str(plugin.parent)]).start()
        code, _, raw = cni("ADD", agent.conf(), netns=pod.path, container="u1")
        assert code == 0, raw
        dirty(host)
        eventually(lambda: nat.CHAIN in host.run("iptables-save", "-t", "nat").stdout, "natOutgoing chain")
        eventually(lambda: "blackhole" in host.run("ip", "route", "show", "proto", "201").stdout, "block blackhole")
        assert len(ours_left(host)) >= 5  # pod route, blackhole, learned route, vxlan device, chain

        uninstall.request(kv)
        eventually(lambda: kv.get(keys.uninstall_done("node-1")), "the agent's done key", timeout=30,
                   details=lambda: agent.log.read_text())
        assert ours_left(host) == []
        assert not conflist.exists() and not plugin.exists()
        assert FOREIGN in host.run("ip", "route", "show", "proto", "static").stdout
        # Still running (an exit would get it restarted, and it would install it all again) and healthy.
        assert agent.proc.poll() is None
        assert agent.healthz()[0] == 200
        agent.stop()
        assert agent.proc.returncode == 0
        assert ours_left(host) == []
    finally:
        if agent is not None:
            agent.stop()
        pod.delete()
        host.delete()


def test_cleanup_node_by_hand_removes_only_ours_and_is_idempotent(tmp_path, root):
    host = node_host("192.0.2.10/24")
    try:
        conflist, plugin = install_cni(tmp_path / "cni")
        dirty(host)
        host.run("ip", "route", "add", "blackhole", "10.70.0.0/26", "proto", "201")
        nat.sync(host.name, ["10.70.0.0/16"], ["10.70.0.0/16"])
        argv = [ROUTED, "cleanup-node", "--netns", host.name, "--conf-dir", str(conflist.parent),
                "--bin-dir", str(plugin.parent)]
        first = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        assert first.returncode == 0, first.stderr
        assert f"removed {conflist}" in first.stdout and f"removed device {VXLAN_DEV}" in first.stdout
        assert "removed 1 route(s) of proto 201 and 1 of proto 202" in first.stdout
        assert ours_left(host) == [] and not conflist.exists() and not plugin.exists()
        assert FOREIGN in host.run("ip", "route", "show", "proto", "static").stdout
        second = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        assert second.returncode == 0, second.stderr
        assert "removed 0 route(s) of proto 201 and 0 of proto 202" in second.stdout
        assert "removed /" not in second.stdout and "removed device" not in second.stdout
    finally:
        host.delete()
