"""`routedctl node diags` and `routedctl version` against a real agent driving a namespace that plays
the node's host, a real etcd and a pod added through the installed CNI plugin."""

from __future__ import annotations

import json
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from routed import resources as r
from routed.datastore.resources import ResourceStore
from routed.version import version
from tests.support.agent import AgentProcess, cni
from tests.support.etcd import EtcdServer, free_port
from tests.support.netns import Netns, node_host
from tests.support.wait import eventually

pytestmark = pytest.mark.root

ROUTEDCTL = str(Path(__file__).resolve().parents[2] / ".venv" / "bin" / "routedctl")
NODE_IP = "192.0.2.10"


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.fail("these tests need root (network namespaces)", pytrace=False)
    workdir = tmp_path_factory.mktemp("diags")
    etcd = EtcdServer(workdir / "etcd").start()
    host = node_host(f"{NODE_IP}/24")
    pod = Netns("pod")
    agent = None
    try:
        kv = etcd.client()
        ResourceStore(kv).create(r.parse({"apiVersion": "routed.io/v1", "kind": "IPPool",
                                          "metadata": {"name": "main"}, "spec": {"cidr": "10.51.0.0/16"}}))
        agent = AgentProcess(workdir / "agent", etcd.url, host, "node-1", f"{NODE_IP}/24").start()
        code, result, raw = cni("ADD", agent.conf(), container="diag-pod", netns=pod.path)
        assert code == 0, raw
        pod_ip = result["ips"][0]["address"].split("/")[0]
        # A route as the BGP controller installs one, so protocol 202 has something to list.
        host.run("ip", "route", "add", "10.77.0.0/26", "via", "192.0.2.1", "proto", "202")
        yield type("Node", (), {"etcd": etcd, "host": host, "agent": agent, "pod_ip": pod_ip, "workdir": workdir})
    finally:
        if agent:
            agent.stop()
        pod.delete()
        host.delete()
        etcd.stop()


def routedctl(node, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROUTED_")}
    env["ROUTED_ETCD_ENDPOINTS"] = node.etcd.url
    return subprocess.run([ROUTEDCTL, *args], env=env, capture_output=True, text=True, timeout=180)


def agent_url(node) -> str:
    return f"http://127.0.0.1:{node.agent.health_port}"


def read_archive(path: Path) -> dict[str, str]:
    with tarfile.open(path, "r:gz") as tar:
        members = tar.getmembers()
        tops = {m.name.split("/")[0] for m in members}
        assert len(tops) == 1 and next(iter(tops)).startswith("routed-diags-node-1-"), tops
        return {m.name.split("/", 1)[1]: tar.extractfile(m).read().decode(errors="replace") for m in members}


def test_diags_archive_holds_what_a_bug_report_needs(node, tmp_path):
    archive = tmp_path / "diags.tar.gz"
    extra = tmp_path / "kubelet.log"
    extra.write_text("kubelet says hello\n")
    proc = routedctl(node, "node", "diags", "--file", str(archive), "--agent", agent_url(node),
                     "--node-name", "node-1", "--netns", node.host.name, "--agent-log", str(node.agent.log),
                     "--bgp-dir", str(tmp_path / "no-bgp-here"), "--log", str(extra))
    assert proc.returncode == 0, proc.stderr
    assert f"wrote {archive}" in proc.stdout
    files = read_archive(archive)

    # Routes of both protocols, and the block's blackhole, from the node's namespace.
    assert f"{node.pod_ip} dev" in files["routes/ipv4-pods-proto201.txt"]
    assert "blackhole 10.51." in files["routes/ipv4-blackholes.txt"]
    assert "10.77.0.0/26 via 192.0.2.1" in files["routes/ipv4-bgp-proto202.txt"]
    assert f"inet {NODE_IP}/24" in files["network/addresses.txt"] and "uplink0" in files["network/links.txt"]
    # The host's own addresses are not what was listed: the namespace's were.
    assert "uplink0" not in subprocess.run(["ip", "link", "show"], capture_output=True, text=True).stdout
    # Firewall listings: a listing or a recorded failure, never nothing.
    for name in ("firewall/nft-ruleset.txt", "firewall/iptables-save.txt", "firewall/ip6tables-save.txt"):
        assert name in files or name + ".error" in files, sorted(files)

    assert json.loads(files["agent/bgp-peers.json"]) == []  # this agent runs without BGP
    assert "routed_" in files["agent/metrics.txt"]
    assert "agent for node node-1" in files["logs/agent.log"]
    assert files["logs/extra-1-kubelet.log"] == "kubelet says hello\n"

    ipam = json.loads(files["ipam/node.json"])
    assert ipam["node"] == "node-1" and [b["node"] for b in ipam["blocks"]] == ["node-1"]
    assert ipam["blocks"][0]["inUse"] == 1

    versions = json.loads(files["versions.json"])
    assert versions["client"]["version"] == version()
    assert versions["agent"]["version"] == version() and versions["agent"]["node"] == "node-1"

    # ExaBGP's log is not there: recorded as a failure naming the path, and the rest still collected.
    missing = str(tmp_path / "no-bgp-here" / "exabgp.log")
    assert missing in files["logs/exabgp.log.error"]
    summary = json.loads(files["summary.json"])
    assert set(summary["failed"]) >= {"logs/exabgp.log"}
    assert "routes/ipv4-pods-proto201.txt" in summary["collected"]


def test_diags_with_nothing_reachable_still_writes_the_archive(node, tmp_path):
    archive = tmp_path / "broken.tar.gz"
    dead = f"http://127.0.0.1:{free_port()}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROUTED_")}
    env["ROUTED_ETCD_ENDPOINTS"] = dead
    proc = subprocess.run([ROUTEDCTL, "-o", "json", "node", "diags", "--file", str(archive), "--agent", dead,
                           "--node-name", "node-1", "--netns", "rt-no-such-netns", "--bgp-dir", str(tmp_path)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    # versions.json is the one item that is written whatever answers (see below).
    assert result["archive"] == str(archive) and result["collected"] == ["versions.json"]
    files = read_archive(archive)
    assert "rt-no-such-netns" in files["routes/ipv4-pods-proto201.txt.error"]
    assert dead in files["agent/bgp-peers.json.error"]
    assert dead in files["ipam/node.json.error"]
    assert "--agent-log" in files["logs/agent.log.error"]
    # versions.json is still written: each part says it could not be asked.
    versions = json.loads(files["versions.json"])
    assert dead in versions["agent"]["error"] and dead in versions["cluster"]["error"]


def test_version_names_client_cluster_and_agent(node):
    proc = routedctl(node, "version", "--agent", agent_url(node))
    assert proc.returncode == 0, proc.stderr
    rows = [line.split(None, 2) for line in proc.stdout.splitlines()]
    assert rows[0] == ["COMPONENT", "VERSION", "DETAIL"]
    assert rows[1] == ["client", version(), "routedctl"]
    assert rows[2][:2] == ["cluster", "routed/v1"] and "1 node(s) registered" in rows[2][2]
    assert rows[3] == ["agent", version(), f"node node-1 at {agent_url(node)}"]
    doc = json.loads(routedctl(node, "version", "--agent", agent_url(node), "-o", "json").stdout)
    assert doc["cluster"]["nodes"] == ["node-1"] and doc["cluster"]["layoutPresent"] is True
