"""From `routedctl apply` of a policy to its enforcement on every node (issue 14).

NODES real agents (`routed agent`, one node netns each, one real etcd), each with a client
and a server pod added through the real CNI plugin. Each of APPLIES rounds applies a new
Kubernetes NetworkPolicy (default deny ingress for role=server, a new name each time) with
the real `routedctl apply -f`, and times, from the moment routedctl is started:

    enforced   the commit of the node's nft transaction that holds the policy's chain, as
               the kernel announces it (`nft monitor` in the node's netns: a netlink event
               sent when the transaction commits, the instant the next packet meets the
               new ruleset; no polling interval to add). Checked with packets: after
               every apply each node's client must fail to reach its server, and after
               the delete reach it again, or the bench stops with an error.
    floor      the same write reaching NODES `etcdctl watch` processes (what any agent
               that learns of a policy through an etcd watch cannot beat).

and separately, per round, how long kube-router's way of programming the same rule takes
on one node (`ipset restore` + `iptables-restore` of its chains, in a netns of its own),
to set beside our part beyond the floor. Prints p50/p99 and ratios; never asserts.
ROUTED_BENCH_POLICY_NODES / ROUTED_BENCH_POLICY_APPLIES change the sizes.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.common import note, private_etcd, report

NODES = int(os.environ.get("ROUTED_BENCH_POLICY_NODES", "6"))
APPLIES = int(os.environ.get("ROUTED_BENCH_POLICY_APPLIES", "40"))
NAMESPACE = "lat"
PROBER = str(Path(__file__).resolve().parents[1] / "tests" / "support" / "netpol_pod.py")
ROUTEDCTL = str(Path(sys.executable).with_name("routedctl"))


class Lines:
    """A process whose output lines are timestamped as they arrive: first(text) is when
    a line containing text first came."""

    def __init__(self, cmd: list[str]):
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self._seen: dict[str, float] = {}
        self._want: set[str] = set()
        self._cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def expect(self, text: str) -> None:
        with self._cond:
            self._want.add(text)

    def _read(self) -> None:
        for line in self.proc.stdout:
            now = time.monotonic()
            with self._cond:
                for text in [t for t in self._want if t in line]:
                    self._want.discard(text)
                    self._seen[text] = now
                    self._cond.notify_all()

    def first(self, text: str, timeout: float) -> float:
        with self._cond:
            if not self._cond.wait_for(lambda: text in self._seen, timeout):
                raise RuntimeError(f"{text!r} not seen within {timeout} s")
            return self._seen.pop(text)

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


class Prober:
    """tests/support/netpol_pod.py in a pod: serves 80/TCP, probes on request."""

    def __init__(self, netns: str):
        self.proc = subprocess.Popen(["ip", "netns", "exec", netns, sys.executable, "-u", PROBER],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        if self.proc.stdout.readline().strip() != "ready":
            raise RuntimeError(f"prober in {netns} did not start")

    def reaches(self, addr: str, timeout: float = 0.3) -> bool:
        self.proc.stdin.write(f"probe TCP 80 {timeout} {addr}\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().strip() == f"{addr}=1"

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


def _policy(name: str) -> dict:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": NAMESPACE},
            "spec": {"podSelector": {"matchLabels": {"role": "server"}}, "policyTypes": ["Ingress"]}}


def _chain(doc: dict) -> str:
    """The name of the policy's ingress chain in routed's table (routed/policy/nft.py)."""
    from routed import resources as r
    from routed.policy import model

    return f"p{model.convert([r.parse(doc)])[0].key}i"


def _kube_router_input(server: str, iface: str, name: str) -> tuple[str, str]:
    """What kube-router restores on a node for the same policy: an ipset of the pods it
    selects, the policy's chain and the pod's firewall chain (full sync of its chains)."""
    ipsets = f"create KUBE-DST-{name} hash:ip -exist\nflush KUBE-DST-{name}\nadd KUBE-DST-{name} {server} -exist\n"
    pod = f"KUBE-POD-FW-{iface[4:].upper()}"
    rules = ["*filter", ":KUBE-ROUTER-FORWARD - [0:0]", f":KUBE-NWPLCY-{name} - [0:0]", f":{pod} - [0:0]",
             "-A FORWARD -j KUBE-ROUTER-FORWARD",
             f"-A KUBE-ROUTER-FORWARD -o {iface} -m set --match-set KUBE-DST-{name} dst -j {pod}",
             f"-A {pod} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
             f"-A {pod} -j KUBE-NWPLCY-{name}",
             f"-A {pod} -j DROP", "COMMIT"]
    return ipsets, "\n".join(rules) + "\n"


def _kube_router(netns: str, ipsets: str, iptables: str) -> float:
    start = time.monotonic()
    for cmd, text in ((["ipset", "restore"], ipsets), (["iptables-restore", "-w"], iptables)):
        subprocess.run(["ip", "netns", "exec", netns, *cmd], input=text, text=True, check=True, capture_output=True)
    return time.monotonic() - start


def _pct(values: list[float], p: int) -> float:
    """The p-th percentile (nearest rank): with fewer than 100 samples p99 is the maximum."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, -(-p * len(ordered) // 100) - 1))]


def main() -> None:
    from routed import resources as r
    from routed.datastore import keys
    from routed.datastore.resources import ResourceStore
    from routed.dataplane.names import host_veth_name
    from routed.policy import nft
    from tests.support.agent import AgentProcess, cni
    from tests.support.netns import Netns, node_host

    workdir = Path(tempfile.mkdtemp(prefix="routed-bench-policylat-"))
    agents, hosts, netns, probers, procs = [], [], [], [], []
    with private_etcd() as etcd:
        try:
            store = ResourceStore(etcd.client())
            store.create(r.parse({"apiVersion": "routed.io/v1", "kind": "IPPool", "metadata": {"name": "lat"},
                                  "spec": {"cidr": "10.67.0.0/16"}}))
            store.apply(r.parse({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}))
            pairs = []  # (client prober, server address) per node
            for i in range(NODES):
                host = node_host(f"192.0.2.{10 + i}/24")
                hosts.append(host)
                agent = AgentProcess(workdir / f"agent{i}", etcd.url, host, f"node-{i}", f"192.0.2.{10 + i}/24")
                agents.append(agent.start(timeout=60))
                for role, n in (("client", 1), ("server", 2)):
                    ns = Netns("plat")
                    netns.append(ns)
                    conf = agent.conf(runtimeConfig={"IPs": [f"10.67.{i}.{n}/32"], "labels": {"role": role}})
                    code, _, raw = cni("ADD", conf, container=f"c-{i}-{role}", netns=ns.path,
                                       pod=(NAMESPACE, f"{role}-{i}"))
                    if code != 0:
                        raise RuntimeError(f"CNI ADD on node-{i}: {raw}")
                    probers.append(Prober(ns.name))
                pairs.append((probers[-2], f"10.67.{i}.2"))
            monitors = [Lines(["ip", "netns", "exec", h.name, "nft", "monitor", "ruleset"]) for h in hosts]
            watchers = [Lines(["etcdctl", "--endpoints", etcd.url, "watch", "--prefix", keys.RESOURCES])
                        for _ in range(NODES)]
            procs += monitors + watchers
            ref_ns = Netns("plat-ref")
            netns.append(ref_ns)
            for client, server in pairs:
                if not client.reaches(server, timeout=2):
                    raise RuntimeError(f"{server} unreachable before any policy")
            time.sleep(1)  # the watches are in place (etcdctl and nft monitor print nothing when ready)

            enforced, floor, beyond, per_node, per_watcher, cli, kube_router = [], [], [], [], [], [], []
            iface = host_veth_name(NAMESPACE, "server-0")
            for n in range(APPLIES):
                name = f"lat-{n}"
                doc = _policy(name)
                chain = f"add chain {nft.FAMILY} {nft.TABLE} {_chain(doc)}"
                path = workdir / "policy.json"
                path.write_text(json.dumps(doc))
                for m in monitors:
                    m.expect(chain)
                for w in watchers:
                    w.expect(f"/{NAMESPACE}/{name}\n")
                start = time.monotonic()
                done = subprocess.run([ROUTEDCTL, "--etcd-endpoints", etcd.url, "apply", "-f", str(path)],
                                      capture_output=True, text=True)
                cli.append(time.monotonic() - start)
                if done.returncode != 0:
                    raise RuntimeError(f"routedctl apply: {done.stdout}{done.stderr}")
                nodes = [m.first(chain, 30) - start for m in monitors]
                watched = [w.first(f"/{NAMESPACE}/{name}\n", 30) - start for w in watchers]
                enforced.append(max(nodes))
                floor.append(max(watched))
                per_watcher += watched
                beyond.append(max(nodes) - max(watched))
                per_node += nodes
                open_ = [server for client, server in pairs if client.reaches(server)]
                if open_:
                    raise RuntimeError(f"policy {name} committed but {open_} still reachable")
                store.delete(r.KubeNetworkPolicy, name, namespace=NAMESPACE)
                for client, server in pairs:
                    deadline = time.monotonic() + 30
                    while not client.reaches(server):
                        if time.monotonic() > deadline:
                            raise RuntimeError(f"{server} still closed 30 s after its policy was deleted")
                kube_router.append(_kube_router(ref_ns.name, *_kube_router_input("10.67.0.2", iface, f"L{n}")))
        finally:
            for p in procs + probers:
                p.stop()
            for a in agents:
                a.stop()
            for ns in netns + hosts:
                ns.delete()
            shutil.rmtree(workdir, ignore_errors=True)

    ms = 1000
    note(f"{NODES} nodes (real agents, one netns each, one etcd), {APPLIES} applies of a new default-deny "
         "NetworkPolicy; times from the start of `routedctl apply`")
    note("enforced = nft transaction holding the policy committed in every node's kernel (nft monitor; "
         "checked with packets each round); floor = the same write delivered to as many etcdctl watchers")
    for p in (50, 99):
        report(f"apply -> enforced on every node p{p}", _pct(enforced, p) * ms, _pct(floor, p) * ms, "ms")
    for p in (50, 99):
        report(f"one node p{p} (vs one watcher)", _pct(per_node, p) * ms, _pct(per_watcher, p) * ms, "ms")
    for p in (50, 99):
        report(f"beyond the floor p{p} (vs kube-router restore)", _pct(beyond, p) * ms, _pct(kube_router, p) * ms,
               "ms")
    note(f"routedctl apply itself (start to exit): p50 {_pct(cli, 50) * ms:.1f} ms, p99 {_pct(cli, 99) * ms:.1f} ms; "
         f"kube-router reference = ipset restore + iptables-restore of the same rule on one node")
