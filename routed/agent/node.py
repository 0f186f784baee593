"""This node's identity: its name, its address, and its Node resource in etcd."""

from __future__ import annotations

import ipaddress

from routed import resources as r
from routed.errors import RoutedError


def parse_node_ip(text: str) -> str:
    try:
        iface = ipaddress.IPv4Interface(text)
    except ValueError:
        raise RoutedError(f"--node-ip {text!r}: expected an IPv4 address with prefix, e.g. 10.0.0.5/24") from None
    if "/" not in text:
        raise RoutedError(f"--node-ip {text!r}: give the prefix too, e.g. {text}/24")
    return str(iface)


def parse_node_ip6(text: str, source: str = "--node-ip6") -> str:
    """This node's IPv6 address with prefix (a BGP next hop other nodes route pods to):
    a global unicast address, never link-local, multicast, loopback or unspecified."""
    try:
        iface = ipaddress.IPv6Interface(text)
    except ValueError:
        raise RoutedError(f"{source} {text!r}: expected an IPv6 address with prefix, "
                          "e.g. 2001:db8::5/64") from None
    if "/" not in text:
        raise RoutedError(f"{source} {text!r}: give the prefix too, e.g. {text}/64")
    ip = iface.ip
    if ip.is_link_local or ip.is_multicast or ip.is_loopback or ip.is_unspecified or ip.ipv4_mapped:
        raise RoutedError(f"{source} {text!r}: not a unicast address other nodes can route to "
                          "(link-local, multicast, loopback, unspecified and IPv4-mapped are refused)")
    return str(iface)


def register(store, name: str, address: str, labels: dict[str, str], remembered: r.Node | None = None,
             address6: str | None = None) -> r.Node:
    """Create or update this node's Node resource. What an operator set on it (AS number,
    route reflector cluster ID, other labels) is kept; the addresses and our labels win
    (no IPv6 address: none is registered, so no stale one is routed to).
    When the Node is gone, `remembered` (what the agent last saw of it) is what is kept."""
    existing = store.find(r.Node, name)
    base = existing or remembered
    doc = base.to_dict() if base else {"apiVersion": r.API_VERSION, "kind": "Node",
                                        "metadata": {"name": name}, "spec": {}}
    if existing is None:  # a new object (also one registered again): it gets its own identity
        for identity in ("uid", "creationTimestamp"):
            doc["metadata"].pop(identity, None)
    doc["metadata"].pop("resourceVersion", None)
    doc["metadata"]["labels"] = {**doc["metadata"].get("labels", {}), **labels}
    bgp = doc["spec"].get("bgp") or {}
    bgp["ipv4Address"] = address
    if address6:
        bgp["ipv6Address"] = address6
    else:
        bgp.pop("ipv6Address", None)
    doc["spec"]["bgp"] = bgp
    node = r.parse(doc)
    if existing is not None and existing.to_dict()["spec"] == node.to_dict()["spec"] \
            and existing.metadata.labels == node.metadata.labels:
        return existing
    saved, _ = store.apply(node)
    return saved


def publish_wireguard(store, name: str, wireguard: dict | None) -> None:
    """Set (or with None, remove) the WireGuard public key and endpoint on this node's
    Node resource; nothing is written when it already says so."""
    existing = store.find(r.Node, name)
    if existing is None:
        raise RoutedError(f"node {name} is not registered")
    doc = existing.to_dict()
    if doc["spec"].get("wireguard") == wireguard:
        return
    doc["metadata"].pop("resourceVersion", None)
    if wireguard is None:
        doc["spec"].pop("wireguard", None)
    else:
        doc["spec"]["wireguard"] = wireguard
    store.apply(r.parse(doc))
