"""The agent's cache of this node's pods and of all namespaces, for the CNI ADD path.

Annotations, as Calico users know them (cni.projectcalico.org/ipv4pools, ipAddrs):

    routed.io/ipv4pools: '["pool-a"]'       on the pod, else on its namespace: the pools to
    routed.io/ipv6pools: '["pool-v6"]'      allocate from, instead of the CNI configuration's
    routed.io/ipAddrs:   '["10.244.1.5"]'   on the pod: fixed addresses (one per family)

ADD reads only this cache, never the API: the two informers (pods with
spec.nodeName=<this node>, namespaces) keep it current. kubelet may ask for a pod's
network a moment before our watch delivered the pod, so a lookup waits a little for it;
a pod still unknown after that is "try again later". A malformed annotation is one
line naming the pod, the annotation and what was expected.
"""

from __future__ import annotations

import ipaddress
import json

from . import AnnotationError, PodNotKnown
from .client import Informer, KubeClient

POOLS = {4: "routed.io/ipv4pools", 6: "routed.io/ipv6pools"}
IP_ADDRS = "routed.io/ipAddrs"


def _annotations(obj: dict | None) -> dict:
    return ((obj or {}).get("metadata") or {}).get("annotations") or {}


def parse_pools(text: str, where: str, annotation: str = POOLS[4]) -> list[str]:
    """'["pool-a", "pool-b"]' -> the pool names; AnnotationError otherwise."""
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v.strip() for v in value):
        raise AnnotationError(f'{where}: annotation {annotation} must be a JSON list of pool names, '
                              f'e.g. \'["pool-a"]\', not {text!r}')
    return [v.strip() for v in value]


def parse_addresses(text: str, where: str) -> list[str]:
    """'["10.244.1.5"]' -> the addresses (at most one per IP family); AnnotationError otherwise."""
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise AnnotationError(f'{where}: annotation {IP_ADDRS} must be a JSON list of IP addresses, '
                              f'e.g. \'["10.244.1.5"]\', not {text!r}')
    addresses = []
    for item in value:
        try:
            addresses.append(ipaddress.ip_address(item.strip()))
        except ValueError:
            raise AnnotationError(f"{where}: annotation {IP_ADDRS}: {item!r} is not an IP address") from None
    for version in (4, 6):
        if sum(a.version == version for a in addresses) > 1:
            raise AnnotationError(f"{where}: annotation {IP_ADDRS} asks for more than one IPv{version} address")
    return [str(a) for a in addresses]


def pools_from(pod: dict, namespace: dict | None, version: int = 4) -> list[str] | None:
    """The pool annotation of the pod, else of its namespace, else None."""
    ns, name = pod["metadata"].get("namespace", ""), pod["metadata"].get("name", "")
    annotation = POOLS[version]
    text = _annotations(pod).get(annotation)
    if text is not None:
        return parse_pools(text, f"pod {ns}/{name}", annotation)
    text = _annotations(namespace).get(annotation)
    if text is not None:
        return parse_pools(text, f"namespace {ns} (of pod {name})", annotation)
    return None


def addresses_from(pod: dict) -> list[str] | None:
    ns, name = pod["metadata"].get("namespace", ""), pod["metadata"].get("name", "")
    annotations = _annotations(pod)
    text = annotations.get(IP_ADDRS)
    if text is None:
        return None
    both = [a for a in POOLS.values() if a in annotations]
    if both:
        raise AnnotationError(f"pod {ns}/{name}: annotations {IP_ADDRS} and {both[0]} cannot be used together")
    return parse_addresses(text, f"pod {ns}/{name}")


class PodInfo:
    """Pods of one node and all namespaces, as informers keep them."""

    def __init__(self, kube: KubeClient, node: str, wait: float = 5.0, watch_timeout: int = 300):
        self.node, self.wait = node, wait
        self.pods = Informer(kube, "pods", field_selector=f"spec.nodeName={node}", watch_timeout=watch_timeout)
        self.namespaces = Informer(kube, "namespaces", watch_timeout=watch_timeout)

    def start(self) -> PodInfo:
        self.pods.start("podinfo-pods")
        self.namespaces.start("podinfo-namespaces")
        return self

    def stop(self) -> None:
        self.pods.stop()
        self.namespaces.stop()

    @property
    def synced(self) -> bool:
        return self.pods.synced.is_set() and self.namespaces.synced.is_set()

    def _pod(self, namespace: str, name: str) -> dict:
        pod = self.pods.wait_for(name, namespace, timeout=self.wait)
        if pod is None:
            state = "" if self.synced else " (the cache has not synced with the Kubernetes API yet)"
            raise PodNotKnown(f"pod {namespace}/{name} is not among node {self.node}'s pods{state}; try again")
        return pod

    def pools_for(self, namespace: str, pod: str, version: int = 4) -> list[str] | None:
        """Pools from the pod's annotation, else its namespace's; None: use the CNI configuration's."""
        obj = self._pod(namespace, pod)
        if POOLS[version] in _annotations(obj):
            return pools_from(obj, None, version)
        ns = self.namespaces.wait_for(namespace, timeout=self.wait)
        if ns is None:
            raise PodNotKnown(f"namespace {namespace} of pod {pod} is not in the cache yet; try again")
        return pools_from(obj, ns, version)

    def addresses_for(self, namespace: str, pod: str) -> list[str] | None:
        """Fixed addresses from the pod's routed.io/ipAddrs annotation, or None."""
        return addresses_from(self._pod(namespace, pod))


__all__ = ["PodInfo", "POOLS", "IP_ADDRS", "parse_pools", "parse_addresses", "pools_from", "addresses_from"]
