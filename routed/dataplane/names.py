"""Host-side veth names. Pure functions: the CNI server, the agent's GC and routedctl
must all derive the same name from the same pod."""

from __future__ import annotations

import hashlib

from routed.dataplane.constants import VETH_PREFIX


def host_veth_name(namespace: str, pod: str, prefix: str = VETH_PREFIX) -> str:
    """``cali`` + the first 11 hex chars of sha1("<namespace>.<pod>"), as Calico names them,
    so the interface of a pod is findable from its Kubernetes name alone."""
    digest = hashlib.sha1(f"{namespace}.{pod}".encode()).hexdigest()
    return prefix + digest[:11]


def host_veth_name_for_container(container_id: str, prefix: str = VETH_PREFIX) -> str:
    """For runtimes that send no Kubernetes names (plain podman, tests)."""
    return prefix + hashlib.sha1(container_id.encode()).hexdigest()[:11]
