"""A real kube-apiserver for tests (routed.lab.kubeplane), and a small helper to change
the cluster the way the tests need: nodes, namespaces, pods, deletions, etcd compaction.

One API server (on its own etcd) serves a whole test session, as envtest does; each
test's `KubeObjects` deletes what it created, so tests do not see each other's objects.
Pods are deleted with a grace period of 0: no kubelet confirms their termination here.
"""

from __future__ import annotations

import copy

from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.rest import ApiException

from routed.lab.kubeplane import APIServer
from tests.support.etcd import EtcdServer


class KubeAPI:
    """The running server: URL, the admin kubeconfig, and its etcd (for compaction)."""

    def __init__(self, server: APIServer, etcd: EtcdServer):
        self.server, self.etcd = server, etcd
        self.url = server.url
        self.kubeconfig = str(server.admin_kubeconfig)

    def api_client(self) -> k8s.ApiClient:
        return k8s_config.new_client_from_config(config_file=self.kubeconfig)

    def routed_client(self):
        """routed's own client wrapper, as the agent and the controller connect."""
        from routed.k8s.client import KubeClient

        return KubeClient.connect(kubeconfig=self.kubeconfig)


def _plain(obj) -> dict:
    return k8s.ApiClient().sanitize_for_serialization(obj)


class KubeObjects:
    """Creates and changes objects as the admin; `cleanup()` deletes what it created."""

    def __init__(self, api: KubeAPI):
        self.api = api
        self.url, self.kubeconfig = api.url, api.kubeconfig
        self.core = k8s.CoreV1Api(api.api_client())
        self._created: list[tuple[str, str, str]] = []  # (kind, namespace, name)

    # -- creating -------------------------------------------------------------------------------

    def add_node(self, name: str, labels: dict | None = None, internal_ip: str | list[str] | None = None) -> dict:
        """internal_ip: one InternalIP, or several (a dual-stack node has one per family)."""
        ips = [internal_ip] if isinstance(internal_ip, str) else list(internal_ip or [])
        status = {"addresses": [{"type": "InternalIP", "address": ip} for ip in ips]} if ips else {}
        body = {"metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, **(labels or {})}},
                "spec": {}, "status": status}
        self._created.append(("nodes", "", name))
        return _plain(self.core.create_node(body))

    def add_namespace(self, name: str, annotations: dict | None = None) -> dict:
        """The namespace with exactly these annotations (created, or changed if it exists:
        a namespace cannot be deleted without the namespace controller), and its `default`
        ServiceAccount, which pod admission needs and no controller-manager creates here."""
        try:
            ns = self.core.read_namespace(name)
            ns.metadata.annotations = annotations or {}
            ns = self.core.replace_namespace(name, ns)
        except ApiException as err:
            if err.status != 404:
                raise
            ns = self.core.create_namespace({"metadata": {"name": name, "annotations": annotations or {}}})
        try:
            self.core.create_namespaced_service_account(name, {"metadata": {"name": "default"}})
        except ApiException as err:
            if err.status != 409:
                raise
        return _plain(ns)

    def add_pod(self, namespace: str, name: str, node: str = "", annotations: dict | None = None,
                labels: dict | None = None) -> dict:
        self.ensure_namespace(namespace)
        spec = {"containers": [{"name": "c", "image": "pause"}], "automountServiceAccountToken": False}
        if node:
            spec["nodeName"] = node
        body = {"metadata": {"name": name, "namespace": namespace, "annotations": annotations or {},
                             "labels": labels or {}}, "spec": spec}
        self._created.append(("pods", namespace, name))
        return _plain(self.core.create_namespaced_pod(namespace, body))

    def ensure_namespace(self, name: str) -> None:
        try:
            self.core.read_namespaced_service_account("default", name)
        except ApiException as err:
            if err.status != 404:
                raise
            self.add_namespace(name)

    # -- changing -------------------------------------------------------------------------------

    def patch_metadata(self, kind: str, name: str, namespace: str = "", *, labels: dict | None = None,
                       annotations: dict | None = None) -> dict:
        """Merge labels/annotations (a value of None removes the key), as a merge patch."""
        patch = {"metadata": {k: v for k, v in (("labels", labels), ("annotations", annotations)) if v}}
        if kind == "pods":
            return _plain(self.core.patch_namespaced_pod(name, namespace, patch))
        if kind == "namespaces":
            return _plain(self.core.patch_namespace(name, patch))
        return _plain(self.core.patch_node(name, patch))

    def delete(self, kind: str, name: str, namespace: str = "") -> None:
        """Deleted now (grace period 0); waits for nothing else."""
        if kind == "pods":
            self.core.delete_namespaced_pod(name, namespace, grace_period_seconds=0)
        elif kind == "nodes":
            self.core.delete_node(name)
        else:
            raise ValueError(f"deleting {kind} is not supported here")

    # -- reading --------------------------------------------------------------------------------

    def get(self, kind: str, name: str, namespace: str = "") -> dict | None:
        try:
            if kind == "pods":
                return _plain(self.core.read_namespaced_pod(name, namespace))
            if kind == "namespaces":
                return _plain(self.core.read_namespace(name))
            return _plain(self.core.read_node(name))
        except ApiException as err:
            if err.status == 404:
                return None
            raise

    def list(self, kind: str) -> list[dict]:
        lister = {"pods": self.core.list_pod_for_all_namespaces, "nodes": self.core.list_node,
                  "namespaces": self.core.list_namespace}[kind]
        return [_plain(o) for o in lister().items]

    # -- the server's storage -------------------------------------------------------------------

    def compact(self, restart: bool = True) -> int:
        """Compact the API server's etcd at its current revision and restart the server,
        so that a watch from an older resourceVersion gets 410 Gone. The restart empties
        the server's watch cache, which would otherwise still serve the old revisions (in a
        cluster: an apiserver restart or rollout after the periodic compaction)."""
        kv = self.api.etcd.client()
        try:
            revision = kv.revision()
            kv.compact(revision)
        finally:
            kv.close()
        if restart:
            self.api.server.stop()
            self.api.server.start()
        return revision

    def cleanup(self) -> None:
        for kind, namespace, name in reversed(copy.copy(self._created)):
            try:
                self.delete(kind, name, namespace)
            except ApiException as err:
                if err.status != 404:
                    raise
        self._created.clear()


__all__ = ["KubeAPI", "KubeObjects"]
