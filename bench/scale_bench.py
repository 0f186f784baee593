"""Scale: one real node in a cluster of 100, 300 and 1,000 simulated ones (issue 16).

Per size N, on a fresh etcd (tmpfs):

- a simulator writes N Node resources and gives each node one pod with an IPAM client
  (so IPAM itself claims each node's block and affinity);
- one GoBGP process speaks for all N nodes: it announces each block with that node's
  address as next hop to a BIRD route reflector, which reflects them to the real node.
  The simulated addresses share a /16 with the real node, so its kernel takes them as
  on-link next hops, and routed's IPAM check (block owner = next hop's node) accepts them;
- one real agent + ExaBGP (mesh off, the reflector as its one BGPPeer) starts, and we time
  until its kernel holds all N routes (proto 202);
- then, for a few seconds, pods are added on the simulated nodes at 100 ADDs/s; we read
  the agent's CPU time and RSS (/proc) and the etcd requests it sent
  (routed_etcd_requests_total), against the same window with nothing happening.

Everything lives in namespaces with the bench's own prefix, on a bridge; nothing leaves
the machine. Figures for each N and their growth against N=100 are printed at the end.
"""

from __future__ import annotations

import ipaddress
import os
import re
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

from bench.common import note, private_etcd
from routed.datastore import keys
from routed.policy import model
from routed.policy.enforcer import endpoint_json

SIZES = (100, 300, 1000)
SUBNET = "10.96.0.0/16"  # the real node (.0.1), the reflector, the speaker and every simulated node
REFLECTOR, SPEAKER = "10.96.255.1", "10.96.255.2"
AS = 64512
ADDS_PER_SECOND = 100
LOAD_SECONDS = 5.0
CONVERGE_TIMEOUT = 300.0


def sim_address(i: int) -> str:
    return f"10.96.{1 + i // 250}.{1 + i % 250}"


def proc_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def proc_rss_mib(pid: int) -> float:
    found = re.search(r"VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
    return int(found[1]) / 1024 if found else float("nan")


def etcd_requests(metrics: str) -> dict[str, float]:
    """op -> requests the agent sent, from its /metrics."""
    out: dict[str, float] = {}
    for op, value in re.findall(r'routed_etcd_requests_total\{keys="[^"]*",op="([^"]+)"\} (\S+)', metrics):
        out[op] = out.get(op, 0) + float(value)
    return out


def judgements(metrics: str) -> float:
    found = re.search(r"^routed_bgp_route_judgements_total (\S+)$", metrics, re.M)
    return float(found[1]) if found else float("nan")


class Window:
    """The agent's CPU, etcd requests and route judgements over one stretch of time."""

    def __init__(self, pid: int, health_port: int):
        self.pid, self.url = pid, f"http://127.0.0.1:{health_port}/metrics"

    def _metrics(self) -> str:
        with urllib.request.urlopen(self.url, timeout=5) as resp:
            return resp.read().decode()

    def __enter__(self) -> Window:
        metrics = self._metrics()
        self.cpu0, self.req0, self.judged0 = proc_cpu_seconds(self.pid), etcd_requests(metrics), judgements(metrics)
        self.t0 = time.monotonic()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.monotonic() - self.t0
        metrics = self._metrics()
        self.cpu = (proc_cpu_seconds(self.pid) - self.cpu0) / self.seconds * 100  # % of one core
        req = etcd_requests(metrics)
        self.ops = sum(req.values()) - sum(self.req0.values())
        self.reads = req.get("range", 0) - self.req0.get("range", 0)
        self.judged = judgements(metrics) - self.judged0
        self.rss = proc_rss_mib(self.pid)


def run_size(n: int) -> dict:
    from ipam.allocator import IPAM
    from tests.bgp.routers import Bird, GoBgp, Neighbor, RouterSpec
    from tests.support.cluster import Cluster

    with private_etcd() as etcd:
        cluster = Cluster(Path(tempfile.mkdtemp(prefix="routed-bench-scale-")), etcd, subnet=SUBNET)
        try:
            cluster.apply({"kind": "IPPool", "metadata": {"name": "pods"},
                           "spec": {"cidr": "10.240.0.0/12", "blockSize": 26}})
            cluster.apply({"kind": "BGPConfiguration", "metadata": {"name": "default"},
                           "spec": {"nodeToNodeMeshEnabled": False, "asNumber": AS}})
            cluster.apply({"kind": "BGPPeer", "metadata": {"name": "reflector"},
                           "spec": {"peerIP": REFLECTOR, "asNumber": AS}})
            started = time.monotonic()
            ipam = IPAM(cluster.kv)
            blocks: dict[int, str] = {}
            for i in range(n):
                cluster.apply({"kind": "Node", "metadata": {"name": f"sim{i}"},
                               "spec": {"bgp": {"ipv4Address": f"{sim_address(i)}/16"}}})
                allocation = ipam.allocate(f"sim.{i}.p0.eth0", f"sim{i}")
                blocks[i] = str(ipaddress.ip_network(f"{allocation.ips[0]}/26", strict=False))
            written = time.monotonic() - started
            note(f"N={n}: simulator wrote {n} nodes, blocks, affinities in {written:.1f} s")

            real_ip = "10.96.0.1"
            cluster.add_router("rr", Bird, RouterSpec(REFLECTOR, AS, [Neighbor(real_ip, AS, rr_client=True),
                                                                     Neighbor(SPEAKER, AS, rr_client=True)],
                                                      cluster_id=REFLECTOR))
            speaker = cluster.add_router("sims", GoBgp, RouterSpec(SPEAKER, AS, [Neighbor(REFLECTOR, AS)]))
            speaker.wait_established([REFLECTOR])
            script = "\n".join(f"gobgp -p {speaker.api_port} global rib add -a ipv4 {blocks[i]} "
                               f"nexthop {sim_address(i)}" for i in range(n))
            subprocess.run(["ip", "netns", "exec", speaker.netns, "sh", "-e"], input=script, text=True, check=True,
                           capture_output=True, timeout=600)
            rr = cluster.routers[0]
            cluster.wait(lambda: len(rr.rib()) >= n, timeout=CONVERGE_TIMEOUT, what=f"the reflector to hold {n}")
            note(f"N={n}: reflector holds {len(rr.rib())} routes")

            t0 = time.monotonic()
            node = cluster.add_node("real", 1)
            cluster.wait(lambda: _route_count(node) >= n, timeout=CONVERGE_TIMEOUT,
                         what=f"the real node to install {n} routes")
            converge = time.monotonic() - t0
            note(f"N={n}: the real node has all {n} routes after {converge:.1f} s, e.g. "
                 f"{node.routes().splitlines()[0].strip()}")
            pid = node.agent.proc.pid
            time.sleep(1.0)  # let the last announcement pass settle before measuring
            with Window(pid, node.agent.health_port) as idle:
                time.sleep(LOAD_SECONDS)
            with Window(pid, node.agent.health_port) as load:
                adds = _add_pods(ipam, n, LOAD_SECONDS)
            return {"n": n, "converge": converge, "idle": idle, "load": load, "adds": adds,
                    "rss": load.rss, "write": written}
        finally:
            cluster.close()


def _route_count(node) -> int:
    return sum(1 for line in node.routes().splitlines() if line.strip())


def _add_pods(ipam, n: int, seconds: float) -> float:
    """Pod ADDs (addresses and the pod's workload record, as CNI writes them) on simulated nodes (round robin) at ADDS_PER_SECOND for seconds; returns the rate reached."""
    start, k = time.monotonic(), 0
    while (now := time.monotonic()) - start < seconds:
        due = start + k / ADDS_PER_SECOND
        if now < due:
            time.sleep(due - now)
        ip = ipam.allocate(f"sim.{k % n}.load{k}.eth0", f"sim{k % n}").ips[0]
        endpoint = model.Endpoint("default", f"load{k}", {"app": "load"}, (str(ip),), "eth0", f"sim{k % n}", ())
        ipam.kv.put(keys.workload(f"sim{k % n}", "default", f"load{k}"), endpoint_json(endpoint, f"c{k}").encode())
        k += 1
    return k / (time.monotonic() - start)


def main() -> None:
    os.environ["ROUTED_BENCH_TMPFS"] = "1"  # the set-up: etcd on tmpfs
    sizes = [int(s) for s in os.environ.get("ROUTED_BENCH_SCALE_SIZES", "").split(",") if s] or list(SIZES)
    results = [run_size(n) for n in sizes]
    base = results[0]
    note("")
    note(f"{'nodes':>6} {'routes in kernel':>17} {'agent CPU idle':>15} {'CPU at load':>12} {'RSS':>9} "
         f"{'etcd ops/s idle':>16} {'at load':>8} {'reads/s':>8} {'judged/s':>9} {'ADDs/s':>7}")
    for res in results:
        idle, load = res["idle"], res["load"]
        note(f"{res['n']:>6} {res['converge']:>15.1f} s {idle.cpu:>13.1f} % {load.cpu:>10.1f} % "
             f"{res['rss']:>5.0f} MiB {idle.ops / idle.seconds:>16.1f} {load.ops / load.seconds:>8.1f} "
             f"{load.reads / load.seconds:>8.1f} {load.judged / load.seconds:>9.1f} {res['adds']:>7.0f}")
    for res in results[1:]:
        k = res["n"] / base["n"]
        note(f"growth {base['n']} -> {res['n']} nodes (x{k:.0f}): time to all routes "
             f"x{res['converge'] / base['converge']:.2f}, RSS x{res['rss'] / base['rss']:.2f}, "
             f"CPU at load x{_ratio(res['load'].cpu, base['load'].cpu)}, etcd ops/s at load "
             f"x{_ratio(res['load'].ops / res['load'].seconds, base['load'].ops / base['load'].seconds)}")
    note("reference: 'idle' is the same agent over the same length of time with nothing happening; "
         "CPU is % of one core")


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b else "n/a"
