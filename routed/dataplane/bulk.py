"""Programming thousands of routes at once: the desired-state sync over rtnl.py.

Why not one call per route: pyroute2's ``IPRoute.route()`` runs at ~1,500-2,500
routes/s here, so a node learning 10,000 blocks would spend seconds per full resync.
Here every RTM_NEWROUTE / RTM_DELROUTE goes out in batches of a thousand per send()
(``Rtnl.transact``), each ack matched back to its route: one bad route fails alone,
with the kernel's reason, and never holds up the others.

Layout: the pure sync plan (``plan_sync``) first, then the public functions (``apply``,
``current``, ``sync``). Both reconcilers of a node use ``sync``: the BGP-learned routes
(proto 202, every kind) and the block blackholes (proto 201, kind "blackhole" only: the
pods' /32 host routes carry proto 201 too, and are not the blackhole sync's to touch).

Every route carries a ``proto`` number, and deletes name it, so the kernel itself
refuses to delete a route of another proto: the learned-route reconciler (proto 202,
ROUTE_PROTO_BGP) cannot remove the node's own routes (201) or the administrator's.
"""

from __future__ import annotations

import errno as errnos
import os
from collections.abc import Iterable
from dataclasses import dataclass, field

from routed.dataplane.constants import ROUTE_PROTO_BGP
from routed.dataplane.netns import NetnsTarget
from routed.dataplane.rtnl import RT_TABLE_MAIN, Route, Rtnl, reason, route_delete, route_replace

__all__ = ["SyncResult", "apply", "apply_with", "current", "sync", "plan_sync", "same_route"]


@dataclass
class SyncResult:
    added: list[Route] = field(default_factory=list)  # replaced: missing or different before
    removed: list[Route] = field(default_factory=list)  # extra routes of the proto, deleted
    failed: list[tuple[Route, str]] = field(default_factory=list)  # (route, one-line reason)


# --------------------------------------------------------------------------- sync plan (pure)


def same_route(want: Route, have: Route) -> bool:
    """Does the kernel's ``have`` already do what ``want`` asks? A desired route without
    a device leaves the choice to the kernel, so any device matches."""
    return (
        want.key == have.key
        and want.kind == have.kind
        and want.gateway == have.gateway
        and want.onlink == have.onlink
        and want.proto == have.proto
        and (want.dev is None or want.dev == have.dev)
    )


def plan_sync(
    desired: Iterable[Route], kernel: Iterable[Route], proto: int, kind: str | None = None
) -> tuple[list[Route], list[Route], list[tuple[Route, str]]]:
    """(to replace, to delete, refused) to make the kernel's ``proto`` routes (of
    ``kind`` only, when given) equal to ``desired``. ``kernel`` is every route of the
    tables concerned, any proto; routes of the proto but another kind count as another
    owner's.

    A desired route whose destination is held by another owner's route is refused, not
    replaced: a replace would silently remove that route (the node's own block
    blackhole, a pod's /32, the administrator's static route), and this reconciler only
    ever removes its own routes."""
    want: dict[tuple[int, str], Route] = {}
    for route in desired:
        if route.proto != proto or (kind is not None and route.kind != kind):
            what = f"proto {proto} {kind} routes" if kind else f"proto {proto}"
            raise ValueError(f"{route}: proto {route.proto} {route.kind}, but this sync manages {what}")
        want[route.key] = route  # the last one for a destination wins
    ours: dict[tuple[int, str], list[Route]] = {}
    foreign: dict[tuple[int, str], Route] = {}
    for route in kernel:
        if route.proto == proto and (kind is None or route.kind == kind):
            ours.setdefault(route.key, []).append(route)
        else:
            foreign.setdefault(route.key, route)
    replace, refused = [], []
    for key, route in want.items():
        have = ours.get(key, [])
        if any(same_route(route, h) for h in have):
            continue
        if not have and key in foreign:
            other = foreign[key]
            refused.append((route, f"{route}: the destination already has a proto {other.proto} route "
                                   f"({other}); not replacing it"))
            continue
        replace.append(route)
    delete = [h for key, have in ours.items() if key not in want for h in have]
    return replace, delete, refused


def _delete_name(route: Route) -> str:
    table = f" table {route.table}" if route.table != RT_TABLE_MAIN else ""
    return f"delete {route.dst}{table} proto {route.proto}"


# --------------------------------------------------------------------------- public API


def apply_with(rtnl: Rtnl, replace: Iterable[Route] = (), delete: Iterable[Route] = ()) -> list[tuple[Route, str]]:
    """``apply`` on a socket the caller holds open (several calls, one socket)."""
    failed: list[tuple[Route, str]] = []
    replace, delete = list(replace), list(delete)
    sent: list[tuple[Route, bool]] = []  # (route, is a delete), in the order of messages
    messages: list[bytes] = []
    # Deletes first: a delete and a replace of the same destination (a move) end with
    # the new route.
    for route in delete:
        sent.append((route, True))
        messages.append(route_delete(route))
    ifindex: dict[str, int] | None = None
    for route in replace:
        oif = None
        if route.dev is not None:
            if ifindex is None:
                ifindex = {name: index for index, name in rtnl.links().items()}
            oif = ifindex.get(route.dev)
            if oif is None:
                failed.append((route, f"{route}: {os.strerror(errnos.ENODEV)}"))
                continue
        sent.append((route, False))
        messages.append(route_replace(route, oif))
    for (route, is_delete), (code, text) in zip(sent, rtnl.transact(messages)):
        if code == 0 or (is_delete and code == errnos.ESRCH):  # already gone: fine
            continue
        what = _delete_name(route) if is_delete else str(route)
        failed.append((route, f"{what}: {reason(code, text)}"))
    return failed


def apply(netns: NetnsTarget, replace: Iterable[Route] = (), delete: Iterable[Route] = ()) -> list[tuple[Route, str]]:
    """Replace (add or overwrite) and delete routes in ``netns`` (None = this netns).

    A replace overwrites whatever route the table has to that destination, of any
    proto: the caller has decided (``sync`` is the careful one and refuses that).
    A delete removes the route of ``route.proto`` to ``route.dst`` in ``route.table``,
    whatever its next hop; one that is already gone is not a failure. Returns the
    failures as (route, one-line reason); raises only when the netns cannot be reached
    (NetnsNotFound / DataplaneError), never for a single bad route."""
    with Rtnl(netns) as rtnl:
        return apply_with(rtnl, replace, delete)


def current(netns: NetnsTarget, proto: int = ROUTE_PROTO_BGP, family: int = 0,
            kind: str | None = None) -> set[Route]:
    """The routes with ``proto`` (and ``kind``, when given) in ``netns``, all tables."""
    with Rtnl(netns) as rtnl:
        return {r for r in rtnl.routes(family, proto=proto) if kind is None or r.kind == kind}


def sync(netns: NetnsTarget, desired: Iterable[Route], proto: int = ROUTE_PROTO_BGP,
         kind: str | None = None) -> SyncResult:
    """Make the kernel's ``proto`` routes (of ``kind`` only, when given) equal to
    ``desired``: replace the missing and different ones, delete the extra ones. Touches
    only those; a desired destination held by another route is reported as failed (see
    plan_sync). Every route in ``desired`` must carry ``proto`` and ``kind`` (ValueError
    otherwise)."""
    desired = list(desired)
    with Rtnl(netns) as rtnl:
        kernel = rtnl.routes()
        replace, delete, refused = plan_sync(desired, kernel, proto, kind)
        failed = apply_with(rtnl, replace, delete)
    bad = {id(route) for route, _ in failed}
    return SyncResult(
        added=[r for r in replace if id(r) not in bad],
        removed=[r for r in delete if id(r) not in bad],
        failed=refused + failed,
    )
