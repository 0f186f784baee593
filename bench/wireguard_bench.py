"""WireGuard: pod-to-pod TCP throughput between two nodes, in clear and encrypted.

A two-node cluster of real agents and speakers in namespaces (tests/support/cluster.py).
iperf3 from a pod on node a to a pod on node b, first with WireGuard off (the reference,
in the same run), then with the cluster's switch on (wireguard-go here: this kernel has no
module), once the pod route takes wg.routed.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import time
from pathlib import Path

from bench.common import note, private_etcd, report, seconds


def iperf(client, server, server_ip: str) -> float:
    """Mbit/s received, over seconds() (at least 2). A server per attempt (-1: it serves
    one test): a client that came too early, or a test iperf3 ended without a result
    (it can exit 0 with an "error" and no sums), leaves none behind to retry against."""
    for _ in range(50):
        daemon = subprocess.Popen(["ip", "netns", "exec", server.name, "iperf3", "-s", "-1", "-B", server_ip],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            out = client.run("iperf3", "-J", "-c", server_ip, "-t", str(max(2, int(seconds()))), check=False)
        finally:
            if daemon.poll() is None:
                daemon.kill()
            daemon.wait()
        try:
            received = json.loads(out.stdout)["end"]["sum_received"]["bits_per_second"]
        except (ValueError, KeyError):
            time.sleep(0.2)  # the server was not listening yet, or the test gave no result
            continue
        return received / 1e6
    raise RuntimeError(f"iperf3 to {server_ip} failed: {out.stdout[-500:]}{out.stderr[-500:]}")


def main() -> None:
    from tests.support.cluster import Cluster

    with private_etcd() as etcd:
        cluster = Cluster(Path(tempfile.mkdtemp(prefix="routed-bench-wg-")), etcd)
        try:
            cluster.apply({"kind": "IPPool", "metadata": {"name": "pods"}, "spec": {"cidr": "10.244.0.0/16"}})
            a, b = cluster.add_node("a", 1), cluster.add_node("b", 2)
            (pod_a, _), (pod_b, ip_b) = a.add_pod("p"), b.add_pod("p")

            def route(via: str) -> bool:
                return via in a.ns.run("ip", "route", "get", ip_b).stdout

            cluster.wait(lambda: route("dev eth0") and pod_a.run("ping", "-c1", "-W1", ip_b, check=False)
                         .returncode == 0, what="pods reach each other in clear")
            clear = iperf(pod_a, pod_b, ip_b)
            cluster.apply({"kind": "BGPConfiguration", "metadata": {"name": "default"},
                           "spec": {"wireguard": "Enabled"}})
            cluster.wait(lambda: route("dev wg.routed") and pod_a.run("ping", "-c1", "-W1", ip_b, check=False)
                         .returncode == 0, what="pods reach each other over WireGuard")
            encrypted = iperf(pod_a, pod_b, ip_b)
            note(f"pod MTU follows: {a.ns.run('ip', 'link', 'show', 'wg.routed').stdout.split('mtu ')[1].split()[0]}"
                 " on wg.routed (uplink 1500 - 60); pods keep the MTU they were created with")
            report("pod-to-pod TCP, WireGuard (wireguard-go)", encrypted, clear, "Mbit/s")
        finally:
            cluster.close()
