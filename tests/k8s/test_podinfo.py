"""Pod and namespace annotations choose pools and fixed addresses: the parsing (pure), the
agent's pod cache against a real kube-apiserver, and CNI ADD through the plugin and a real
agent that runs with --kubeconfig."""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from routed import resources as r
from routed.datastore.resources import ResourceStore
from routed.k8s import AnnotationError, PodNotKnown
from routed.k8s.podinfo import PodInfo, addresses_from, parse_addresses, parse_pools, pools_from
from tests.k8s.k8sutil import handles, kube_client, pool, pod_handle
from tests.support.agent import AgentProcess, cni
from tests.support.etcd import EtcdServer
from tests.support.kubeapi import KubeObjects
from tests.support.netns import node_host
from tests.support.wait import eventually

POOLS = "routed.io/ipv4pools"
ADDRS = "routed.io/ipAddrs"


def pod(namespace="ns", name="p", **annotations) -> dict:
    return {"metadata": {"namespace": namespace, "name": name, "annotations": annotations}}


def namespace(name="ns", **annotations) -> dict:
    return {"metadata": {"name": name, "annotations": annotations}}


# -- parsing (pure) -----------------------------------------------------------------------------

def test_pool_annotation_of_the_pod_wins_over_its_namespace():
    ns = namespace(**{POOLS: '["ns-pool"]'})
    assert pools_from(pod(**{POOLS: '["pod-pool", "second"]'}), ns) == ["pod-pool", "second"]
    assert pools_from(pod(), ns) == ["ns-pool"]
    assert pools_from(pod(), namespace()) is None
    assert pools_from(pod(), None) is None
    assert pools_from(pod(**{"routed.io/ipv6pools": '["v6"]'}), ns, version=6) == ["v6"]


@pytest.mark.parametrize("text", ['pool-a', '["pool-a"', '"pool-a"', '[]', '[1]', '[""]', '{"a": 1}'])
def test_malformed_pool_annotations_are_one_line_errors(text):
    with pytest.raises(AnnotationError) as err:
        parse_pools(text, "pod ns/p")
    message = str(err.value)
    assert "\n" not in message and message.startswith("pod ns/p: annotation routed.io/ipv4pools")
    assert "JSON list of pool names" in message


def test_malformed_namespace_annotation_names_the_namespace():
    with pytest.raises(AnnotationError, match=r"namespace ns \(of pod p\): annotation routed.io/ipv4pools"):
        pools_from(pod(), namespace(**{POOLS: "pool-a"}))


def test_address_annotation():
    assert parse_addresses('["10.1.2.3", "fd00::5"]', "pod ns/p") == ["10.1.2.3", "fd00::5"]
    assert addresses_from(pod(**{ADDRS: '[" 10.1.2.3 "]'})) == ["10.1.2.3"]
    assert addresses_from(pod()) is None
    for text, problem in (('["10.1.2.300"]', "is not an IP address"), ('10.1.2.3', "JSON list of IP addresses"),
                          ('["10.1.2.3", "10.1.2.4"]', "more than one IPv4 address"),
                          ('["10.1.2.3/32"]', "is not an IP address")):
        with pytest.raises(AnnotationError, match=problem):
            parse_addresses(text, "pod ns/p")
    with pytest.raises(AnnotationError, match="cannot be used together"):
        addresses_from(pod(**{ADDRS: '["10.1.2.3"]', POOLS: '["a"]'}))


# -- the cache against the real API server ------------------------------------------------------

@pytest.fixture
def podinfo(kube):
    info = PodInfo(kube_client(kube), "node-1", wait=0.5, watch_timeout=30).start()
    try:
        eventually(lambda: info.synced, "the pod cache to sync")
        yield info
    finally:
        info.stop()


def test_cache_answers_from_pod_then_namespace_annotations(kube, podinfo):
    kube.add_namespace("plain")
    kube.add_namespace("team", annotations={POOLS: '["team-pool"]'})
    kube.add_pod("plain", "a", node="node-1")
    kube.add_pod("team", "b", node="node-1")
    kube.add_pod("team", "c", node="node-1", annotations={POOLS: '["own-pool"]'})
    kube.add_pod("team", "d", node="node-1", annotations={ADDRS: '["10.61.0.9"]'})
    assert podinfo.pools_for("plain", "a") is None and podinfo.addresses_for("plain", "a") is None
    assert podinfo.pools_for("team", "b") == ["team-pool"]
    assert podinfo.pools_for("team", "c") == ["own-pool"]
    assert podinfo.addresses_for("team", "d") == ["10.61.0.9"]
    # an annotation changed later is what the next ADD sees
    kube.patch_metadata("namespaces", "team", annotations={POOLS: '["other"]'})
    eventually(lambda: podinfo.pools_for("team", "b") == ["other"], "the namespace update")


def test_cache_holds_only_this_nodes_pods(kube, podinfo):
    kube.add_namespace("ns")
    kube.add_pod("ns", "elsewhere", node="node-2", annotations={POOLS: '["x"]'})
    kube.add_pod("ns", "here", node="node-1", annotations={POOLS: '["x"]'})
    assert podinfo.pools_for("ns", "here") == ["x"]
    with pytest.raises(PodNotKnown, match="pod ns/elsewhere is not among node node-1's pods; try again"):
        podinfo.pools_for("ns", "elsewhere")


def test_lookup_waits_for_a_pod_the_watch_has_not_delivered_yet(kube):
    """kubelet may ask for the network before our watch delivered the pod: ADD waits for it."""
    kube.add_namespace("ns")
    info = PodInfo(kube_client(kube), "node-1", wait=30, watch_timeout=30).start()
    try:
        eventually(lambda: info.synced, "the pod cache to sync")
        asked = threading.Event()
        answer = {}

        def lookup():
            asked.set()
            answer["pools"] = info.pools_for("ns", "late")

        waiter = threading.Thread(target=lookup)
        waiter.start()
        asked.wait()
        kube.add_pod("ns", "late", node="node-1", annotations={POOLS: '["late-pool"]'})
        waiter.join()
        assert answer["pools"] == ["late-pool"]
    finally:
        info.stop()


def test_malformed_annotation_in_the_cache_is_an_error_for_that_pod_only(kube, podinfo):
    kube.add_namespace("ns")
    kube.add_pod("ns", "bad", node="node-1", annotations={POOLS: "pool-a"})
    kube.add_pod("ns", "good", node="node-1", annotations={POOLS: '["pool-a"]'})
    with pytest.raises(AnnotationError, match="pod ns/bad"):
        podinfo.pools_for("ns", "bad")
    assert podinfo.pools_for("ns", "good") == ["pool-a"]


# -- through a real agent (root) ---------------------------------------------------------------

NODE_IP = "192.0.2.10"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, kube_api):
    if os.geteuid() != 0:
        pytest.fail("these tests need root (network namespaces)", pytrace=False)
    workdir = tmp_path_factory.mktemp("k8s-agent")
    etcd = EtcdServer(workdir / "etcd").start()
    kube = KubeObjects(kube_api)
    host = node_host(f"{NODE_IP}/24")
    agent = None
    try:
        kv = etcd.client()
        store = ResourceStore(kv)
        pool(store, "pool-a", "10.60.0.0/16")
        pool(store, "pool-b", "10.61.0.0/16")
        pool(store, "pool-rack2", "10.62.0.0/16", nodeSelector="rack == 'r2'")
        kube.add_node("node-1", labels={"rack": "r1"}, internal_ip=NODE_IP)
        for name in ("plain", "team"):
            kube.add_namespace(name, annotations={POOLS: '["pool-b"]'} if name == "team" else {})
        # no --node-ip: the address comes from the Kubernetes Node, its prefix from the host
        agent = AgentProcess(workdir / "agent", etcd.url, host, "node-1", "",
                             extra_args=["--kubeconfig", kube.kubeconfig]).start()
        yield type("Cluster", (), {"etcd": etcd, "kv": kv, "store": store, "kube": kube, "host": host,
                                   "agent": agent})
    finally:
        if agent:
            agent.stop()
        host.delete()
        kube.cleanup()
        etcd.stop()


def add(cluster, netns, namespace, name, conf_extra=None, **annotations):
    """Create the pod in the API (as the scheduler would), then CNI ADD it (as kubelet would)."""
    cluster.kube.add_pod(namespace, name, node="node-1", annotations=annotations)
    code, result, raw = cni("ADD", cluster.agent.conf(**(conf_extra or {})), container=f"c-{name}",
                            netns=netns.path, pod=(namespace, name))
    return code, result, raw


def delete(cluster, netns, namespace, name):
    code, _, raw = cni("DEL", cluster.agent.conf(), container=f"c-{name}", netns=netns.path, pod=(namespace, name))
    assert code == 0, raw


def address(result) -> ipaddress.IPv4Address:
    return ipaddress.ip_interface(result["ips"][0]["address"]).ip


def test_agent_takes_labels_and_address_from_the_kubernetes_node(cluster):
    node = cluster.store.get(r.Node, "node-1")
    assert node.spec.bgp.ipv4_address == f"{NODE_IP}/24"  # the prefix of uplink0 in the host netns
    assert node.metadata.labels["rack"] == "r1" and node.metadata.labels["kubernetes.io/hostname"] == "node-1"


@pytest.mark.parametrize("namespace, annotations, conf_extra, expected", [
    ("plain", {}, None, "10.60.0.0/16"),  # no annotation: the pools matching the node, first by name
    ("plain", {POOLS: '["pool-b"]'}, None, "10.61.0.0/16"),
    ("team", {}, None, "10.61.0.0/16"),  # the namespace's annotation
    ("team", {POOLS: '["pool-a"]'}, None, "10.60.0.0/16"),  # the pod's wins over its namespace's
    ("plain", {POOLS: '["pool-b"]'}, {"ipam": {"ipv4_pools": ["pool-a"]}}, "10.61.0.0/16"),  # and over the conflist's
], ids=["default", "pod", "namespace", "pod-over-namespace", "pod-over-conflist"])
def test_pool_annotation_chooses_the_pool(cluster, pods, namespace, annotations, conf_extra, expected, request):
    name = request.node.callspec.id
    netns = pods()
    code, result, raw = add(cluster, netns, namespace, name, conf_extra, **annotations)
    try:
        assert code == 0, raw
        assert address(result) in ipaddress.ip_network(expected)
    finally:
        delete(cluster, netns, namespace, name)


def test_a_named_pool_must_select_the_node(cluster, pods):
    """An annotation names a pool; it does not bypass the pool's nodeSelector (issue 10.11)."""
    netns = pods()
    code, body, raw = add(cluster, netns, "plain", "rack2", **{POOLS: '["pool-rack2"]'})
    try:
        assert code == 1 and 'IP pool "pool-rack2" does not select node "node-1"' in body["msg"], raw
    finally:
        delete(cluster, netns, "plain", "rack2")
    # Nor does a fixed address inside it (checked against the labels the agent registered).
    code, body, raw = add(cluster, netns, "plain", "rack2-fixed", **{ADDRS: '["10.62.0.9"]'})
    try:
        assert code == 1 and 'address 10.62.0.9: IP pool "pool-rack2" does not select node "node-1"' in body["msg"], raw
    finally:
        delete(cluster, netns, "plain", "rack2-fixed")


def test_ip_addrs_annotation_gives_the_pod_that_address(cluster, pods):
    netns = pods()
    code, result, raw = add(cluster, netns, "team", "fixed", **{ADDRS: '["10.61.200.7"]'})
    assert code == 0, raw
    assert str(address(result)) == "10.61.200.7"
    assert "10.61.200.7/32" in netns.run("ip", "-o", "addr", "show", "eth0").stdout
    # the address is taken: a second pod asking for it gets "address in use"
    other = pods()
    code, body, raw = add(cluster, other, "team", "fixed-too", **{ADDRS: '["10.61.200.7"]'})
    assert code == 1 and body["code"] == 104, raw
    delete(cluster, netns, "team", "fixed")
    eventually(lambda: pod_handle("c-fixed") not in handles(cluster.kv), "the fixed address released")


@pytest.mark.parametrize("annotations, problem", [
    ({POOLS: "pool-b"}, "annotation routed.io/ipv4pools must be a JSON list of pool names"),
    ({ADDRS: '["10.61.300.1"]'}, "annotation routed.io/ipAddrs: '10.61.300.1' is not an IP address"),
    ({ADDRS: '["10.61.0.1"]', POOLS: '["pool-b"]'}, "cannot be used together"),
], ids=["pools-not-json", "bad-address", "both"])
def test_malformed_annotation_is_a_clear_cni_error(cluster, pods, annotations, problem, request):
    name = "bad-" + request.node.callspec.id
    before = sorted(handles(cluster.kv))
    code, body, raw = add(cluster, pods(), "plain", name, **annotations)
    assert code == 1 and body["code"] == 7, raw
    assert body["msg"].startswith(f"pod plain/{name}: ") and problem in body["msg"] and "\n" not in body["msg"]
    assert sorted(handles(cluster.kv)) == before


def test_pod_unknown_to_the_api_is_try_again_later(cluster, pods):
    code, body, raw = cni("ADD", cluster.agent.conf(), container="c-ghost", netns=pods().path,
                          pod=("plain", "ghost"))
    assert code == 1 and body["code"] == 11, raw
    assert "pod plain/ghost is not among node node-1's pods" in body["msg"]


def test_the_cni_path_never_imports_kubernetes():
    """`import kubernetes` costs ~300 ms: the CNI commands and the CLI parsers
    must not pay it; only a running agent or controller with Kubernetes does."""
    code = ("import sys, cni.plugin, routed.k8s, routed.main; routed.main.build_parser(); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'kubernetes'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.stdout.strip() == "[]"
