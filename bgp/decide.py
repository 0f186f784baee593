"""What to do with a route a peer sent us (pure logic): accept it or not, and how to
reach its next hop (directly, IPIP or VXLAN) according to its pool's modes."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from routed.dataplane.constants import IPIP_DEV, VXLAN_DEV
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


def rejection(route: Learned, my_as: int, pools: list[PoolView], allowed: tuple[str, ...],
              own_prefixes: set[str]) -> str | None:
    """Why a learned route must not be installed, or None to accept it."""
    try:
        prefix = ipaddress.ip_network(route.prefix)
        ipaddress.ip_address(route.next_hop)
    except ValueError:
        return "not a valid prefix or next hop"
    if my_as in route.as_path:
        return f"AS path {list(route.as_path)} contains our own AS {my_as}"
    if route.prefix in own_prefixes:
        return "it is one of this node's own blocks"
    in_pool = any(prefix.version == p.network.version and prefix.subnet_of(p.network) for p in pools)
    if not in_pool and not any(_within(prefix, a) for a in allowed):
        return "outside every IP pool and not allowed for this peer"
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
    another subnet).
    """
    prefix = ipaddress.ip_network(route.prefix)
    next_hop = ipaddress.ip_address(route.next_hop)
    pool = next((p for p in pools if prefix.version == p.network.version and prefix.subnet_of(p.network)), None)
    same_subnet = next_hop.version == node_subnet.version and next_hop in node_subnet
    vxlan, ipip = (pool.vxlan, pool.ipip) if pool else ("Never", "Never")
    if vxlan == "Always" or (vxlan == "CrossSubnet" and not same_subnet):
        return Route(route.prefix, route.next_hop, VXLAN_DEV, onlink=True)
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
