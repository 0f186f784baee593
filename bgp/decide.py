"""What to do with a route a peer sent us (pure logic): accept it or not, and how to
reach its next hop (directly, IPIP or VXLAN) according to its pool's modes."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from functools import cached_property
from typing import Protocol

from routed.dataplane.constants import IPIP_DEV, VXLAN6_DEV, VXLAN_DEV
from routed.dataplane.rtnl import Route


@dataclass(frozen=True)
class Learned:
    prefix: str
    next_hop: str
    peer: str  # the neighbor that sent it
    as_path: tuple[int, ...] = ()


@dataclass(frozen=True)
class PoolView:
    """What route decisions need of an IPPool."""

    network: ipaddress.IPv4Network | ipaddress.IPv6Network
    ipip: str  # Never | Always | CrossSubnet
    vxlan: str


class Originators(Protocol):
    """IPAM's answer (ipam.origins.Origins): the node that may originate a prefix."""

    def originator(self, prefix: str) -> str | None: ...


@dataclass(frozen=True)
class Policy:
    """Everything a route is judged by, apart from the peer's own allowedPrefixes."""

    my_as: int
    pools: list[PoolView]
    own_prefixes: set[str]
    origins: Originators
    node_addresses: dict[str, str]  # node name -> its BGP address
    node_addresses6: dict[str, str] = field(default_factory=dict)  # node name -> its IPv6 address
    # The BGPConfiguration's service CIDRs: routes inside them (outside the pools) are other
    # nodes' service announcements, meant for external routers (bgp/services.py).
    service_cidrs: tuple = ()

    @cached_property
    def _nodes_by_address(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for addresses in (self.node_addresses, self.node_addresses6):
            for node, address in sorted(addresses.items()):
                out.setdefault(address, []).append(node)
        return out

    def node_at(self, address: str) -> list[str]:
        return self._nodes_by_address.get(address, [])


@dataclass(frozen=True)
class Rejection:
    reason: str  # a short, fixed word: the metric's label
    detail: str  # for the log and node status

    def __str__(self) -> str:
        return self.detail


# Not a rejection: a service route, for external routers; nodes never install it (Calico's
# nodes do not import them either) and it says nothing bad about the peer.
SERVICE = "service"

# The reasons, as counted in routed_bgp_rejected_routes{reason=...}.
REASONS = ("invalid", "own-as", "own-prefix", "next-hop-not-a-node", "not-in-ipam", "wrong-next-hop",
           "outside-pools", "max-prefixes")


def rejection(route: Learned, policy: Policy, allowed: tuple[str, ...] = ()) -> Rejection | None:
    """Why a learned route must not be installed, or None to accept it.

    Inside a pool (or anything IPAM gives to a node) only IPAM's word counts: the prefix
    must be a block or borrowed address of a node, and the next hop that node's address
    (reflectors and ToRs pass the originator's next hop on). Outside every pool, a
    service address is never installed (reason SERVICE), and the peer's allowedPrefixes
    decide the rest.
    """
    try:
        prefix = ipaddress.ip_network(route.prefix)
        next_hop = ipaddress.ip_address(route.next_hop)
    except ValueError:
        return Rejection("invalid", "not a valid prefix or next hop")
    if prefix.version != next_hop.version:
        # A node's IPv6 block is reached through its IPv6 address, an IPv4 one through its
        # IPv4 address: another family's next hop is nobody's registered address for it.
        return Rejection("invalid", f"IPv{prefix.version} prefix with an IPv{next_hop.version} next hop")
    if policy.my_as in route.as_path:
        return Rejection("own-as", f"AS path {list(route.as_path)} contains our own AS {policy.my_as}")
    if str(prefix) in policy.own_prefixes:
        return Rejection("own-prefix", "it is one of this node's own blocks")
    owner = policy.origins.originator(str(prefix))
    in_pool = any(prefix.version == p.network.version and prefix.subnet_of(p.network) for p in policy.pools)
    if owner is None and not in_pool:
        if any(prefix.version == c.version and prefix.subnet_of(c) for c in policy.service_cidrs):
            return Rejection(SERVICE, "a Service address: announced for external routers, not installed")
        if any(_within(prefix, a) for a in allowed):
            return None
        return Rejection("outside-pools", "outside every IP pool and not allowed for this peer")
    at_hop = policy.node_at(str(next_hop))
    if not at_hop:
        return Rejection("next-hop-not-a-node", f"next hop {next_hop} is no node's address")
    if owner is None:
        return Rejection("not-in-ipam", f"IPAM has no block or borrowed address {prefix}")
    if owner not in at_hop:
        theirs = (policy.node_addresses6 if prefix.version == 6 else policy.node_addresses).get(owner)
        return Rejection("wrong-next-hop", f"IPAM gives it to node {owner} "
                         f"({theirs or f'no IPv{prefix.version} address'}), "
                         f"not to {', '.join(at_hop)} at next hop {next_hop}")
    return None


def _within(prefix, allowed: str) -> bool:
    try:
        net = ipaddress.ip_network(allowed)
    except ValueError:
        return False
    return prefix.version == net.version and prefix.subnet_of(net)


def best(candidates: list[Learned]) -> Learned:
    """One route per prefix: the shortest AS path, then the lowest next hop (stable)."""
    return min(candidates, key=lambda c: (len(c.as_path), ipaddress.ip_address(c.next_hop).packed, c.peer))


def kernel_route(route: Learned, pools: list[PoolView], node_subnet, nic: str) -> Route | None:
    """How to reach route's next hop from this node, per the modes of the pool holding it:
    the route for the kernel (proto ROUTE_PROTO_BGP), or None.

    Never: directly when the next hop is on our subnet; otherwise nothing (the fabric,
    which learned the block too, carries the traffic by the default route).
    Always / CrossSubnet: encapsulate (always, or only when the next hop is on
    another subnet). An IPv6 next hop is reached over VXLAN on IPv6 (its own device, as
    Calico's vxlan-v6.calico); IPIP has no IPv6 (IPv6 pools refuse ipipMode).
    node_subnet: this node's subnet, or its subnets (one per family).
    """
    prefix = ipaddress.ip_network(route.prefix)
    next_hop = ipaddress.ip_address(route.next_hop)
    pool = next((p for p in pools if prefix.version == p.network.version and prefix.subnet_of(p.network)), None)
    subnets = (node_subnet,) if isinstance(node_subnet, (ipaddress.IPv4Network, ipaddress.IPv6Network)) \
        else tuple(node_subnet)
    same_subnet = any(next_hop.version == s.version and next_hop in s for s in subnets)
    vxlan, ipip = (pool.vxlan, pool.ipip) if pool else ("Never", "Never")
    if vxlan == "Always" or (vxlan == "CrossSubnet" and not same_subnet):
        return Route(route.prefix, route.next_hop, VXLAN6_DEV if next_hop.version == 6 else VXLAN_DEV, onlink=True)
    if next_hop.version == 6 and ipip != "Never":
        return None  # IPIP carries IPv4 only
    if ipip == "Always" or (ipip == "CrossSubnet" and not same_subnet):
        return Route(route.prefix, route.next_hop, IPIP_DEV, onlink=True)
    if same_subnet:
        return Route(route.prefix, route.next_hop, nic)
    return None


def kernel_routes(rib: dict[str, list[Learned]], pools: list[PoolView], node_subnet, nic: str) -> list[Route]:
    """The learned-route table for the kernel: the best route of each prefix."""
    out = []
    for prefix in sorted(rib):
        if rib[prefix]:
            route = kernel_route(best(rib[prefix]), pools, node_subnet, nic)
            if route is not None:
                out.append(route)
    return out
