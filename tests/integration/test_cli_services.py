"""routedctl apply/get/delete of v1 Services and discovery.k8s.io/v1 EndpointSlices (how a
cluster without Kubernetes, the lab, declares the services its nodes announce), as the
installed console script against a real etcd."""

from __future__ import annotations

import json

import pytest

from tests.integration.test_cli import dump, fails, ok

pytestmark = pytest.mark.etcd

SVC = {"apiVersion": "v1", "kind": "Service",
       "metadata": {"name": "web", "namespace": "shop", "uid": "1b2c", "managedFields": [{"manager": "x"}]},
       "spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.10", "externalIPs": ["198.51.100.7"],
                "externalTrafficPolicy": "Local", "ports": [{"port": 80}], "selector": {"app": "web"}},
       "status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.10"}]}}}
EPS = {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
       "metadata": {"name": "web-1", "namespace": "shop", "labels": {"kubernetes.io/service-name": "web"}},
       "addressType": "IPv4",
       "endpoints": [{"addresses": ["10.244.1.2"], "nodeName": "node1", "conditions": {"ready": True}},
                     {"addresses": ["10.244.2.2"], "nodeName": "node2", "conditions": {"ready": False}}],
       "ports": [{"port": 8080}]}


@pytest.fixture
def env(etcd):
    return etcd.env()


def test_services_and_endpoint_slices_apply_get_delete(env, tmp_path):
    f = tmp_path / "svc.yaml"
    f.write_text(dump(SVC, EPS))
    assert ok(env, "apply", "-f", str(f)).stdout.split("\n")[:2] == ["service/shop/web created",
                                                                    "endpointslice/shop/web-1 created"]
    stored = json.loads(ok(env, "get", "svc", "web", "-n", "shop", "-o", "json").stdout)
    assert stored["spec"]["externalTrafficPolicy"] == "Local" and "ports" not in stored["spec"]
    assert stored["status"]["loadBalancer"]["ingress"] == [{"ip": "203.0.113.10"}]
    wide = ok(env, "get", "services", "-o", "wide").stdout.split("\n")
    assert wide[0].split() == ["NAMESPACE", "NAME", "TYPE", "CLUSTERIP", "EXTERNALIPS", "LOADBALANCERIPS",
                               "TRAFFICPOLICY"]
    assert wide[1].split() == ["shop", "web", "LoadBalancer", "10.96.0.10", "198.51.100.7", "203.0.113.10", "Local"]
    slices = ok(env, "get", "endpointslices", "-n", "shop", "-o", "wide").stdout.split("\n")
    assert slices[1].split() == ["shop", "web-1", "web", "IPv4", "node1"]
    assert ok(env, "delete", "-f", str(f)).stdout.split("\n")[:2] == ["service/shop/web deleted",
                                                                     "endpointslice/shop/web-1 deleted"]


def test_a_bad_service_is_refused_in_one_line_and_nothing_is_written(env, tmp_path):
    bad = json.loads(json.dumps(SVC))
    bad["status"]["loadBalancer"]["ingress"] = [{"ip": "203.0.113.300"}]
    f = tmp_path / "bad.yaml"
    f.write_text(dump(EPS, bad))
    line = fails(env, "apply", "-f", str(f))
    assert line.endswith('bad.yaml: document 2: Service "web": status.loadBalancer.ingress[0].ip: '
                         '"203.0.113.300" is not an IP address'), line
    assert json.loads(ok(env, "get", "endpointslices", "-o", "json").stdout)["items"] == []  # nothing written
