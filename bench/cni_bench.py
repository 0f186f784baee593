"""The CNI plugin as a runtime execs it: its start, one pod's ADD+DEL, and 100 pods at once.

    VERSION start        the routed plugin as `routed install-cni` installs it (static Go,
                         cni/goplugin) answering VERSION, N times
                         vs Debian's Go ptp answering VERSION (target ≤ 1.5x)
    ADD+DEL, one pod     the plugin against a running agent with etcd IPAM, ADD then DEL,
                         N times
                         vs Debian's Go ptp + host-local (temp dataDir), exec'd the same way
                         (target ≤ 0.6x)
    100 pods at once     100 plugin processes started together, each with its own pod
                         netns: wall time until all are done, p50/p99 per ADD; then the
                         100 DELs the same way
                         vs the same with ptp + host-local (target: all done ≤ 1.0x, each)

Every plugin runs from a driver process inside the node's host netns (`ip netns exec`),
as a runtime on that node would: ptp's host veth and the agent's land in the same netns.
Everything it creates is a namespace of its own (rt-…), removed at the end. Prints only.
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

ROOT = Path(__file__).resolve().parents[1]
PTP = "/usr/lib/cni/ptp"
N_SEQUENTIAL = 50
N_CONCURRENT = 100
WARMUP = 3
MAX_ATTEMPTS = 50
RETRY_AFTER = 0.05  # seconds before re-exec'ing a plugin that answered error 11
TARGET_VERSION = 1.5  # ratios to the Go reference plugins, from the issue that made the plugin Go
TARGET_ADD_DEL = 0.6
TARGET_AT_ONCE = 1.0
NETWORK = "k8s-pod-network"
ROUTED_POOL = "10.60.0.0/16"
PTP_SUBNET = "10.70.0.0/16"
NODE_IP = "192.0.2.10/24"


# --------------------------------------------------------------------------- driver
# Runs inside the host netns (python -m bench.cni_bench drive SPEC), stdlib only, and
# prints its measurements as one JSON line.


def _exec_plugin(argv: list[str], command: str, conf: str, container: str, netns: str, pod: str) -> tuple[float, int, str]:
    env = {"PATH": "/usr/sbin:/usr/bin", "CNI_COMMAND": command, "CNI_CONTAINERID": container,
           "CNI_NETNS": netns, "CNI_IFNAME": "eth0", "CNI_PATH": "/usr/lib/cni",
           "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAMESPACE=bench;K8S_POD_NAME={pod};"
                       f"K8S_POD_INFRA_CONTAINER_ID={container}"}
    started = time.perf_counter()
    proc = subprocess.run(argv, input=conf, env=env, capture_output=True, text=True)
    took = time.perf_counter() - started
    return took, proc.returncode, proc.stdout + proc.stderr


def _sequential(plugins: dict, netns: str, n: int) -> dict:
    """ADD then DEL of one pod, n times per plugin, the plugins taking turns (so a busy
    moment of the machine falls on both alike)."""
    out = {tag: {"add": [], "del": [], "errors": [], "failed": 0} for tag in plugins}
    for i in range(-WARMUP, n):
        for tag, (argv, conf) in plugins.items():
            container = pod = f"{tag}-seq-{i + WARMUP}"
            t_add, rc_add, out_add = _exec_plugin(argv, "ADD", conf, container, netns, pod)
            t_del, rc_del, out_del = _exec_plugin(argv, "DEL", conf, container, netns, pod)
            r = out[tag]
            if rc_add or rc_del:
                r["failed"] += 1
                r["errors"] = (r["errors"] + [out_add if rc_add else out_del])[:3]
            if i >= 0:
                r["add"].append(t_add)
                r["del"].append(t_del)
    return out


def _concurrent(argv, conf, netnses, command, tag):
    """All at once; a plugin answering CNI error 11 (try again later) is exec'd again
    50 ms later, as a runtime would retry it: "done" means succeeded, or failed otherwise."""
    barrier = threading.Barrier(len(netnses))
    results: list = [None] * len(netnses)

    def one(i):
        container = pod = f"{tag}-par-{i}"
        barrier.wait()
        started = time.perf_counter()
        for attempt in range(1, MAX_ATTEMPTS + 1):
            _, rc, out = _exec_plugin(argv, command, conf, container, netnses[i], pod)
            if rc == 0 or '"code": 11' not in out.replace('"code":11', '"code": 11'):
                break
            time.sleep(RETRY_AFTER)
        results[i] = (started, time.perf_counter(), rc, out, attempt)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(netnses))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ips = set()
    for _, _, rc, out, _ in results:
        if rc == 0 and command == "ADD":
            ips.update(ip["address"] for ip in json.loads(out).get("ips", []))
    return {"wall": max(r[1] for r in results) - min(r[0] for r in results),
            "each": [r[1] - r[0] for r in results], "failed": sum(1 for r in results if r[2]),
            "retried": sum(1 for r in results if r[4] > 1), "retries": sum(r[4] - 1 for r in results),
            "errors": [r[3] for r in results if r[2]][:3], "distinct_ips": len(ips)}


def _starts(plugins: dict, n: int) -> dict:
    """Each plugin answering VERSION (no agent), taking turns: what starting it costs."""
    times: dict = {tag: [] for tag in plugins}
    for i in range(WARMUP + n):
        for tag, argv in plugins.items():
            started = time.perf_counter()
            subprocess.run(argv, input="", env={"CNI_COMMAND": "VERSION"}, capture_output=True)
            if i >= WARMUP:
                times[tag].append(time.perf_counter() - started)
    return times


def drive(spec: dict) -> dict:
    if spec["mode"] == "sequential":
        return _sequential(spec["plugins"], spec["netns"], spec["n"])
    if spec["mode"] == "start":
        return _starts(spec["plugins"], spec["n"])
    argv, conf, tag = spec["argv"], spec["conf"], spec["tag"]
    add = _concurrent(argv, conf, spec["netnses"], "ADD", tag)
    delete = _concurrent(argv, conf, spec["netnses"], "DEL", tag)
    return {"add": add, "del": delete}


# --------------------------------------------------------------------------- setup


def _ip(*args: str, netns: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    cmd = (["ip", "netns", "exec", netns] if netns else []) + list(args)
    return subprocess.run(cmd, capture_output=True, text=True, check=check)


def _run_driver(host: str, spec: dict) -> dict:
    """Run drive(spec) inside the host netns; its answer."""
    proc = subprocess.run(["ip", "netns", "exec", host, sys.executable, "-m", "bench.cni_bench", "drive"],
                          input=json.dumps(spec), capture_output=True, text=True, cwd=ROOT, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"bench driver failed:\n{proc.stdout}{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _ptp_conf(data_dir: Path) -> str:
    return json.dumps({"cniVersion": "1.0.0", "name": "bench-ptp", "type": "ptp", "ipMasq": False, "mtu": 1450,
                       "ipam": {"type": "host-local", "subnet": PTP_SUBNET, "dataDir": str(data_dir),
                                "routes": [{"dst": "0.0.0.0/0"}]}})


def _start_agent(workdir: Path, etcd_url: str, host):
    """The agent as tests run it, but logging at info: debug logging (every netlink message)
    would slow it down far more than a node's agent is."""
    from tests.support.agent import ROUTED, AgentProcess

    class InfoAgent(AgentProcess):
        def start(self, wait=True, timeout=20.0):
            args = [ROUTED, "agent", "--node-name", self.node, "--node-ip", self.node_ip, "--netns", self.host.name,
                    "--cni-socket", self.socket, "--spool-dir", self.spool, "--state-dir", str(self.workdir / "state"),
                    "--health-port", str(self.health_port), "--etcd-endpoints", self.etcd_url,
                    "--block-grace", str(self.block_grace), "--log-level", "info"]
            self.proc = subprocess.Popen(args, stdout=open(self.log, "ab"), stderr=subprocess.STDOUT)
            if wait:
                self.wait_ready(timeout)
            return self

    return InfoAgent(workdir, etcd_url, host, "bench-node", NODE_IP).start()


def _ms(values: list[float]) -> float:
    return statistics.median(values) * 1000


def _p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[98] * 1000


def _target(what: str, ratio: float, target: float, failed: int = 0) -> None:
    from bench.common import note

    verdict = "met" if ratio <= target and not failed else "MISSED"
    note(f"  target {what} ≤ {target}x the Go reference: {verdict} ({ratio:.2f}x{', with failures' if failed else ''})")


def _sequential_line(name, ours, ref):
    ours_total = [a + d for a, d in zip(ours["add"], ours["del"])]
    ref_total = [a + d for a, d in zip(ref["add"], ref["del"])]
    from bench.common import note, report

    report(name, _ms(ours_total), _ms(ref_total), "ms")
    note(f"  median ADD {_ms(ours['add']):.1f} ms, DEL {_ms(ours['del']):.1f} ms; reference ADD "
         f"{_ms(ref['add']):.1f} ms, DEL {_ms(ref['del']):.1f} ms; N={len(ours_total)} each, after {WARMUP} warm-up")
    for label, r in (("routed", ours), ("ptp", ref)):
        if r["failed"]:
            note(f"  {label}: {r['failed']} ADD/DEL pairs FAILED, e.g. {r['errors'][0][:300]}")


def _concurrent_lines(ours, ref):
    from bench.common import note, report

    for phase in ("add", "del"):
        o, r = ours[phase], ref[phase]
        word = phase.upper()
        report(f"{N_CONCURRENT} pods {word} at once: all done", o["wall"] * 1000, r["wall"] * 1000, "ms")
        report(f"{N_CONCURRENT} pods {word} at once: p99 per {word}", _p99(o["each"]), _p99(r["each"]), "ms")
        line = (f"  p50 per {word} {_ms(o['each']):.0f} ms (reference {_ms(r['each']):.0f} ms); "
                f"failed {o['failed']} (reference {r['failed']}); {o['retried']} needed a retry after "
                f"error 11, {o['retries']} retries in all (reference {r['retries']})")
        if phase == "add":
            line += f"; {o['distinct_ips']} distinct pod addresses"
        note(line)
        _target(f"all {word}s done", o["wall"] / r["wall"], TARGET_AT_ONCE, failed=o["failed"])
        for e in o["errors"][:2]:
            note(f"  routed {word} error: {e.strip()[:300]}")
        for e in r["errors"][:1]:
            note(f"  ptp {word} error: {e.strip()[:300]}")


def _agent_seconds(agent) -> dict[str, tuple[float, int]]:
    """(sum of seconds, count) per CNI command (its results summed), from the agent's /metrics."""
    found: dict[str, list] = {}
    for line in agent.metrics().splitlines():
        for kind, index in (("_sum{", 0), ("_count{", 1)):
            if line.startswith("routed_cni_request_seconds" + kind):
                command = line.split('command="')[1].split('"')[0]
                found.setdefault(command, [0.0, 0])[index] += float(line.rsplit(" ", 1)[1])
    return {k: (v[0], int(v[1])) for k, v in found.items()}


def _agent_gauge(agent, name: str) -> float:
    for line in agent.metrics().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return float("nan")


def _agent_mean_ms(before, after, command) -> float:
    s0, c0 = before.get(command, (0.0, 0))
    s1, c1 = after.get(command, (0.0, 0))
    return (s1 - s0) / max(c1 - c0, 1) * 1000


def _install_plugin(node_dir: Path, agent) -> str:
    """`routed install-cni` as a node's init container runs it; the installed plugin."""
    from tests.support.agent import ROUTED

    subprocess.run([ROUTED, "install-cni", "--bin-dir", str(node_dir / "bin"), "--conf-dir", str(node_dir / "net.d"),
                    "--cni-socket", agent.socket, "--spool-dir", agent.spool], check=True, capture_output=True)
    return str(node_dir / "bin" / "routed")


def main() -> None:
    import routed.resources
    from bench.common import note, private_etcd, report
    from routed.datastore.resources import ResourceStore
    from tests.support.netns import Netns, node_host

    if os.geteuid() != 0 or not os.access(PTP, os.X_OK):
        note(f"skipped: needs root and {PTP} (Debian package containernetworking-plugins)")
        return
    workdir = Path(tempfile.mkdtemp(prefix="routed-cni-bench-"))
    namespaces: list = []
    agent = None
    try:
        with private_etcd() as etcd:
            kv = etcd.client()
            ResourceStore(kv).create(routed.resources.parse(
                {"apiVersion": "routed.io/v1", "kind": "IPPool", "metadata": {"name": "bench"},
                 "spec": {"cidr": ROUTED_POOL}}))
            kv.close()
            host = node_host(NODE_IP)
            namespaces.append(host)
            agent = _start_agent(workdir / "agent", etcd.url, host)
            plugin_argv = [_install_plugin(workdir / "node", agent)]
            plugin_conf = json.dumps(agent.conf())

            starts = _run_driver(host.name, {"mode": "start", "n": N_SEQUENTIAL,
                                             "plugins": {"rt": plugin_argv, "ptp": [PTP]}})
            report("VERSION (process start), median", _ms(starts["rt"]), _ms(starts["ptp"]), "ms")
            _target("VERSION", _ms(starts["rt"]) / _ms(starts["ptp"]), TARGET_VERSION)

            # One pod, ADD then DEL, over and over: the same netns each time.
            pod = Netns("benchpod")
            namespaces.append(pod)
            before = _agent_seconds(agent)
            both = _run_driver(host.name, {"mode": "sequential", "netns": pod.path, "n": N_SEQUENTIAL,
                                           "plugins": {"ptp": [[PTP], _ptp_conf(workdir / "hl-seq")],
                                                       "rt": [plugin_argv, plugin_conf]}})
            after = _agent_seconds(agent)
            ours, ref = both["rt"], both["ptp"]
            _sequential_line("ADD+DEL one pod, median", ours, ref)
            ratio = _ms([a + d for a, d in zip(ours["add"], ours["del"])]) / \
                _ms([a + d for a, d in zip(ref["add"], ref["del"])])
            _target("ADD+DEL", ratio, TARGET_ADD_DEL, failed=ours["failed"])
            note(f"  where ours goes: the agent serves ADD in {_agent_mean_ms(before, after, 'ADD'):.1f} ms, "
                 f"DEL in {_agent_mean_ms(before, after, 'DEL'):.1f} ms (mean, its /metrics); "
                 f"the plugin answering VERSION alone takes {_ms(starts['rt']):.1f} ms")

            # 100 pods at once, each its own netns.
            pods = [Netns(f"bp{i}") for i in range(N_CONCURRENT)]
            namespaces += pods
            paths = [p.path for p in pods]
            ref = _run_driver(host.name, {"mode": "concurrent", "argv": [PTP], "conf": _ptp_conf(workdir / "hl-par"),
                                          "netnses": paths, "tag": "ptp"})
            before = _agent_seconds(agent)
            txn0, lost0 = (_agent_gauge(agent, f"routed_ipam_{k}_total") for k in ("transactions", "conflicts"))
            ours = _run_driver(host.name, {"mode": "concurrent", "argv": plugin_argv, "conf": plugin_conf,
                                           "netnses": paths, "tag": "rt"})
            after = _agent_seconds(agent)
            txn1, lost1 = (_agent_gauge(agent, f"routed_ipam_{k}_total") for k in ("transactions", "conflicts"))
            _concurrent_lines(ours, ref)
            note(f"  the agent served these ADDs in {_agent_mean_ms(before, after, 'ADD'):.0f} ms and DELs in "
                 f"{_agent_mean_ms(before, after, 'DEL'):.0f} ms on average (its /metrics); IPAM "
                 f"{txn1 - txn0:.0f} transactions, {lost1 - lost0:.0f} lost to a concurrent writer and retried")
            leftovers = [n for n in _ip("ip", "-o", "link", netns=host.name).stdout.splitlines() if "cali" in n]
            from routed.datastore import keys

            kv = etcd.client()
            handles = kv.keys(keys.HANDLES)
            kv.close()
            spooled = len(list(Path(agent.spool).glob("*.req"))) if Path(agent.spool).is_dir() else 0
            note(f"  right after the DELs: {len(leftovers)} cali veths in the host netns, {len(handles)} IPAM handles "
                 f"in etcd (both released in the background), {spooled} DELs spooled (the agent did not answer "
                 f"them in time; it replays them)")
            agent.stop()
            agent = None
    finally:
        if agent is not None:
            agent.stop()
        for ns in reversed(namespaces):
            ns.delete()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    if sys.argv[1:] == ["drive"]:
        print(json.dumps(drive(json.loads(sys.stdin.read()))))
    else:
        main()
