"""Routes routed owns in a netns: listing them and keeping block blackholes in sync.

Only routes with ``proto ROUTE_PROTO`` are ever deleted here, so routes of the
distribution, kube-proxy, the administrator or another CNI are safe whatever the
desired state says.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass

from pyroute2 import IPRoute

from routed.dataplane.constants import ROUTE_PROTO
from routed.dataplane.errors import DataplaneError
from routed.dataplane.netlink import step

RT_TABLE_MAIN = 254
RTN_NAMES = {1: "unicast", 2: "local", 3: "broadcast", 6: "blackhole", 7: "unreachable", 8: "prohibit"}
RTN_BLACKHOLE = 6
ESRCH = 3  # what the kernel answers when the route to delete is not there


@dataclass(frozen=True)
class KernelRoute:
    dst: str  # normalised CIDR, "0.0.0.0/0" for a default route
    type: str  # "unicast", "blackhole", ...
    proto: int
    table: int
    oif: int | None = None
    gateway: str | None = None
    scope: int = 0


def _cidr(msg) -> str:
    dst = msg.get("dst")
    if dst is None:
        dst = "0.0.0.0" if msg["family"] == socket.AF_INET else "::"
    return str(ipaddress.ip_network(f"{dst}/{msg['dst_len']}"))


def _from_msg(msg) -> KernelRoute:
    return KernelRoute(
        dst=_cidr(msg),
        type=RTN_NAMES.get(msg["type"], str(msg["type"])),
        proto=msg["proto"],
        table=msg.get("table"),
        oif=msg.get("oif"),
        gateway=msg.get("gateway"),
        scope=msg["scope"],
    )


def list_routes(
    ipr: IPRoute,
    proto: int | None = ROUTE_PROTO,
    table: int | None = RT_TABLE_MAIN,
    family: int = socket.AF_UNSPEC,
) -> list[KernelRoute]:
    """Routes of both families (unless ``family``) carrying ``proto`` in ``table``
    (None = any). Filtering by proto and table happens in pyroute2."""
    spec = {}
    if proto is not None:
        spec["proto"] = proto
    if table is not None:
        spec["table"] = table
    with step("list routes"):
        msgs = ipr.route("dump", family=family, **spec)
    return [_from_msg(m) for m in msgs]


def _blackhole(cidr: str) -> dict:
    """The request of our blackhole route for cidr (adding and deleting alike)."""
    family = socket.AF_INET if ipaddress.ip_network(cidr).version == 4 else socket.AF_INET6
    return {"family": family, "dst": cidr, "type": "blackhole", "proto": ROUTE_PROTO, "table": RT_TABLE_MAIN}


def sync_blackholes(ipr: IPRoute, desired: Iterable[str]) -> tuple[set[str], set[str]]:
    """Make the ``blackhole <block> proto ROUTE_PROTO`` routes in the main table equal
    to ``desired`` (CIDRs, IPv4 and IPv6). Returns (added, removed) as CIDR strings.

    The blackhole keeps packets for unallocated addresses of our blocks from leaving
    the node by the default route (and looping back to us); pods' /32 routes are more
    specific and win. ``replace`` makes an add idempotent and also takes over a route to
    the very same prefix left by someone else (we own the block, so ours must win).
    """
    want = {str(ipaddress.ip_network(c)) for c in desired}
    have = {r.dst for r in list_routes(ipr) if r.type == "blackhole"}
    added, removed = want - have, have - want
    for cidr in sorted(added):
        with step(f"add blackhole {cidr}"):
            ipr.route("replace", **_blackhole(cidr))
    for cidr in sorted(removed):
        try:
            with step(f"delete blackhole {cidr}"):
                # proto and type in the request make the kernel match only our route.
                ipr.route("del", **_blackhole(cidr))
        except DataplaneError as err:
            if err.errno != ESRCH:  # gone meanwhile: that is the desired state
                raise
    return added, removed
