"""Who a node peers with, from the resources (pure logic).

- the node-to-node mesh: every other ordinary node, when nodeToNodeMeshEnabled;
  nodes that both have an IPv6 address also get a second, IPv6 session between those
  (Calico's way: separate sessions per family, each with its natural next hop, so an
  IPv6 problem never touches IPv4);
- route reflectors: every node with a routeReflectorClusterID (a BIRD/FRR/GoBGP
  reflector registered as a Node) peers with every ordinary node; ExaBGP cannot
  reflect, so a cluster that outgrows the mesh runs real reflectors;
- BGPPeer resources: global (no node, no nodeSelector), for one node, or for the
  nodes a selector matches (e.g. the top-of-rack routers of a rack).
A more specific peering of the same address wins: node > global > route reflector > mesh.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from routed import resources as r

from .order import address_key

DEFAULT_AS = 64512
_RANK = {"node": 0, "global": 1, "route-reflector": 2, "mesh": 3}


@dataclass(frozen=True)
class Peer:
    address: str
    as_number: int
    kind: str  # "mesh" | "route-reflector" | "global" | "node"
    name: str  # the Node or BGPPeer it comes from
    port: int = 179
    hold_time: int = 90
    keepalive_time: int = 30
    graceful_restart: int = 120  # seconds; 0: off
    password_ref: tuple[str, str] | None = None  # (secret name, key); resolved when rendering
    max_prefixes: int = 0
    allowed_prefixes: tuple[str, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class LocalSpeaker:
    node: str
    address: str  # IPv4, no prefix
    as_number: int
    listen_port: int = 179
    log_severity: str = "Info"
    address6: str | None = None  # IPv6, no prefix: the source of IPv6 sessions


def node_address6(node: r.Node) -> str | None:
    if node.spec.bgp is None or not node.spec.bgp.ipv6_address:
        return None
    return str(ipaddress.ip_interface(node.spec.bgp.ipv6_address).ip)


def node_address(node: r.Node) -> str | None:
    if node.spec.bgp is None or not node.spec.bgp.ipv4_address:
        return None
    return str(ipaddress.ip_interface(node.spec.bgp.ipv4_address).ip)


def global_config(configs: list[r.BGPConfiguration], node_name: str):
    """The node's BGPConfiguration: its own `node.<name>` one if present, else `default`."""
    by_name = {c.metadata.name: c for c in configs}
    chosen = by_name.get(f"node.{node_name}") or by_name.get("default")
    return chosen.spec if chosen else r.BGPConfiguration.model_validate({"metadata": {"name": "default"}}).spec


def local_speaker(me: r.Node, configs: list[r.BGPConfiguration]) -> LocalSpeaker:
    spec = global_config(configs, me.metadata.name)
    address = node_address(me)
    if address is None:
        raise ValueError(f"node {me.metadata.name} has no spec.bgp.ipv4Address")
    asn = (me.spec.bgp.as_number if me.spec.bgp else None) or spec.as_number
    return LocalSpeaker(me.metadata.name, address, asn, spec.listen_port, spec.log_severity, node_address6(me))


def desired_peers(me: r.Node, nodes: list[r.Node], configs: list[r.BGPConfiguration],
                  peers: list[r.BGPPeer]) -> list[Peer]:
    spec = global_config(configs, me.metadata.name)
    mine = {node_address(me), node_address6(me)} - {None}
    mine6 = node_address6(me) is not None
    i_am_reflector = bool(me.spec.bgp and me.spec.bgp.route_reflector_cluster_id)
    found: list[Peer] = []
    for other in nodes:
        address = node_address(other)
        if other.metadata.name == me.metadata.name or address is None:
            continue
        asn = (other.spec.bgp.as_number if other.spec.bgp else None) or spec.as_number
        other_is_reflector = bool(other.spec.bgp.route_reflector_cluster_id)
        address6 = node_address6(other) if mine6 else None
        for each in filter(None, (address, address6)):
            if other_is_reflector and not i_am_reflector:
                found.append(Peer(each, asn, "route-reflector", other.metadata.name,
                                  max_prefixes=spec.max_prefixes))
            elif spec.node_to_node_mesh_enabled and not other_is_reflector and not i_am_reflector:
                found.append(Peer(each, asn, "mesh", other.metadata.name, max_prefixes=spec.max_prefixes))
    labels = dict(me.metadata.labels or {})
    for peer in peers:
        s = peer.spec
        if s.node:
            if s.node != me.metadata.name:
                continue
            kind = "node"
        elif s.node_selector:
            if not r.parse_selector(s.node_selector).matches(labels):
                continue
            kind = "node"
        else:
            kind = "global"
        ref = (s.password.secret_key_ref.name, s.password.secret_key_ref.key) if s.password else None
        found.append(Peer(str(s.address), s.as_number, kind, peer.metadata.name, port=s.port or 179,
                          hold_time=s.hold_time, keepalive_time=s.keepalive_time,
                          graceful_restart=s.max_restart_time if s.graceful_restart else 0,
                          password_ref=ref, max_prefixes=s.max_prefixes or spec.max_prefixes,
                          allowed_prefixes=tuple(s.allowed_prefixes)))
    best: dict[str, Peer] = {}
    for peer in found:
        if peer.address in mine:
            continue
        current = best.get(peer.address)
        if current is None or _RANK[peer.kind] < _RANK[current.kind]:
            best[peer.address] = peer
    return sorted(best.values(), key=lambda p: address_key(p.address))
