"""Which Service addresses a node announces (bgp/services.py): pure, no I/O."""

from __future__ import annotations

import ipaddress

import pytest

from bgp.services import Advertisement, plan
from routed import resources as r
from routed.errors import InvalidResource

POOLS = [ipaddress.ip_network("10.244.0.0/16"), ipaddress.ip_network("fd00:244::/48")]


def adv(cluster=(), external=(), lb=()) -> Advertisement:
    spec = r.parse({"apiVersion": "routed.io/v1", "kind": "BGPConfiguration", "metadata": {"name": "default"},
                    "spec": {"serviceClusterIPs": [{"cidr": c} for c in cluster],
                             "serviceExternalIPs": [{"cidr": c} for c in external],
                             "serviceLoadBalancerIPs": [{"cidr": c} for c in lb]}}).spec
    return Advertisement.from_spec(spec)


def service(name, *, policy="Cluster", cluster_ip="10.96.0.10", external=(), lb=(), type_="LoadBalancer",
            namespace="shop"):
    return r.parse({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": namespace},
                    "spec": {"type": type_, "clusterIP": cluster_ip, "externalIPs": list(external),
                             "externalTrafficPolicy": policy},
                    "status": {"loadBalancer": {"ingress": [{"ip": ip} for ip in lb]}}})


def slice_(service_name, endpoints, name=None, namespace="shop", family="IPv4"):
    return r.parse({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                    "metadata": {"name": name or f"{service_name}-x", "namespace": namespace,
                                 "labels": {"kubernetes.io/service-name": service_name}},
                    "addressType": family,
                    "endpoints": [{"addresses": ["10.244.1.1"], "nodeName": node,
                                   **({"conditions": {"ready": ready}} if ready is not None else {})}
                                  for node, ready in endpoints]})


CFG = adv(cluster=["10.96.0.0/12", "fd00:96::/112"], external=["198.51.100.0/24"],
          lb=["203.0.113.0/24", "2001:db8:5::/64"])


def test_every_node_announces_the_cluster_cidrs_of_both_families():
    for node in ("a", "b"):
        assert plan(CFG, [], [], node, POOLS).prefixes == {"10.96.0.0/12", "fd00:96::/112"}


def test_cluster_policy_services_go_out_from_every_node_as_host_routes():
    svc = service("web", external=["198.51.100.7"], lb=["203.0.113.10", "2001:db8:5::a"])
    for node in ("a", "b"):
        got = plan(CFG, [svc], [], node, POOLS).prefixes
        assert {"198.51.100.7/32", "203.0.113.10/32", "2001:db8:5::a/128"} <= got
        assert "10.96.0.10/32" not in got  # the CIDR covers it


def test_local_policy_services_go_out_only_from_nodes_with_a_ready_endpoint():
    svc = service("web", policy="Local", external=["198.51.100.7"], lb=["203.0.113.10"])
    slices = [slice_("web", [("a", True), ("b", False)]), slice_("web", [("c", None)], name="web-y")]
    on = {"198.51.100.7/32", "203.0.113.10/32", "10.96.0.10/32"}
    assert on <= plan(CFG, [svc], slices, "a", POOLS).prefixes
    assert on <= plan(CFG, [svc], slices, "c", POOLS).prefixes  # unset ready: ready (kube-proxy)
    for node in ("b", "d"):  # endpoint not ready; no endpoint
        assert plan(CFG, [svc], slices, node, POOLS).prefixes == {"10.96.0.0/12", "fd00:96::/112"}
    # slices of another namespace's or another service's do not count
    other = [slice_("web", [("b", True)], namespace="elsewhere"), slice_("api", [("b", True)]),
             slice_("web", [("b", True)], name="web-fqdn", family="FQDN")]
    assert "203.0.113.10/32" not in plan(CFG, [svc], other, "b", POOLS).prefixes


def test_addresses_outside_the_configured_cidrs_or_inside_a_pool_are_never_announced():
    svc = service("evil", external=["192.0.2.1", "10.244.3.4"], lb=["8.8.8.8", "203.0.113.9"])
    result = plan(CFG, [svc], [], "a", POOLS)
    assert result.prefixes == {"10.96.0.0/12", "fd00:96::/112", "203.0.113.9/32"}
    assert result.skipped == {"Service shop/evil 192.0.2.1": "outside serviceExternalIPs",
                              "Service shop/evil 10.244.3.4": "outside serviceExternalIPs",
                              "Service shop/evil 8.8.8.8": "outside serviceLoadBalancerIPs"}
    overlapping = adv(cluster=["10.0.0.0/8"], lb=["10.244.0.0/24"])
    result = plan(overlapping, [service("x", lb=["10.244.0.5"])], [], "a", POOLS)
    assert result.prefixes == set()
    assert result.skipped == {"serviceClusterIPs 10.0.0.0/8": "overlaps an IP pool",
                              "Service shop/x 10.244.0.5": "inside an IP pool"}


def test_nothing_configured_announces_nothing_and_external_name_services_are_ignored():
    svc = service("web", external=["198.51.100.7"], lb=["203.0.113.10"])
    assert plan(adv(), [svc], [], "a", POOLS).prefixes == set()
    ext = service("ext", type_="ExternalName", cluster_ip="", external=["198.51.100.8"])
    assert plan(CFG, [ext], [], "a", POOLS).prefixes == {"10.96.0.0/12", "fd00:96::/112"}


@pytest.mark.parametrize("doc, message", [
    ({"spec": {"externalIPs": ["1.2.3"]}}, 'spec.externalIPs[0]: "1.2.3" is not an IP address'),
    ({"spec": {"clusterIP": "bogus"}}, 'spec.clusterIP: "bogus" is not an IP address'),
    ({"spec": {"externalTrafficPolicy": "Anywhere"}}, "spec.externalTrafficPolicy"),
    ({"status": {"loadBalancer": {"ingress": [{"ip": "300.1.1.1"}]}}}, "is not an IP address"),
])
def test_a_bad_service_is_refused_in_one_line(doc, message):
    with pytest.raises(InvalidResource) as err:
        r.parse({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "bad", "namespace": "shop"}, **doc})
    assert message in str(err.value) and str(err.value).startswith('Service "bad": ')


def test_kubernetes_objects_keep_what_routed_reads_and_ignore_the_rest():
    svc = r.parse({"apiVersion": "v1", "kind": "Service",
                   "metadata": {"name": "web", "namespace": "shop", "managedFields": [{}]},
                   "spec": {"type": "ClusterIP", "clusterIP": "None", "ports": [{"port": 80}], "selector": {}}})
    assert svc.spec.all_cluster_ips() == [] and "ports" not in svc.to_dict()["spec"]
    eps = slice_("web", [("a", True)])
    assert eps.service_name == "web" and eps.ready_nodes() == {"a"}


def test_a_burst_of_service_changes_queues_one_recomputation_and_a_later_change_another():
    """The informers call services_changed() per Service/EndpointSlice event; a rollout sends
    hundreds. The BGP loop takes one event for all that arrived before it took it."""
    from routed.agent.bgp import BGPController

    bgp = BGPController(None, None, None, "node-1", "192.0.2.1/24", "/nonexistent", "/nonexistent/bgp.sock")
    for _ in range(200):
        bgp.services_changed()
    assert list(bgp.events.queue) == [("services", None)]
    bgp.events.get_nowait()
    bgp._took_services_event()  # what the loop does when it takes the event
    bgp.services_changed()  # a change after the loop took the event is not lost
    assert list(bgp.events.queue) == [("services", None)]
