"""Helpers for the Kubernetes glue tests (against the real API server: the `kube`
fixture in tests/conftest.py): pools, nodes, pod addresses."""

from __future__ import annotations

import pytest

from ipam.allocator import IPAM
from ipam.blockmath import handle_id
from routed import resources as r
from routed.agent import node as nodeinfo
from routed.datastore import keys
from routed.datastore.resources import ResourceStore

NETWORK = "k8s-pod-network"


def kube_client(kube):
    """routed's client wrapper on the admin kubeconfig, as the agent and controller connect."""
    from routed.k8s.client import KubeClient

    return KubeClient.connect(kubeconfig=kube.kubeconfig)


def pool(store: ResourceStore, name: str, cidr: str, **spec) -> r.IPPool:
    return store.create(r.parse({"apiVersion": r.API_VERSION, "kind": "IPPool", "metadata": {"name": name},
                                 "spec": {"cidr": cidr, **spec}}))


def routed_node(store: ResourceStore, name: str, address: str, labels: dict | None = None,
                cluster_id: str | None = None) -> r.Node:
    """A routed Node as the agent registers it (or, with cluster_id, as the chart registers a reflector)."""
    node = nodeinfo.register(store, name, address, labels or {})
    if cluster_id:
        node = store.patch(r.Node, name, {"spec": {"bgp": {"routeReflectorClusterID": cluster_id}}})
    return node


def pod_handle(container: str) -> str:
    return handle_id(NETWORK, container, "eth0")


def pod_address(ipam: IPAM, node: str, namespace: str, pod: str, container: str, **kw):
    """An address for a pod exactly as CNI ADD takes it (same handle and attributes)."""
    attrs = {"pod": pod, "namespace": namespace, "container": container}
    return ipam.allocate(pod_handle(container), node, attrs, **kw)


def handles(kv) -> set[str]:
    return {keys.last_segment(k) for k in kv.keys(keys.HANDLES)}


def affinities(kv, node: str) -> set[str]:
    return {keys.last_segment(k) for k in kv.keys(keys.affinity(node))}


def block_of(kv, ip):
    """(affinity, in use) of the block holding ip, or None when the block is gone."""
    from ipam.block import Block

    for item in kv.list(keys.BLOCKS).items:
        block = Block.from_json(item.value, key=item.key)
        if ip in block.cidr:
            return block.affinity, block.in_use
    return None
