"""A routed cluster of node namespaces for BGP tests: real etcd, agents, ExaBGP speakers."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

from routed import resources as r
from routed.datastore.resources import ResourceStore
from routed.lab import topology
from tests.support.agent import ROUTED, AgentProcess, cni
from tests.support.netns import Netns


class _Named:
    """Enough of tests.support.netns.Netns for AgentProcess, for namespaces topology made."""

    def __init__(self, name: str):
        self.name = name
        self.path = f"/var/run/netns/{name}"

    def run(self, *args: str, check: bool = True):
        return topology.run_in(self.name, *args, check=check)


class Node:
    def __init__(self, cluster: Cluster, name: str, address: str, labels: str = ""):
        self.cluster, self.name, self.address = cluster, name, address
        self.ip = address.split("/")[0]
        self.ns = _Named(f"{cluster.prefix}{name}")
        self.workdir = cluster.workdir / name
        self.agent = AgentProcess(self.workdir, cluster.etcd.url, self.ns, name, address, labels=labels, bgp=True)
        self.speaker: subprocess.Popen | None = None
        self.pods: list[tuple[str, Netns, str]] = []

    def start(self) -> Node:
        self.agent.start()
        self.start_speaker()
        return self

    def start_speaker(self) -> None:
        log = open(self.workdir / "speaker.log", "ab")
        self.speaker = subprocess.Popen([ROUTED, "bgp-speaker", "--config-dir", str(self.workdir / "bgp"),
                                         "--netns", self.ns.name], stdout=log, stderr=subprocess.STDOUT)

    def exabgp_pid(self) -> int | None:
        try:
            return int(subprocess.run(["pgrep", "-P", str(self.speaker.pid)], capture_output=True, text=True)
                       .stdout.split()[0])
        except (IndexError, ValueError):
            return None

    def stop(self) -> None:
        if self.speaker and self.speaker.poll() is None:
            self.speaker.send_signal(signal.SIGTERM)
            try:
                self.speaker.wait(15)
            except subprocess.TimeoutExpired:
                self.speaker.kill()
                self.speaker.wait()
        self.agent.stop()

    def peers(self) -> list[dict]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.agent.health_port}/bgp/peers", timeout=3) as resp:
            return json.loads(resp.read())

    def routes(self, proto: int = 202) -> str:
        return self.ns.run("ip", "route", "show", "proto", str(proto)).stdout

    def add_pod(self, name: str, conf_extra: dict | None = None) -> tuple[Netns, str]:
        pod = Netns("pod")
        code, result, raw = cni("ADD", self.agent.conf(**(conf_extra or {})), container=f"{self.name}-{name}",
                                netns=pod.path, pod=("default", f"{self.name}-{name}"))
        if code != 0:
            pod.delete()
            raise AssertionError(f"ADD on {self.name} failed: {raw}")
        ip = result["ips"][0]["address"].split("/")[0]
        self.pods.append((name, pod, ip))
        return pod, ip


class Cluster:
    """A switch (bridge) namespace and nodes plugged into it; everything removed on exit."""

    def __init__(self, workdir: Path, etcd, subnet: str = "192.0.2.0/24"):
        self.workdir, self.etcd, self.subnet = Path(workdir), etcd, subnet
        self.prefix = f"rt-{secrets.token_hex(2)}-"
        self.switch = topology.add_netns(f"{self.prefix}sw")
        topology.add_bridge(self.switch)
        self.kv = etcd.client()
        self.store = ResourceStore(self.kv)
        self.nodes: list[Node] = []

    def apply(self, doc: dict):
        return self.store.apply(r.parse({"apiVersion": "routed.io/v1", **doc}))[0]

    def add_node(self, name: str, index: int, start: bool = True, switch: str | None = None,
                 subnet: str | None = None, gateway: str | None = None, labels: str = "") -> Node:
        address = topology.host_address(subnet or self.subnet, index)
        node = Node(self, name, address, labels)
        topology.add_netns(node.ns.name)
        topology.plug(node.ns.name, "eth0", switch or self.switch, address)
        # A default route, as every real node has: proxy ARP for the pods' gateway needs one.
        topology.default_route(node.ns.name, gateway, "eth0")
        self.nodes.append(node)
        return node.start() if start else node

    def wait(self, predicate, timeout: float = 60.0, what: str = "condition") -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}\n" + self.logs())
            time.sleep(0.2)

    def sessions_up(self, node: Node, count: int) -> bool:
        try:
            return sum(p["state"] == "up" for p in node.peers()) >= count
        except OSError:
            return False

    def logs(self) -> str:
        out = []
        for node in self.nodes:
            for name in ("agent.log", "speaker.log", "bgp/exabgp.log"):
                path = node.workdir / name
                if path.exists():
                    out.append(f"--- {node.name}/{name}\n" + path.read_text()[-2500:])
        return "\n".join(out)

    def close(self) -> None:
        for node in self.nodes:
            for _, pod, _ in node.pods:
                pod.delete()
            node.stop()
        for name in topology.list_netns(self.prefix):
            topology.del_netns(name)
        self.kv.close()
