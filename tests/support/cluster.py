"""A routed cluster of node namespaces for BGP tests: real etcd, agents, ExaBGP speakers."""

from __future__ import annotations

import json
import secrets
import signal
import subprocess
import urllib.request
from pathlib import Path

from routed import resources as r
from routed.datastore.resources import ResourceStore
from routed.lab import topology
from tests.support.agent import ROUTED, AgentProcess, cni
from tests.support.netns import Netns
from tests.support.wait import eventually

ROUTEDCTL = str(Path(ROUTED).with_name("routedctl"))


class _Named:
    """Enough of tests.support.netns.Netns for AgentProcess, for namespaces topology made."""

    def __init__(self, name: str):
        self.name = name
        self.path = f"/var/run/netns/{name}"

    def run(self, *args: str, check: bool = True):
        return topology.run_in(self.name, *args, check=check)


class Node:
    def __init__(self, cluster: Cluster, name: str, address: str, labels: str = "", address6: str | None = None):
        self.cluster, self.name, self.address, self.address6 = cluster, name, address, address6
        self.ip = address.split("/")[0]
        self.ip6 = address6.split("/")[0] if address6 else None
        self.ns = _Named(f"{cluster.prefix}{name}")
        self.workdir = cluster.workdir / name
        self.agent = AgentProcess(self.workdir, cluster.etcd.url, self.ns, name, address, labels=labels, bgp=True,
                                  secrets_dir=cluster.secrets_dir,
                                  extra_args=["--node-ip6", address6] if address6 else None)
        self.speaker: subprocess.Popen | None = None
        self.pods: list[tuple[str, Netns, str]] = []

    def start(self) -> Node:
        self.agent.start()
        self.start_speaker()
        return self

    def start_speaker(self, drop: list[str] | None = None) -> None:
        """drop: a command (setpriv ...) that takes privileges away: the speaker then runs
        inside the node's namespace already, as the chart runs it in the host network."""
        log = open(self.workdir / "speaker.log", "ab")
        argv = [ROUTED, "bgp-speaker", "--config-dir", str(self.workdir / "bgp")]
        argv = ["ip", "netns", "exec", self.ns.name, *drop, *argv] if drop else [*argv, "--netns", self.ns.name]
        self.speaker = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)

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

    def blocks(self) -> list[str]:
        """The blocks this node owns (its proto-201 blackhole routes)."""
        return [line.split()[1] for line in self.routes(201).splitlines() if line.startswith("blackhole")]

    def status(self, output: str = "wide") -> subprocess.CompletedProcess:
        """`routedctl node status` against this node's agent."""
        return subprocess.run([ROUTEDCTL, "node", "status", "--agent", f"http://127.0.0.1:{self.agent.health_port}",
                               "-o", output], capture_output=True, text=True)

    def peer(self, address: str) -> dict:
        return next(p for p in self.peers() if p["address"] == address)

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

    def __init__(self, workdir: Path, etcd, subnet: str = "192.0.2.0/24", secrets_dir: str | None = None):
        self.workdir, self.etcd, self.subnet = Path(workdir), etcd, subnet
        self.secrets_dir = secrets_dir  # the agents' --secrets-dir (BGP passwords), if any
        self.prefix = f"rt-{secrets.token_hex(2)}-"
        self.nodes: list[Node] = []
        self.routers: list = []  # tests.bgp.routers.Router instances, stopped on close
        self.switch = self.add_switch("sw")
        self.kv = etcd.client()
        self.store = ResourceStore(self.kv)

    def add_switch(self, name: str) -> str:
        """Another L2 segment: a namespace holding a bridge. Returns the namespace name."""
        switch = topology.add_netns(f"{self.prefix}{name}")
        topology.add_bridge(switch)
        return switch

    def add_netns(self, name: str, legs: list[tuple[str, str, str]] = (), gateway: str | None = None) -> str:
        """A plain namespace (a router between switches, a ToR) plugged into switches:
        legs = [(ifname, switch namespace, address/prefix)]. It forwards (add_netns)."""
        ns = topology.add_netns(f"{self.prefix}{name}")
        for ifname, switch, address in legs:
            topology.plug(ns, ifname, switch, address)
        if gateway:
            topology.default_route(ns, gateway, legs[0][0])
        return ns

    def add_router(self, name: str, router_cls, spec, switch: str | None = None, prefixlen: int | None = None):
        """A BGP daemon (tests.bgp.routers) in its own namespace on switch, at spec.address."""
        plen = prefixlen if prefixlen is not None else int(self.subnet.split("/")[1])
        ns = self.add_netns(name, [("eth0", switch or self.switch, f"{spec.address}/{plen}")])
        router = router_cls(ns, self.workdir / name, spec)
        self.routers.append(router)
        return router.start()

    def apply(self, doc: dict):
        return self.store.apply(r.parse({"apiVersion": "routed.io/v1", **doc}))[0]

    def add_node(self, name: str, index: int, start: bool = True, switch: str | None = None,
                 subnet: str | None = None, gateway: str | None = None, labels: str = "", mtu: int = 1500,
                 subnet6: str | None = None) -> Node:
        """subnet6: the node gets an IPv6 address in it too (dual stack, --node-ip6)."""
        address = topology.host_address(subnet or self.subnet, index)
        address6 = topology.host_address(subnet6, index) if subnet6 else None
        node = Node(self, name, address, labels, address6)
        topology.add_netns(node.ns.name)
        topology.plug(node.ns.name, "eth0", switch or self.switch, address, mtu=mtu)
        if address6:
            topology.add_address6(node.ns.name, "eth0", address6)
        # A default route, as every real node has: proxy ARP for the pods' gateway needs one.
        topology.default_route(node.ns.name, gateway, "eth0")
        self.nodes.append(node)
        return node.start() if start else node

    def wait(self, predicate, timeout: float = 60.0, what: str = "condition"):
        return eventually(predicate, what, timeout, 0.2, details=self.logs)

    def wait_direct_routes(self, nodes: list[Node], blocks: dict[str, list[str]] | None = None) -> None:
        """Until every node has every other node's blocks (by default what each node holds
        now) installed straight via that node's address."""
        blocks = blocks if blocks is not None else {node.name: node.blocks() for node in nodes}
        for node in nodes:
            others = [(o, b) for o in nodes if o is not node for b in blocks[o.name]]
            self.wait(lambda: all(f"{b} via {o.ip} dev eth0" in node.routes() for o, b in others),
                      what=f"{node.name} to learn the others' blocks")

    def sessions_up(self, node: Node, count: int) -> bool:
        try:
            return sum(p["state"] == "up" for p in node.peers()) >= count
        except OSError:
            return False

    def logs(self) -> str:
        out = []
        for router in self.routers:
            if router.log.exists():
                out.append(f"--- {router.netns}/{router.log.name}\n" + router.log.read_text()[-1500:])
        for node in self.nodes:
            for name in ("agent.log", "speaker.log", "bgp/exabgp.log"):
                path = node.workdir / name
                if path.exists():
                    out.append(f"--- {node.name}/{name}\n" + path.read_text()[-2500:])
        return "\n".join(out)

    def close(self) -> None:
        try:
            for node in self.nodes:
                for _, pod, _ in node.pods:
                    pod.delete()
                node.stop()
            for router in self.routers:
                router.stop()
        finally:
            for name in topology.list_netns(self.prefix):
                topology.del_netns(name)
            self.kv.close()
