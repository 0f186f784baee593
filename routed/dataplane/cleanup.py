"""Taking routed off a node: what `helm uninstall` (through the agent) and
`routed cleanup-node` (by hand) remove, and in which order.

The order matters. The conflist and the plugin go first, so kubelet stops sending
ADDs for new pods while the rest is taken apart. Then every route routed stamped
(proto 201: pods' host routes and block blackholes; proto 202: routes learned over
BGP), then routed's VXLAN device, then the natOutgoing chains. Only ours: routes of
other protos, devices of other kinds and other chains are never touched. tunl0 is
not ours to delete: the ipip module creates it in every namespace and it cannot be
removed while the module is loaded; its routes (proto 202) do go.

Pods' own veths stay: a pod keeps its interface until kubelet deletes the pod.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from cni.install import CONFLIST_NAME, PLUGIN_NAME
from routed.dataplane.constants import ROUTE_PROTO, ROUTE_PROTO_BGP, VXLAN6_DEV, VXLAN_DEV
from routed.dataplane.rtnl import Route
from routed.errors import RoutedError

OUR_PROTOS = (ROUTE_PROTO, ROUTE_PROTO_BGP)


@dataclass
class Plan:
    files: list[str] = field(default_factory=list)  # removed first: kubelet stops calling us
    routes: list[Route] = field(default_factory=list)
    links: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.files or self.routes or self.links)


def cni_files(conf_dir: str, bin_dir: str) -> list[str]:
    """What install-cni writes on a node."""
    return [str(Path(conf_dir) / CONFLIST_NAME), str(Path(bin_dir) / PLUGIN_NAME)]


def plan(existing_files: Iterable[str], routes: Iterable[Route], links: Iterable[tuple[str, str]]) -> Plan:
    """What to remove (pure): the given files, the routes carrying our protos and
    the VXLAN device named ours. links: (name, kind) of every device."""
    return Plan(files=list(existing_files),
                routes=sorted((r for r in routes if r.proto in OUR_PROTOS), key=lambda r: (r.proto, r.dst)),
                links=[name for name, kind in links if name in (VXLAN_DEV, VXLAN6_DEV) and kind == "vxlan"])


@dataclass
class Report:
    removed: Plan
    failures: list[str] = field(default_factory=list)  # one line each; the rest was still done


def remove_cni_files(conf_dir: str, bin_dir: str) -> Report:
    """The conflist and the plugin: first, so kubelet stops sending ADDs."""
    report = Report(Plan())
    for path in cni_files(conf_dir, bin_dir):
        try:
            os.unlink(path)
            report.removed.files.append(path)
        except FileNotFoundError:
            pass
        except OSError as err:
            report.failures.append(f"cannot remove {path}: {err.strerror}")
    return report


def clean_dataplane(netns: str | None, report: Report) -> Report:
    """Our routes, our VXLAN device and the natOutgoing chains (netns: the namespace
    playing the node; None: ours), added to report. One failure does not keep the rest
    from being removed; each is reported."""
    from routed.dataplane import bulk, encap, nat
    from routed.dataplane.rtnl import Rtnl

    with Rtnl(netns) as sock:
        routes = [r for proto in OUR_PROTOS for r in sock.routes(proto=proto)]
        vxlans = [link for name in (VXLAN_DEV, VXLAN6_DEV) if (link := sock.link(name=name)) is not None]
    todo = plan(report.removed.files, routes, [(link.name, link.kind) for link in vxlans])
    report.removed = todo
    report.failures += [why for _, why in bulk.apply(netns, delete=todo.routes)]
    for name in todo.links:
        try:
            encap.remove_vxlan(netns, name)
        except RoutedError as err:
            report.failures.append(f"cannot remove {name}: {err}")
    for family in (4, 6):
        nat.remove(netns, family)
    _remove_wireguard(netns, report)
    return report


def _remove_wireguard(netns: str | None, report: Report) -> None:
    """Our rules (their table's routes are proto ROUTE_PROTO: gone above), the ingress
    filter (Required; only nft can have made it) and the device."""
    import shutil

    from routed.dataplane import wireguard

    try:
        wireguard.remove_routing(netns)
        if shutil.which("nft"):
            wireguard.remove_ingress_filter(wireguard.Tools(netns, None))
        if wireguard.remove_device(netns):
            report.removed.links.append(wireguard.WIREGUARD_DEV)
    except RoutedError as err:
        report.failures.append(f"cannot remove WireGuard: {err}")


def clean_node(netns: str | None, conf_dir: str, bin_dir: str) -> Report:
    """Take routed off this node, in the order above. Idempotent: a second run finds
    nothing and removes nothing."""
    return clean_dataplane(netns, remove_cni_files(conf_dir, bin_dir))


def describe(report: Report) -> list[str]:
    """Lines for a person (the command's output, the agent's log): what went, what could not."""
    done = report.removed
    lines = [f"removed {path}" for path in done.files]
    counts = {proto: sum(r.proto == proto for r in done.routes) for proto in OUR_PROTOS}
    lines.append(f"removed {counts[ROUTE_PROTO]} route(s) of proto {ROUTE_PROTO} and "
                 f"{counts[ROUTE_PROTO_BGP]} of proto {ROUTE_PROTO_BGP}")
    lines += [f"removed device {name}" for name in done.links]
    lines.append("removed the natOutgoing chains, if any")
    return lines + [f"failed: {why}" for why in report.failures]
