"""Issue 18: what a real agent and a real controller expose on /metrics, scraped the way
Prometheus scrapes them, and the chart's Grafana dashboard asks only for what they expose.

    a .11, b .12    agents + ExaBGP, node-to-node mesh (AS 64512); pods on a via the CNI plugin
    rogue .3        GoBGP, a global BGPPeer announcing a slice of the pool with itself as next
                    hop: rejected (next-hop-not-a-node), counted by peer and reason
    controller      `routed controller` on the same etcd (no Kubernetes): IPAM per pool and node
"""

from __future__ import annotations

import json
import re
import subprocess
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.bgp.routers import Announce, GoBgp, Neighbor, RouterSpec, module_cluster
from tests.support.agent import ROUTED, cni
from tests.support.etcd import free_port
from tests.support.netns import Netns
from tests.support.wait import eventually

pytestmark = [pytest.mark.root, pytest.mark.etcd, pytest.mark.slow]

NODE_AS = 64512
ROGUE = "192.0.2.3"
STOLEN = "10.244.200.0/27"
DASHBOARD = Path(__file__).parents[2] / "charts/routed/dashboards/routed.json"


def scrape(port: int) -> dict[str, object]:
    """/metrics parsed by the Prometheus client's own parser: family name -> Metric."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=3) as resp:
        text = resp.read().decode()
    return {family.name: family for family in text_string_to_metric_families(text)}


def samples(families: dict, name: str, **labels: str) -> list:
    """The samples called name (a series name: x_total, x_bucket, ...) whose labels include labels."""
    return [s for family in families.values() for s in family.samples
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]


def value(families: dict, name: str, **labels: str) -> float | None:
    found = samples(families, name, **labels)
    return found[0].value if found else None


class Controller:
    """`routed controller` without Kubernetes: GC by liveness, and the cluster-wide metrics."""

    def __init__(self, workdir: Path, etcd_url: str):
        self.port = free_port()  # its /metrics listener (--metrics-port), as the chart opens it
        self.log = workdir / "controller.log"
        self.proc = subprocess.Popen([ROUTED, "controller", "--etcd-endpoints", etcd_url, "--interval", "1",
                                      "--health-port", str(free_port()), "--metrics-host", "127.0.0.1",
                                      "--metrics-port", str(self.port)],
                                     stdout=open(self.log, "ab"), stderr=subprocess.STDOUT)

    def wait_ready(self) -> None:
        """Until it serves /metrics as the leader (its IPAM view is the leader's alone)."""
        def ready() -> bool:
            assert self.proc.poll() is None, self.log.read_text()
            try:
                return value(scrape(self.port), "routed_controller_leader") == 1
            except OSError:
                return False
        eventually(ready, "the controller's /metrics", 30)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class Setup:
    def __init__(self, cluster, a, b, controller, metrics_port):
        self.cluster, self.a, self.b, self.controller = cluster, a, b, controller
        self.metrics_port = metrics_port  # a's /metrics listener


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("metrics")
    with module_cluster(workdir) as cluster:
        cluster.apply({"kind": "IPPool", "metadata": {"name": "pods"}, "spec": {"cidr": "10.244.0.0/16"}})
        cluster.apply({"kind": "BGPPeer", "metadata": {"name": "rogue"},
                       "spec": {"peerIP": ROGUE, "asNumber": NODE_AS}})
        cluster.add_router("rogue", GoBgp, RouterSpec(ROGUE, NODE_AS, [Neighbor("192.0.2.11", NODE_AS)],
                                                      [Announce(STOLEN)]))
        a = cluster.add_node("a", 11, start=False)
        metrics_port = free_port()
        a.agent.extra_args += ["--metrics-host", "127.0.0.1", "--metrics-port", str(metrics_port)]
        a.start()
        b = cluster.add_node("b", 12)
        cluster.wait(lambda: cluster.sessions_up(a, 2), what="a's sessions (b and the rogue)")
        b.add_pod("p")  # b's block: a route a accepts from b
        controller = Controller(workdir, cluster.etcd.url)
        try:
            controller.wait_ready()
            yield Setup(cluster, a, b, controller, metrics_port)
        finally:
            controller.stop()


def test_an_agent_shows_cni_latency_by_command_and_result_and_each_bgp_session(setup):
    cluster, a, b, port = setup.cluster, setup.a, setup.b, setup.metrics_port
    pod = Netns("pod")
    try:
        code, _, raw = cni("ADD", a.agent.conf(), container="m1", netns=pod.path, pod=("default", "m1"))
        assert code == 0, raw
        code, _, raw = cni("DEL", a.agent.conf(), container="m1", netns=pod.path, pod=("default", "m1"))
        assert code == 0, raw
    finally:
        pod.delete()
    # An ADD into a namespace that does not exist fails: counted as an error.
    code, _, _ = cni("ADD", a.agent.conf(), container="m2", netns="/var/run/netns/rt-none", pod=("default", "m2"))
    assert code != 0
    cluster.wait(lambda: value(scrape(port), "routed_bgp_rejected_routes", peer=ROGUE, reason="next-hop-not-a-node"),
                 what="the rogue's route rejected")
    cluster.wait(lambda: value(scrape(port), "routed_bgp_accepted_routes", peer=b.ip), what="b's block accepted")
    got = scrape(port)
    assert set(scrape(a.agent.health_port)) == set(got)  # the loopback health port serves the same

    hist = got["routed_cni_request_seconds"]
    assert hist.type == "histogram"
    for command, result in (("ADD", "ok"), ("DEL", "ok"), ("ADD", "error")):
        buckets = samples(got, "routed_cni_request_seconds_bucket", command=command, result=result)
        assert len(buckets) > 5, (command, result, buckets)
        assert value(got, "routed_cni_request_seconds_bucket", command=command, result=result, le="+Inf") >= 1
        assert value(got, "routed_cni_request_seconds_count", command=command, result=result) >= 1
    assert value(got, "routed_cni_requests_total", command="ADD", result="ok") >= 1

    for peer in (b.ip, ROGUE):
        assert value(got, "routed_bgp_session_up", peer=peer) == 1, peer
        assert value(got, "routed_bgp_session_state", peer=peer, state="up") == 1, peer
        assert value(got, "routed_bgp_session_state", peer=peer, state="idle") == 0, peer
        assert value(got, "routed_bgp_session_uptime_seconds", peer=peer) >= 0, peer
    assert value(got, "routed_bgp_received_routes", peer=ROGUE) >= 1
    assert value(got, "routed_bgp_accepted_routes", peer=b.ip) >= 1
    assert value(got, "routed_bgp_accepted_routes", peer=ROGUE) == 0
    assert value(got, "routed_bgp_rejected_routes", peer=ROGUE, reason="next-hop-not-a-node") >= 1

    for gauge in ("routed_cni_spool_depth", "routed_pending_releases"):
        assert got[gauge].type == "gauge", gauge
        # The DEL's release is queued and done in the background: the gauge goes back to 0.
        cluster.wait(lambda: value(scrape(port), gauge) == 0, what=f"{gauge} back to 0")
    assert got["routed_etcd_request_errors"].type == "counter"
    assert samples(got, "routed_etcd_requests_total"), "etcd requests counted"
    for family in got.values():  # counters are counters (the parser strips _total from a counter's name)
        for s in family.samples:
            if s.name.endswith("_total"):
                assert family.type == "counter", (s.name, family.type)


def test_the_controller_shows_ipam_per_pool_and_per_node(setup):
    a = setup.a
    pod = Netns("pod")
    try:
        code, result, raw = cni("ADD", a.agent.conf(), container="c1", netns=pod.path, pod=("default", "c1"))
        assert code == 0, raw
        port = setup.controller.port

        def in_use() -> float | None:
            try:
                return value(scrape(port), "routed_ipam_addresses_in_use", pool="pods", node="a")
            except OSError:
                return None

        eventually(lambda: (in_use() or 0) >= 1, "the controller to count a's address", 30)
        got = scrape(port)
        assert value(got, "routed_ipam_pool_size", pool="pods") == 65536
        assert value(got, "routed_ipam_pool_addresses_in_use", pool="pods") >= 1
        assert value(got, "routed_ipam_pool_addresses_free", pool="pods") <= 65535
        assert value(got, "routed_ipam_blocks", pool="pods", node="a") >= 1
        assert value(got, "routed_ipam_addresses_free", pool="pods", node="a") <= 63
        assert value(got, "routed_controller_leader") == 1
        assert got["routed_gc_passes"].type == "counter"
        assert got["routed_etcd_request_errors"].type == "counter"
    finally:
        cni("DEL", a.agent.conf(), container="c1", netns=pod.path, pod=("default", "c1"))
        pod.delete()


def expr_metrics(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: identifiers that are neither functions,
    keywords, label names (inside {} or by/without (...)) nor durations."""
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges
    expr = re.sub(r'"[^"]*"', "", expr)
    names = set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", expr))
    functions = {"rate", "irate", "increase", "sum", "max", "min", "avg", "count", "histogram_quantile",
                 "topk", "bottomk", "time", "clamp_min", "clamp_max", "abs", "delta", "changes", "resets",
                 "label_replace", "vector", "scalar", "and", "or", "unless", "bool", "offset", "le"}
    return {n for n in names if n not in functions}


SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


def exposed_series(families: dict) -> set[str]:
    """Every series name a scrape declares (also before its first sample, as an error
    counter that never counted): a counter's x_total, a histogram's _bucket/_sum/_count."""
    return {name + suffix for name, family in families.items() for suffix in SUFFIXES.get(family.type, ("",))}


def test_every_dashboard_query_names_a_metric_an_agent_or_the_controller_exposes(setup):
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["title"] and dashboard["uid"] and dashboard["schemaVersion"] >= 16
    panels = [p for p in dashboard["panels"] if p.get("type") != "row"]
    assert panels
    exprs = [t["expr"] for p in panels for t in p.get("targets", [])]
    assert len(exprs) >= 6
    for panel in panels:
        assert panel["type"] and panel["title"] and panel["targets"], panel.get("title")
        assert {"x", "y", "w", "h"} <= set(panel["gridPos"]), panel["title"]
    exposed = exposed_series(scrape(setup.metrics_port)) | exposed_series(scrape(setup.controller.port))
    asked = set().union(*map(expr_metrics, exprs))
    # Template variables ($node, $pool) are names too: drop what starts with $ (stripped by the regex).
    assert asked, exprs
    missing = asked - exposed
    assert not missing, f"the dashboard asks for metrics nobody exposes: {sorted(missing)}"
