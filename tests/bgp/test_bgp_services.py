"""Services over BGP with real agents, ExaBGP and a GoBGP top-of-rack router.

Three nodes (AS 64512, full mesh) and a GoBGP ToR (AS 65001) peering with all of them.
The default BGPConfiguration asks for Calico's service advertisement; Services and
EndpointSlices are declared with `routedctl apply` (the agents run without Kubernetes, so
they read them from etcd). The ToR's RIB must hold, for each service address, exactly the
next hops of the nodes that should attract its traffic:

    10.96.0.0/12        serviceClusterIPs        every node
    203.0.113.10/32     LB IP, Cluster           every node
    203.0.113.20/32     LB IP, Local             the nodes with a ready endpoint, and it follows them
    198.51.100.7/32     external IP, Cluster     every node
    192.0.2.99, 8.8.8.8 outside the CIDRs        nobody
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from tests.bgp.routers import GoBgp, Neighbor, RouterSpec, module_cluster
from tests.support.cluster import ROUTEDCTL

pytestmark = [pytest.mark.root, pytest.mark.etcd, pytest.mark.slow]

NODE_AS, TOR_AS, TOR = 64512, 65001, "192.0.2.1"
NODES = {"n1": "192.0.2.11", "n2": "192.0.2.12", "n3": "192.0.2.13"}
CLUSTER_CIDR, LB_CLUSTER, LB_LOCAL, EXTERNAL = "10.96.0.0/12", "203.0.113.10/32", "203.0.113.20/32", "198.51.100.7/32"

CONFIG = {"kind": "BGPConfiguration", "metadata": {"name": "default"},
          "spec": {"asNumber": NODE_AS, "serviceClusterIPs": [{"cidr": CLUSTER_CIDR}],
                   "serviceExternalIPs": [{"cidr": "198.51.100.0/24"}],
                   "serviceLoadBalancerIPs": [{"cidr": "203.0.113.0/24"}]}}


def service(name: str, policy: str, lb: str, cluster_ip: str, external: list[str] = ()) -> dict:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "shop"},
            "spec": {"type": "LoadBalancer", "clusterIP": cluster_ip, "externalIPs": list(external),
                     "externalTrafficPolicy": policy, "ports": [{"port": 80}]},
            "status": {"loadBalancer": {"ingress": [{"ip": lb}]}}}


def endpoints(service_name: str, ready: dict[str, bool]) -> dict:
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": f"{service_name}-1", "namespace": "shop",
                         "labels": {"kubernetes.io/service-name": service_name}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": [f"10.244.9.{i}"], "nodeName": node, "conditions": {"ready": up}}
                          for i, (node, up) in enumerate(sorted(ready.items()), 1)]}


def routedctl(cluster, *args: str, docs: list[dict] | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "ROUTED_ETCD_ENDPOINTS": cluster.etcd.url}
    proc = subprocess.run([ROUTEDCTL, *args], input=json.dumps(docs) if docs is not None else None, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    with module_cluster(tmp_path_factory.mktemp("services")) as cluster:
        cluster.apply({"kind": "IPPool", "metadata": {"name": "pods"}, "spec": {"cidr": "10.244.0.0/16"}})
        cluster.apply(CONFIG)
        cluster.apply({"kind": "BGPPeer", "metadata": {"name": "tor"}, "spec": {"peerIP": TOR, "asNumber": TOR_AS}})
        tor = cluster.add_router("tor", GoBgp, RouterSpec(TOR, TOR_AS, [Neighbor(ip, NODE_AS) for ip in NODES.values()]))
        nodes = [cluster.add_node(name, int(ip.rsplit(".", 1)[1])) for name, ip in NODES.items()]
        for node in nodes:
            cluster.wait(lambda: cluster.sessions_up(node, 3), what=f"{node.name}'s sessions")
        for node in nodes:
            node.add_pod("p")
        yield cluster, tor, nodes


def hops(tor, prefix: str) -> set[str]:
    return tor.rib().get(prefix, set())


def wait_hops(cluster, tor, prefix: str, expected: set[str]) -> None:
    cluster.wait(lambda: hops(tor, prefix) == expected,
                 what=f"the ToR's paths for {prefix} to be {sorted(expected)} (now {sorted(hops(tor, prefix))})")


def test_tor_holds_exactly_the_expected_next_hops_and_follows_local_endpoints(setup):
    cluster, tor, nodes = setup
    everyone = set(NODES.values())
    routedctl(cluster, "apply", "-f", "-", docs=[
        service("web", "Cluster", "203.0.113.10", "10.96.0.10", external=["198.51.100.7", "192.0.2.99"]),
        service("api", "Local", "203.0.113.20", "10.96.0.20"),
        service("evil", "Cluster", "8.8.8.8", "10.96.0.30"),
        endpoints("api", {"n1": True, "n2": True, "n3": False})])
    wait_hops(cluster, tor, CLUSTER_CIDR, everyone)
    wait_hops(cluster, tor, LB_CLUSTER, everyone)
    wait_hops(cluster, tor, EXTERNAL, everyone)
    wait_hops(cluster, tor, LB_LOCAL, {NODES["n1"], NODES["n2"]})
    wait_hops(cluster, tor, "10.96.0.20/32", {NODES["n1"], NODES["n2"]})  # a Local service's cluster IP
    rib = tor.rib()
    for outside in ("192.0.2.99/32", "8.8.8.8/32", "10.96.0.10/32"):
        assert outside not in rib, f"{outside} announced: {rib.get(outside)}"
    # n1: the CIDR, web's LB and external IP, api's LB and cluster IP; n3 only web's and the CIDR.
    assert "routed_bgp_service_prefixes 5.0" in nodes[0].agent.metrics()
    assert "routed_bgp_service_prefixes 3.0" in nodes[2].agent.metrics()

    # n2's endpoint goes away: n2 withdraws, n3's becomes ready: n3 announces.
    routedctl(cluster, "apply", "-f", "-", docs=[endpoints("api", {"n1": True, "n2": False, "n3": True})])
    wait_hops(cluster, tor, LB_LOCAL, {NODES["n1"], NODES["n3"]})
    # No endpoint at all: nobody attracts its traffic; the Cluster service is untouched.
    routedctl(cluster, "delete", "endpointslice", "api-1", "--namespace", "shop")
    wait_hops(cluster, tor, LB_LOCAL, set())
    assert hops(tor, LB_CLUSTER) == everyone
    # The Service itself goes: its addresses are withdrawn everywhere.
    routedctl(cluster, "delete", "service", "web", "--namespace", "shop")
    wait_hops(cluster, tor, LB_CLUSTER, set())
    wait_hops(cluster, tor, EXTERNAL, set())
    assert hops(tor, CLUSTER_CIDR) == everyone


def test_nodes_never_install_each_others_service_routes_nor_call_them_rejections(setup):
    cluster, tor, nodes = setup
    routedctl(cluster, "apply", "-f", "-", docs=[service("mesh", "Cluster", "203.0.113.30", "10.96.0.40")])
    wait_hops(cluster, tor, "203.0.113.30/32", set(NODES.values()))
    n1 = nodes[0]
    others = nodes[1:]
    # n1 gets the others' blocks over the mesh, and their service routes too (ExaBGP sends
    # every announcement to every peer): the blocks are installed, the service routes are not.
    for other in others:
        for block in other.blocks():
            cluster.wait(lambda: f"{block} via {other.ip} dev eth0" in n1.routes(), what=f"n1 to learn {block}")
    kernel = n1.ns.run("ip", "route", "show", "table", "all").stdout
    assert "203.0.113.30" not in kernel and "10.96.0.0/12" not in kernel, kernel
    for other in others:
        peer = n1.peer(other.ip)
        assert peer["state"] == "up" and peer["accepted"] == len(other.blocks()), peer
        assert peer["rejected"] == 0 and peer["rejectedBy"] == {}, peer
    log = n1.agent.log.read_text()
    assert "rejected 203.0.113.30/32" not in log and "rejected 10.96.0.0/12" not in log


def test_an_agent_with_kubernetes_announces_from_its_informers(tmp_path, etcd, kube, root):
    """The same, with the Services and EndpointSlices in a real kube-apiserver only (etcd
    holds none): the agent's own informers drive what it announces."""
    from kubernetes import client as k8s

    from routed import resources as r
    from tests.support.cluster import Cluster

    cluster = Cluster(tmp_path, etcd)
    api = kube.api.api_client()
    core, discovery = k8s.CoreV1Api(api), k8s.DiscoveryV1Api(api)
    namespace, address = "svc-bgp", "192.0.2.11"
    try:
        cluster.apply({"kind": "IPPool", "metadata": {"name": "pods"}, "spec": {"cidr": "10.244.0.0/16"}})
        cluster.apply(CONFIG)
        cluster.apply({"kind": "BGPPeer", "metadata": {"name": "tor"}, "spec": {"peerIP": TOR, "asNumber": TOR_AS}})
        tor = cluster.add_router("tor", GoBgp, RouterSpec(TOR, TOR_AS, [Neighbor(address, NODE_AS)]))
        kube.add_node("svc-k1", internal_ip=address)
        node = cluster.add_node("svc-k1", 11, start=False)
        node.agent.extra_args += ["--kubeconfig", kube.kubeconfig]
        node.start()
        cluster.wait(lambda: cluster.sessions_up(node, 1), what="the ToR session")
        wait_hops(cluster, tor, CLUSTER_CIDR, {address})

        kube.ensure_namespace(namespace)
        body = service("api", "Local", "203.0.113.20", "10.96.0.20")
        core.create_namespaced_service(namespace, {"metadata": {"name": "api"}, "spec": body["spec"]})
        core.patch_namespaced_service_status("api", namespace, {"status": body["status"]})
        eps = endpoints("api", {"svc-k1": True})
        eps["metadata"]["namespace"] = namespace
        discovery.create_namespaced_endpoint_slice(namespace, eps)
        wait_hops(cluster, tor, LB_LOCAL, {address})
        assert cluster.store.list(r.Service) == [] and cluster.store.list(r.EndpointSlice) == []
        # Not ready any more: withdrawn, with no etcd change to wake the agent.
        discovery.patch_namespaced_endpoint_slice("api-1", namespace, {"endpoints": endpoints(
            "api", {"svc-k1": False})["endpoints"]})
        wait_hops(cluster, tor, LB_LOCAL, set())
        assert hops(tor, CLUSTER_CIDR) == {address}
    finally:
        for delete in (lambda: discovery.delete_namespaced_endpoint_slice("api-1", namespace),
                       lambda: core.delete_namespaced_service("api", namespace)):
            try:
                delete()
            except k8s.ApiException as err:
                if err.status != 404:
                    raise
        cluster.close()
