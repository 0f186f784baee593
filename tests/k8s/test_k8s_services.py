"""Services and EndpointSlices reach a node's service announcements through the agent's
informers, against a real kube-apiserver (no controller-manager: the test writes the
EndpointSlice and the LoadBalancer status itself, as the EndpointSlice controller and a
load-balancer controller would)."""

from __future__ import annotations

import ipaddress
import threading

from kubernetes import client as k8s

from bgp.services import Advertisement
from routed.agent.services import KubeServices, ServiceAnnouncer
from tests.support.wait import eventually

NS = "svc-adv"
ADV = Advertisement(cluster=(ipaddress.ip_network("10.96.0.0/24"),),
                    load_balancer=(ipaddress.ip_network("203.0.113.0/24"),))


def _slice(ready: bool) -> dict:
    return {"metadata": {"name": "lb-1", "namespace": NS, "labels": {"kubernetes.io/service-name": "lb"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.244.9.1"], "nodeName": "n1", "conditions": {"ready": ready}}],
            "ports": [{"port": 8080, "protocol": "TCP"}]}


def test_informers_feed_the_announcer_and_follow_endpoint_readiness(kube):
    api = kube.api.api_client()
    core, discovery = k8s.CoreV1Api(api), k8s.DiscoveryV1Api(api)
    kube.ensure_namespace(NS)
    core.create_namespaced_service(NS, {
        "metadata": {"name": "lb"},
        "spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.50", "externalTrafficPolicy": "Local",
                 "ports": [{"port": 80, "targetPort": 8080}], "selector": {"app": "lb"}}})
    source = None
    try:
        core.patch_namespaced_service_status("lb", NS, {"status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.5"}]}}})
        discovery.create_namespaced_endpoint_slice(NS, _slice(True))
        changed = threading.Event()
        source = KubeServices(kube.api.routed_client(), changed.set, watch_timeout=5).start()
        here, elsewhere = ServiceAnnouncer(source, "n1"), ServiceAnnouncer(source, "n2")
        local = {"10.96.0.0/24", "203.0.113.5/32", "10.96.0.50/32"}
        eventually(lambda: here.prefixes(ADV, []) == local, "n1 to announce the Local service", timeout=30)
        assert elsewhere.prefixes(ADV, []) == {"10.96.0.0/24"}
        assert changed.is_set()
        # The endpoint stops being ready: n1 withdraws the service's addresses.
        discovery.patch_namespaced_endpoint_slice("lb-1", NS, {"endpoints": _slice(False)["endpoints"]})
        eventually(lambda: here.prefixes(ADV, []) == {"10.96.0.0/24"}, "n1 to withdraw", timeout=30)
    finally:
        if source is not None:
            source.stop()
        for delete in (lambda: discovery.delete_namespaced_endpoint_slice("lb-1", NS),
                       lambda: core.delete_namespaced_service("lb", NS)):
            try:
                delete()
            except k8s.ApiException as err:
                if err.status != 404:
                    raise
