"""Who a node peers with, from the resources (pure logic).

- the node-to-node mesh: every other ordinary node, when nodeToNodeMeshEnabled;
  nodes that both have an IPv6 address also get a second, IPv6 session between those
  (Calico's way: separate sessions per family, each with its natural next hop, so an
  IPv6 problem never touches IPv4);
- route reflectors: every node with a routeReflectorClusterID (a BIRD/FRR/GoBGP
  reflector registered as a Node) peers with every ordinary node; ExaBGP cannot
  reflect, so a cluster that outgrows the mesh runs real reflectors;
- BGPPeer resources: global (no node, no nodeSelector), for one node, or for the
  nodes a selector matches (e.g. the top-of-rack routers of a rack); with peerSelector
  instead of peerIP, the peers are the cluster's nodes it selects (both families where
  both ends have them, as Calico), and a node a BGPPeer picks (by peerSelector, or a
  peerIP and AS that are its own) peers back with the BGPPeer's scope: a session needs
  both ends;
- a node's peer listens on its own BGPConfiguration's listenPort (Calico's rule, also
  for a BGPPeer whose peerIP, without a port, is a node's address).
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
    source_address: str = "UseNodeIP"  # "None": the kernel picks the session's source address
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


def config_for(configs: list[r.BGPConfiguration], node_name: str):
    """The node's BGP configuration: `default` (or the defaults), with what its own
    `node.<name>` one overrides."""
    by_name = {c.metadata.name: c for c in configs}
    default = by_name.get("default") or r.BGPConfiguration.model_validate({"metadata": {"name": "default"}})
    own = by_name.get(f"node.{node_name}")
    return own.overriding(default.spec) if own else default.spec


def local_speaker(me: r.Node, configs: list[r.BGPConfiguration]) -> LocalSpeaker:
    spec = config_for(configs, me.metadata.name)
    address = node_address(me)
    if address is None:
        raise ValueError(f"node {me.metadata.name} has no spec.bgp.ipv4Address")
    asn = (me.spec.bgp.as_number if me.spec.bgp else None) or spec.as_number
    return LocalSpeaker(me.metadata.name, address, asn, spec.listen_port, spec.log_severity, node_address6(me))


def _in_scope(spec, node: r.Node) -> bool:
    """Whether a BGPPeer's node / nodeSelector (neither: every node) takes in node."""
    if spec.node:
        return spec.node == node.metadata.name
    if spec.node_selector:
        return r.parse_selector(spec.node_selector).matches(dict(node.metadata.labels or {}))
    return True


def desired_peers(me: r.Node, nodes: list[r.Node], configs: list[r.BGPConfiguration],
                  peers: list[r.BGPPeer]) -> list[Peer]:
    spec = config_for(configs, me.metadata.name)
    mine = {node_address(me), node_address6(me)} - {None}
    mine6 = node_address6(me) is not None
    i_am_reflector = bool(me.spec.bgp and me.spec.bgp.route_reflector_cluster_id)
    found: list[Peer] = []

    def as_of(node: r.Node) -> int:
        return (node.spec.bgp.as_number if node.spec.bgp else None) or spec.as_number

    def port_of(node: r.Node) -> int:
        return config_for(configs, node.metadata.name).listen_port

    def addresses_of(node: r.Node) -> list[str]:
        """The node's sessions: IPv4, and IPv6 when both ends have it."""
        return [a for a in (node_address(node), node_address6(node) if mine6 else None) if a]

    node_ports = {a: port_of(n) for n in nodes for a in (node_address(n), node_address6(n)) if a}
    for other in nodes:
        if other.metadata.name == me.metadata.name or node_address(other) is None:
            continue
        other_is_reflector = bool(other.spec.bgp.route_reflector_cluster_id)
        for each in addresses_of(other):
            if other_is_reflector and not i_am_reflector:
                found.append(Peer(each, as_of(other), "route-reflector", other.metadata.name,
                                  port=port_of(other), max_prefixes=spec.max_prefixes))
            elif spec.node_to_node_mesh_enabled and not other_is_reflector and not i_am_reflector:
                found.append(Peer(each, as_of(other), "mesh", other.metadata.name, port=port_of(other),
                                  max_prefixes=spec.max_prefixes))
    for peer in peers:
        s = peer.spec
        kind = "node" if s.node or s.node_selector else "global"
        ref = (s.password.secret_key_ref.name, s.password.secret_key_ref.key) if s.password else None
        options = dict(hold_time=s.hold_time, keepalive_time=s.keepalive_time,
                       graceful_restart=s.max_restart_time if s.graceful_restart else 0, password_ref=ref,
                       source_address=s.source_address, max_prefixes=s.max_prefixes or spec.max_prefixes,
                       allowed_prefixes=tuple(s.allowed_prefixes))
        if s.peer_selector is None:
            address = str(s.address)
            if _in_scope(s, me):
                found.append(Peer(address, s.as_number, kind, peer.metadata.name,
                                  port=s.port or node_ports.get(address, 179), **options))
            targets = []
            picked_me = address in mine and s.as_number == as_of(me) and s.port in (None, port_of(me))
            family = s.address.version  # answered over the family the BGPPeer names, as Calico
        else:
            selected = r.parse_selector(s.peer_selector)
            targets = [o for o in nodes if _in_scope(s, me) and selected.matches(dict(o.metadata.labels or {}))]
            picked_me, family = selected.matches(dict(me.metadata.labels or {})), None
        # Both ends of each session with a node, as Calico's automatic reverse peering: a
        # node the BGPPeer picks answers every node of the BGPPeer's scope.
        answer = [o for o in nodes if _in_scope(s, o)] if picked_me else []
        for other in targets + answer:
            if other.metadata.name == me.metadata.name:
                continue
            for each in addresses_of(other):
                if family is None or ipaddress.ip_address(each).version == family:
                    found.append(Peer(each, as_of(other), kind, peer.metadata.name, port=port_of(other),
                                      **options))
    best: dict[str, Peer] = {}
    for peer in found:
        if peer.address in mine:
            continue
        current = best.get(peer.address)
        if current is None or _RANK[peer.kind] < _RANK[current.kind]:
            best[peer.address] = peer
    return sorted(best.values(), key=lambda p: address_key(p.address))
