"""Services over BGP in the lab, at BIRD, FRR and GoBGP top-of-rack routers: a Service's
LoadBalancer IP is spread (ECMP) over exactly the nodes that should take its traffic, and
follows a Local service's endpoints.

The lab runs without Kubernetes: the Service and its EndpointSlice are declared with
`routedctl apply -f` into the lab's etcd, where the agents read them. Four nodes in two
racks; each ToR peers with its rack's two nodes and with the other ToR.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from routed.lab import cluster, routers
from tests.e2e.labutil import LabRun, router_rib
from tests.support.wait import eventually

pytestmark = [pytest.mark.root, pytest.mark.etcd, pytest.mark.slow]

CLUSTER_LB, LOCAL_LB = "10.98.0.10/32", "10.98.0.20/32"


def service(name: str, policy: str, lb: str, cluster_ip: str) -> dict:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "default"},
            "spec": {"type": "LoadBalancer", "clusterIP": cluster_ip, "externalTrafficPolicy": policy,
                     "ports": [{"port": 80, "targetPort": 8080}]},
            "status": {"loadBalancer": {"ingress": [{"ip": lb}]}}}


def endpoint_slice(ready: dict[str, bool]) -> dict:
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "api-1", "namespace": "default", "labels": {"kubernetes.io/service-name": "api"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": [f"10.244.200.{i}"], "nodeName": node, "conditions": {"ready": up}}
                          for i, (node, up) in enumerate(sorted(ready.items()), 1)]}


def apply(lab: LabRun, docs: list[dict]) -> None:
    lab.ctl("apply", "-f", "-", input=json.dumps(docs))


def ecmp(state: dict, rack: dict, prefix: str) -> set[str]:
    return routers.ecmp(rack["kind"], cluster.router_spec(state, rack), Path(rack["dir"]),
                        rack["tor_ns"]).get(prefix, set())


def wait_ecmp(lab: LabRun, rack: dict, prefix: str, expected: set[str]) -> None:
    state = lab.state()
    eventually(lambda: ecmp(state, rack, prefix) == expected,
               f"{rack['tor']} ({rack['kind']}) to spread {prefix} over {sorted(expected)}", timeout=90,
               interval=0.5, details=lambda: f"now {sorted(ecmp(state, rack, prefix))}\n"
                                             f"{router_rib(rack['kind'], rack)}\n{lab.logs()}")


@pytest.mark.parametrize("tor", routers.KINDS)
def test_tor_spreads_a_load_balancer_ip_over_exactly_the_right_nodes(lab: LabRun, tor: str):
    lab.run("up", "--nodes", "4", "--racks", "2", "--tor", tor)
    state = lab.state()
    rack1, rack2 = state["racks"]
    ip = {n["name"]: n["ip"] for n in state["nodes"]}
    apply(lab, [service("web", "Cluster", "10.98.0.10", "10.96.0.10"),
                service("api", "Local", "10.98.0.20", "10.96.0.20"),
                endpoint_slice({"node1": True, "node2": True, "node3": False})])

    # Cluster: every node of the rack; the other rack's path (longer) is no part of the set.
    wait_ecmp(lab, rack1, CLUSTER_LB, {ip["node1"], ip["node2"]})
    wait_ecmp(lab, rack2, CLUSTER_LB, {ip["node3"], ip["node4"]})
    wait_ecmp(lab, rack1, "10.96.0.0/16", {ip["node1"], ip["node2"]})  # the cluster CIDR, from every node
    # Local: only the nodes with a ready endpoint; rack 2 has none, so it goes to rack 1's ToR.
    wait_ecmp(lab, rack1, LOCAL_LB, {ip["node1"], ip["node2"]})
    wait_ecmp(lab, rack2, LOCAL_LB, {rack1["core_ip"]})

    # `routed lab status` shows the same sets.
    routes = {r["name"]: r["serviceRoutes"] for r in lab.status()["routers"]}
    assert routes[rack1["tor"]][CLUSTER_LB] == [ip["node1"], ip["node2"]], routes
    assert routes[rack2["tor"]][LOCAL_LB] == [rack1["core_ip"]], routes
    text = lab.run("status", "--no-ping").stdout
    assert "SERVICE ROUTES AT THE TORS" in text, text
    rows = [line.split() for line in text.splitlines()]
    assert [rack1["tor"], CLUSTER_LB, f"{ip['node1']},", ip["node2"]] in rows, text

    # node2's endpoint goes away: node2 withdraws, the ToR keeps node1 alone.
    apply(lab, [endpoint_slice({"node1": True, "node2": False, "node3": False})])
    wait_ecmp(lab, rack1, LOCAL_LB, {ip["node1"]})
    # node3's becomes ready: rack 2's ToR now goes to node3 (shorter) instead of rack 1.
    apply(lab, [endpoint_slice({"node1": True, "node2": False, "node3": True})])
    wait_ecmp(lab, rack2, LOCAL_LB, {ip["node3"]})
    assert ecmp(state, rack1, CLUSTER_LB) == {ip["node1"], ip["node2"]}
    lab.down()


def test_dual_stack_lab_spreads_an_ipv6_load_balancer_ip_too(lab: LabRun):
    """IPv6 service addresses go out over the nodes' IPv6 sessions (ExaBGP takes one family
    per announce line: before it did, a line mixing both reached no IPv4 peer)."""
    lab.run("up", "--nodes", "2", "--racks", "1", "--tor", "bird", "--dual-stack")
    state = lab.state()
    (rack,) = state["racks"]
    svc = service("web6", "Local", "10.98.0.30", "10.96.0.30")
    svc["status"]["loadBalancer"]["ingress"].append({"ip": "fd00:98::30"})
    eps = endpoint_slice({"node1": True, "node2": True})
    eps["metadata"]["labels"]["kubernetes.io/service-name"] = "web6"
    apply(lab, [svc, eps])
    node1, node2 = state["nodes"]
    wait_ecmp(lab, rack, "10.98.0.30/32", {node1["ip"], node2["ip"]})
    wait_ecmp(lab, rack, "fd00:98::30/128", {node1["ip6"], node2["ip6"]})  # over the IPv6 sessions
    wait_ecmp(lab, rack, "fd00:96::/112", {node1["ip6"], node2["ip6"]})
    eps["endpoints"][1]["conditions"]["ready"] = False  # node2's
    apply(lab, [eps])
    wait_ecmp(lab, rack, "fd00:98::30/128", {node1["ip6"]})
    wait_ecmp(lab, rack, "10.98.0.30/32", {node1["ip"]})
    lab.down()
