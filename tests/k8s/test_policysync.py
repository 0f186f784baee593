"""The controller's sync of Kubernetes Namespaces and NetworkPolicies into etcd, against
a real kube-apiserver and a real etcd."""

from __future__ import annotations

import secrets

from kubernetes import client as k8s

from routed import resources as r
from routed.controller.policysync import PolicySync, _document, plan
from routed.datastore.resources import ResourceStore
from routed.errors import InvalidResource
from tests.k8s.k8sutil import kube_client


def test_plan_writes_only_differences():
    ns = lambda labels: r.parse({"apiVersion": "v1", "kind": "Namespace",  # noqa: E731
                                 "metadata": {"name": "x", "labels": labels}})
    assert plan([ns({"a": "1"})], [ns({"a": "1"})]) == ([], [])
    put, gone = plan([ns({"a": "2"})], [ns({"a": "1"})])
    assert [p.metadata.labels for p in put] == [{"a": "2"}] and gone == []
    assert plan([], [ns({})])[1][0].name == "x"


def test_an_object_routed_cannot_take_is_refused_in_one_line():
    bad = {"metadata": {"name": "bad", "namespace": "x"}, "spec": {"podSelector": {},
                                                                   "ingress": [{"ports": [{"port": 0}]}]}}
    try:
        r.parse(_document(bad, "networking.k8s.io/v1", "NetworkPolicy"))
    except InvalidResource as err:
        assert "spec.ingress[0].ports[0]" in str(err) and "\n" not in str(err)
    else:
        raise AssertionError("port 0 was accepted")


def test_namespaces_and_policies_reach_etcd_and_follow_changes(kv, kube):
    store = ResourceStore(kv)
    name = f"pol-{secrets.token_hex(3)}"
    kube.add_namespace(name)
    kube.patch_metadata("namespaces", name, labels={"team": "a"})
    net = k8s.NetworkingV1Api(kube.api.api_client())
    net.create_namespaced_network_policy(name, {
        "metadata": {"name": "db"},
        "spec": {"podSelector": {"matchLabels": {"app": "db"}}, "policyTypes": ["Ingress"],
                 "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "api"}}}]}]}})
    try:
        sync = PolicySync(store, kube_client(kube))
        sync.sync()
        knp = store.get(r.KubeNetworkPolicy, "db", name)
        assert knp.spec.pod_selector.match_labels == {"app": "db"}
        assert store.get(r.Namespace, name).metadata.labels["team"] == "a"
        assert sync.sync() == (0, 0)  # nothing changed, nothing written
        kube.patch_metadata("namespaces", name, labels={"team": "b"})
        net.delete_namespaced_network_policy("db", name)
        assert sync.sync() == (1, 1)
        assert store.get(r.Namespace, name).metadata.labels["team"] == "b"
        assert store.find(r.KubeNetworkPolicy, "db", name) is None
    finally:
        try:
            net.delete_namespaced_network_policy("db", name)
        except k8s.ApiException:
            pass
