"""The fake Kubernetes API server, checked with the official client and routed's
own client wrapper and informer (list, watch, selectors, resourceVersions, 410 Gone)."""

from __future__ import annotations

import json
import subprocess
import threading

import pytest
from kubernetes import client, watch
from kubernetes.client.rest import ApiException

from routed.k8s import Gone
from routed.k8s.client import Informer
from tests.k8s.k8sutil import fake_kube, kube_client  # noqa: F401 - fixture
from tests.support.fakekube import BadRequest, field_matcher, label_matcher
from tests.support.wait import eventually


def core(fake) -> client.CoreV1Api:
    return client.CoreV1Api(client.ApiClient(client.Configuration(host=fake.url)))


def names(items) -> list[str]:
    return sorted(i.metadata.name for i in items)


def stream(fake, func, **kwargs) -> list[tuple[str, str]]:
    """(type, name) of every event until the server ends the stream."""
    return [(e["type"], e["object"].metadata.name)
            for e in watch.Watch().stream(func, timeout_seconds=kwargs.pop("timeout_seconds", 1), **kwargs)]


# -- selectors (pure) -------------------------------------------------------------------------

def test_label_selector_syntax():
    obj = {"metadata": {"labels": {"app": "web", "tier": "front"}}}
    assert label_matcher("app=web")(obj) and label_matcher("app==web,tier")(obj)
    assert label_matcher("app in (web, api),!gone")(obj)
    assert not label_matcher("app notin (web)")(obj)
    assert label_matcher("tier!=back,zone notin (a)")(obj)
    assert not label_matcher("gone")(obj) and not label_matcher("app=api")(obj)
    assert label_matcher("")(obj)
    for bad in ("app=(", "!app=web", "app web"):
        with pytest.raises(BadRequest):
            label_matcher(bad)


def test_field_selector_syntax():
    pod = {"metadata": {"name": "p", "namespace": "ns"}, "spec": {"nodeName": "n1"}}
    assert field_matcher("spec.nodeName=n1,metadata.namespace==ns")(pod)
    assert not field_matcher("spec.nodeName!=n1")(pod)
    with pytest.raises(BadRequest):
        field_matcher("spec.hostname=x")


# -- the official client --------------------------------------------------------------------------

def test_list_and_get_with_the_official_client(fake_kube):
    fake_kube.add_node("n1", labels={"rack": "a"}, internal_ip="192.0.2.1")
    fake_kube.add_node("n2", labels={"rack": "b"})
    fake_kube.add_namespace("apps", annotations={"routed.io/ipv4pools": '["pool-a"]'})
    fake_kube.add_pod("apps", "web-1", node="n1", labels={"app": "web"})
    fake_kube.add_pod("apps", "web-2", node="n2", labels={"app": "web"})
    fake_kube.add_pod("default", "db", node="n1", labels={"app": "db"})
    api = core(fake_kube)

    nodes = api.list_node()
    assert names(nodes.items) == ["n1", "n2"]
    assert int(nodes.metadata.resource_version) == fake_kube.resource_version
    assert names(api.list_node(label_selector="rack=a").items) == ["n1"]
    assert api.read_node("n1").status.addresses[0].address == "192.0.2.1"
    assert names(api.list_pod_for_all_namespaces(field_selector="spec.nodeName=n1").items) == ["db", "web-1"]
    assert names(api.list_namespaced_pod("apps", label_selector="app in (web)").items) == ["web-1", "web-2"]
    assert api.read_namespaced_pod("web-2", "apps").spec.node_name == "n2"
    assert api.read_namespace("apps").metadata.annotations == {"routed.io/ipv4pools": '["pool-a"]'}
    with pytest.raises(ApiException) as err:
        api.read_namespaced_pod("nope", "apps")
    assert err.value.status == 404 and json.loads(err.value.body)["reason"] == "NotFound"
    with pytest.raises(ApiException) as err:
        api.list_pod_for_all_namespaces(field_selector="spec.bogus=1")
    assert err.value.status == 400


def test_discovery_with_the_official_client(fake_kube):
    api_client = client.ApiClient(client.Configuration(host=fake_kube.url))
    assert client.CoreApi(api_client).get_api_versions().versions == ["v1"]
    resources = {r.name: r for r in client.CoreV1Api(api_client).get_api_resources().resources}
    assert set(resources) == {"nodes", "namespaces", "pods"} and resources["pods"].namespaced
    assert client.VersionApi(api_client).get_code().minor == "32"


def test_watch_stream_from_a_resource_version(fake_kube):
    fake_kube.add_pod("ns", "old", node="n1")
    api = core(fake_kube)
    rv = api.list_pod_for_all_namespaces().metadata.resource_version
    fake_kube.add_pod("ns", "a", node="n1")
    fake_kube.add_pod("ns", "b", node="n2")
    fake_kube.patch_metadata("pods", "a", "ns", annotations={"x": "1"})
    fake_kube.delete("pods", "old", "ns")
    events = stream(fake_kube, api.list_pod_for_all_namespaces, resource_version=rv)
    assert events == [("ADDED", "a"), ("ADDED", "b"), ("MODIFIED", "a"), ("DELETED", "old")]
    only_n1 = stream(fake_kube, api.list_pod_for_all_namespaces, resource_version=rv,
                     field_selector="spec.nodeName=n1")
    assert only_n1 == [("ADDED", "a"), ("MODIFIED", "a"), ("DELETED", "old")]


def test_watch_without_a_resource_version_starts_with_the_current_objects(fake_kube):
    fake_kube.add_node("n1")
    api = core(fake_kube)
    later = threading.Timer(0.2, lambda: fake_kube.add_node("n2"))
    later.start()
    try:
        assert stream(fake_kube, api.list_node, timeout_seconds=2) == [("ADDED", "n1"), ("ADDED", "n2")]
    finally:
        later.cancel()


def test_watch_sees_objects_leave_and_enter_a_selector(fake_kube):
    fake_kube.add_pod("ns", "p", labels={"app": "web"})
    api = core(fake_kube)
    rv = api.list_namespaced_pod("ns").metadata.resource_version
    fake_kube.patch_metadata("pods", "p", "ns", labels={"app": "db"})
    fake_kube.patch_metadata("pods", "p", "ns", labels={"app": "web"})
    assert stream(fake_kube, api.list_namespaced_pod, namespace="ns", label_selector="app=web",
                  resource_version=rv) == [("DELETED", "p"), ("ADDED", "p")]


def test_watch_from_a_compacted_resource_version_is_410_gone(fake_kube):
    api = core(fake_kube)
    rv = api.list_node().metadata.resource_version
    fake_kube.add_node("n1")
    fake_kube.compact()
    with pytest.raises(ApiException) as err:
        stream(fake_kube, api.list_node, resource_version=rv)
    assert err.value.status == 410
    # the client's own retry after 410 (no timeout given) also ends in 410 for a stale version
    with pytest.raises(ApiException) as err:
        next(iter(watch.Watch().stream(api.list_node, resource_version=rv)))
    assert err.value.status == 410


def test_client_wrapper_lists_gets_and_watches(fake_kube):
    kube = kube_client(fake_kube)
    fake_kube.add_node("n1")
    items, rv = kube.list("nodes")
    assert [i["metadata"]["name"] for i in items] == ["n1"] and rv == str(fake_kube.resource_version)
    assert kube.get("nodes", "n1")["metadata"]["name"] == "n1"
    assert kube.get("nodes", "nope") is None and kube.get("pods", "nope", "ns") is None
    fake_kube.add_node("n2")
    fake_kube.delete("nodes", "n1")
    events = [(t, o["metadata"]["name"]) for t, o in kube.watch("nodes", rv, timeout=1)]
    assert events == [("ADDED", "n2"), ("DELETED", "n1")]
    fake_kube.compact()
    with pytest.raises(Gone):
        list(kube.watch("nodes", rv, timeout=1))


def test_client_wrapper_reports_an_unreachable_api_in_one_line():
    from routed.k8s import KubeError
    from routed.k8s.client import KubeClient
    from tests.support.etcd import free_port

    kube = KubeClient.connect(server=f"http://127.0.0.1:{free_port()}")
    kube.api.api_client.configuration.retries = 0
    with pytest.raises(KubeError, match="cannot reach the Kubernetes API at http://127.0.0.1"):
        kube.list("nodes")


def test_informer_follows_changes_and_relists_after_410(fake_kube):
    fake_kube.add_pod("ns", "a", node="n1")
    fake_kube.add_pod("ns", "other", node="n2")
    informer = Informer(kube_client(fake_kube), "pods", field_selector="spec.nodeName=n1", watch_timeout=30)
    informer.start()
    try:
        assert informer.synced.wait(10)
        assert informer.get("a", "ns") is not None and informer.get("other", "ns") is None
        fake_kube.add_pod("ns", "b", node="n1")
        assert informer.wait_for("b", "ns", timeout=10) is not None
        fake_kube.patch_metadata("pods", "a", "ns", annotations={"k": "v"})
        eventually(lambda: informer.get("a", "ns")["metadata"]["annotations"] == {"k": "v"}, "the update")
        fake_kube.delete("pods", "b", "ns")
        eventually(lambda: informer.get("b", "ns") is None, "the deletion")
        assert informer.relists == 1

        # The stream breaks, and while the API refuses watches, pods change and the history
        # is compacted: the informer's resume gets 410 Gone, so it lists again.
        fake_kube.refuse_watches = True
        fake_kube.drop_watches()
        eventually(lambda: fake_kube.open_watches == 0, "the stream to end")
        fake_kube.add_pod("ns", "c", node="n1")
        fake_kube.delete("pods", "a", "ns")
        fake_kube.compact()
        fake_kube.refuse_watches = False
        eventually(lambda: informer.relists == 2, "a relist after 410 Gone")
        eventually(lambda: sorted(n for _, n in ((p["metadata"]["namespace"], p["metadata"]["name"])
                                                 for p in informer.items())) == ["c"], "the relisted state")
    finally:
        informer.stop()
