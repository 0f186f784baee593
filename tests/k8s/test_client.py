"""routed's client wrapper and informer against a real kube-apiserver: list, get, watch
from a resourceVersion, selectors, 410 Gone after etcd compaction, relisting."""

from __future__ import annotations

import threading

import pytest

from routed.k8s import Gone, KubeError
from routed.k8s.client import Informer, KubeClient
from tests.k8s.k8sutil import kube_client
from tests.support.etcd import free_port
from tests.support.wait import eventually


def test_client_wrapper_lists_gets_and_watches(kube):
    client = kube_client(kube)
    kube.add_node("wrap-n1")
    items, rv = client.list("nodes", label_selector="kubernetes.io/hostname=wrap-n1")
    assert [i["metadata"]["name"] for i in items] == ["wrap-n1"] and rv.isdigit()
    assert client.get("nodes", "wrap-n1")["metadata"]["name"] == "wrap-n1"
    assert client.get("nodes", "wrap-nope") is None and client.get("pods", "nope", "default") is None
    kube.add_node("wrap-n2")
    kube.delete("nodes", "wrap-n1")
    events = [(t, o["metadata"]["name"]) for t, o in client.watch("nodes", rv, timeout=1)
              if t != "BOOKMARK" and o["metadata"]["name"].startswith("wrap-")]
    assert events == [("ADDED", "wrap-n2"), ("DELETED", "wrap-n1")]


def test_watch_with_a_field_selector_sees_pods_enter_and_leave(kube):
    client = kube_client(kube)
    kube.add_pod("sel", "here", node="sel-n1")
    items, rv = client.list("pods", field_selector="spec.nodeName=sel-n1")
    assert [p["metadata"]["name"] for p in items] == ["here"]
    kube.add_pod("sel", "elsewhere", node="sel-n2")
    kube.add_pod("sel", "also-here", node="sel-n1")
    kube.patch_metadata("pods", "here", "sel", annotations={"k": "v"})
    kube.delete("pods", "here", "sel")
    events = [(t, o["metadata"]["name"]) for t, o in
              client.watch("pods", rv, field_selector="spec.nodeName=sel-n1", timeout=1) if t != "BOOKMARK"]
    # The real server also sends a MODIFIED (deletionTimestamp set) before DELETED, even
    # with a grace period of 0: the fake API server this replaced never did.
    assert events[0] == ("ADDED", "also-here") and events[-1] == ("DELETED", "here")
    assert set(events[1:-1]) == {("MODIFIED", "here")} and len(events) in (4, 5)


def test_watch_from_a_compacted_resource_version_is_gone(kube):
    client = kube_client(kube)
    _, rv = client.list("nodes")
    kube.add_node("gone-n1")
    kube.compact()
    with pytest.raises(Gone):
        list(client.watch("nodes", rv, timeout=1))


def test_client_wrapper_reports_an_unreachable_api_in_one_line():
    client = KubeClient.connect(server=f"http://127.0.0.1:{free_port()}")
    client.api.api_client.configuration.retries = 0
    with pytest.raises(KubeError, match="cannot reach the Kubernetes API at http://127.0.0.1"):
        client.list("nodes")


def test_client_without_credentials_is_refused_in_one_line(kube):
    """Without a client certificate a request is anonymous, and RBAC refuses it."""
    from kubernetes import client as k8s

    config = k8s.Configuration(host=kube.url)
    config.ssl_ca_cert = str(kube.api.server.pki.ca)
    client = KubeClient(k8s.ApiClient(config), kube.url)
    with pytest.raises(KubeError, match=r"Kubernetes API at https://127.0.0.1:\d+: nodes: 40[13]") as err:
        client.list("nodes")
    assert "\n" not in str(err.value)


class GatedWatches:
    """routed's client, whose next watch waits while the gate is closed: the informer's
    stream ends (timeoutSeconds) and cannot resume until the test opens the gate."""

    def __init__(self, client):
        self.client = client
        self.open = threading.Event()
        self.open.set()
        self.waiting = threading.Event()

    def list(self, *args, **kwargs):
        return self.client.list(*args, **kwargs)

    def watch(self, *args, **kwargs):
        if not self.open.is_set():
            self.waiting.set()
            self.open.wait()
        return self.client.watch(*args, **kwargs)


def test_informer_follows_changes_and_relists_after_410(kube):
    gated = GatedWatches(kube_client(kube))
    kube.add_pod("inf", "a", node="inf-n1")
    kube.add_pod("inf", "other", node="inf-n2")
    informer = Informer(gated, "pods", field_selector="spec.nodeName=inf-n1", watch_timeout=2)
    informer.start()
    try:
        assert informer.synced.wait(30)
        assert informer.get("a", "inf") is not None and informer.get("other", "inf") is None
        kube.add_pod("inf", "b", node="inf-n1")
        assert informer.wait_for("b", "inf", timeout=30) is not None
        kube.patch_metadata("pods", "a", "inf", annotations={"k": "v"})
        eventually(lambda: (informer.get("a", "inf")["metadata"].get("annotations") or {}) == {"k": "v"},
                   "the update")
        kube.delete("pods", "b", "inf")
        eventually(lambda: informer.get("b", "inf") is None, "the deletion")
        assert informer.relists == 1

        # The stream ends and, before the informer resumes, pods change and the history is
        # compacted: resuming from its last resourceVersion gets 410 Gone, so it lists again.
        gated.open.clear()
        assert gated.waiting.wait(30), "the informer's stream did not end"
        kube.add_pod("inf", "c", node="inf-n1")
        kube.delete("pods", "a", "inf")
        kube.compact()
        gated.open.set()
        eventually(lambda: informer.relists == 2, "a relist after 410 Gone", timeout=30)
        eventually(lambda: sorted(p["metadata"]["name"] for p in informer.items()) == ["c"], "the relisted state")
    finally:
        informer.stop()
        gated.open.set()
