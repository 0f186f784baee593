"""The lab's top-of-rack routers: BIRD 2, FRR 8 or GoBGP 3, one per rack namespace.

Rendering is pure (a RouterSpec in, configuration text out); `commands` says how each
daemon runs; `sessions` and `routes` ask a running router what it sees.

Every ToR speaks eBGP (AS 65000 + rack) to the nodes of its rack (AS 64512) and to the
other racks' ToRs over the core. Toward the nodes it exports nothing: the nodes reach
everything through their default route, and every route a ToR could send them carries
the nodes' own AS 64512 in its path, which they would reject anyway. Toward the other
ToRs it exports the node blocks it learned, with itself as next hop (eBGP).

Who programs the kernel of the ToR namespace:
- BIRD: its `kernel` protocol exports the BGP routes (proto bird);
- FRR: zebra, run beside bgpd with a private zserv socket (proto bgp);
- GoBGP: nobody. GoBGP has no FIB of its own, and its zebra client (3.10) panics on
  Debian 12's FRR 8.4 zebra (`interfaceUpdateBody.decodeFromBytes: slice bounds out of
  range`), so a GoBGP ToR holds the blocks in its RIB only. The lab refuses
  `--encap none` across racks with GoBGP, the one case where the ToRs must forward to
  pod blocks.
The rack subnets themselves (the underlay the VXLAN packets and the cross-rack node
mesh ride on) are static routes the lab adds on every ToR, as a data centre's IGP would.

Dual stack: a neighbor with an IPv6 address is a separate session carrying IPv6 unicast
only (BIRD: an ipv6 channel, FRR: address-family ipv6 unicast, GoBGP: ipv6-unicast),
with the same export rules as its IPv4 twin.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

KINDS = ("bird", "frr", "gobgp")
MAX_PATHS = 16  # ECMP width of the ToRs (BIRD's kernel protocol merges without a limit)
FRR = "/usr/lib/frr"


@dataclass(frozen=True)
class Neighbor:
    address: str
    as_number: int
    name: str  # node1, rack2-tor
    kind: str  # "node" | "tor"

    @property
    def version(self) -> int:
        return ipaddress.ip_address(self.address).version


@dataclass(frozen=True)
class RouterSpec:
    name: str  # rack1-tor
    router_id: str
    as_number: int
    neighbors: tuple[Neighbor, ...]
    api_port: int = 50051  # GoBGP's gRPC API, on the ToR namespace's own loopback

    def by_address(self) -> dict[str, Neighbor]:
        return {n.address: n for n in self.neighbors}


# --------------------------------------------------------------------------- rendering


def _proto_name(n: Neighbor) -> str:
    return n.name.replace("-", "_") + ("_v6" if n.version == 6 else "")


def render_bird(spec: RouterSpec) -> str:
    lines = [f"# routed lab: {spec.name} (BIRD); written by `routed lab up`",
             f"router id {spec.router_id};",
             "log stderr all;",
             "protocol device { scan time 10; }",
             "",
             "# Learned blocks go into this namespace's kernel, so the ToR forwards to them; equal",
             "# routes from several nodes (a Service's address) become one ECMP route.",
             "protocol kernel {",
             "  ipv4 { import none; export where source = RTS_BGP; };",
             "  merge paths on;",
             "}",
             "protocol kernel {",
             "  ipv6 { import none; export where source = RTS_BGP; };",
             "  merge paths on;",
             "}",
             "",
             "template bgp node_peer {",
             f"  local as {spec.as_number};",
             "  graceful restart on;",
             "  ipv4 { import all; export none; };",
             "}",
             "",
             "template bgp tor_peer {",
             f"  local as {spec.as_number};",
             "  graceful restart on;",
             "  ipv4 { import all; export where source = RTS_BGP; };",
             "}",
             "",
             "template bgp node_peer6 {",
             f"  local as {spec.as_number};",
             "  graceful restart on;",
             "  ipv6 { import all; export none; };",
             "}",
             "",
             "template bgp tor_peer6 {",
             f"  local as {spec.as_number};",
             "  graceful restart on;",
             "  ipv6 { import all; export where source = RTS_BGP; };",
             "}",
             ""]
    for n in spec.neighbors:
        template = ("node_peer" if n.kind == "node" else "tor_peer") + ("6" if n.version == 6 else "")
        lines.append(f'protocol bgp {_proto_name(n)} from {template} {{ description "{n.name}"; '
                     f"neighbor {n.address} as {n.as_number}; }}")
    return "\n".join(lines) + "\n"


def render_frr_zebra(spec: RouterSpec) -> str:
    return f"! routed lab: {spec.name} (FRR zebra)\nhostname {spec.name}\n"


def render_frr_bgpd(spec: RouterSpec) -> str:
    lines = [f"! routed lab: {spec.name} (FRR bgpd); written by `routed lab up`",
             f"hostname {spec.name}",
             "route-map NOTHING deny 10",
             "!",
             f"router bgp {spec.as_number}",
             f" bgp router-id {spec.router_id}",
             " no bgp ebgp-requires-policy",
             " no bgp default ipv4-unicast",
             " bgp graceful-restart"]
    for n in spec.neighbors:
        lines += [f" neighbor {n.address} remote-as {n.as_number}",
                  f" neighbor {n.address} description {n.name}"]
    for version in (4, 6):
        family = [n for n in spec.neighbors if n.version == version]
        if version == 6 and not family:
            continue
        # ECMP over the nodes announcing one prefix (a Service's address): zebra installs them all.
        lines += [f" address-family ipv{version} unicast", f"  maximum-paths {MAX_PATHS}"]
        for n in family:
            lines.append(f"  neighbor {n.address} activate")
            if n.kind == "node":
                lines.append(f"  neighbor {n.address} route-map NOTHING out")
        lines.append(" exit-address-family")
    lines.append("!")
    return "\n".join(lines) + "\n"


def render_gobgp(spec: RouterSpec) -> str:
    lines = [f"# routed lab: {spec.name} (GoBGP); written by `routed lab up`",
             "[global.config]",
             f"  as = {spec.as_number}",
             f'  router-id = "{spec.router_id}"',
             "  port = 179",
             # Equal paths (a Service's address from several nodes) are all kept as multipath.
             "[global.use-multiple-paths.config]",
             "  enabled = true",
             "",
             "[[policy-definitions]]",
             '  name = "nothing"',
             "  [[policy-definitions.statements]]",
             '    name = "reject-all"',
             "    [policy-definitions.statements.actions]",
             '      route-disposition = "reject-route"',
             ""]
    for n in spec.neighbors:
        lines += ["[[neighbors]]",
                  "  [neighbors.config]",
                  f'    neighbor-address = "{n.address}"',
                  f"    peer-as = {n.as_number}",
                  f'    description = "{n.name}"',
                  "  [neighbors.graceful-restart.config]",
                  "    enabled = true",
                  "  [[neighbors.afi-safis]]",
                  "    [neighbors.afi-safis.config]",
                  f'      afi-safi-name = "ipv{n.version}-unicast"',
                  "    [neighbors.afi-safis.mp-graceful-restart.config]",
                  "      enabled = true"]
        if n.kind == "node":
            lines += ["  [neighbors.apply-policy.config]",
                      '    export-policy-list = ["nothing"]',
                      '    default-export-policy = "reject-route"']
        lines.append("")
    return "\n".join(lines)


def config_files(kind: str, spec: RouterSpec) -> dict[str, str]:
    """File name -> text, for the router's directory."""
    if kind == "bird":
        return {"bird.conf": render_bird(spec)}
    if kind == "frr":
        return {"zebra.conf": render_frr_zebra(spec), "bgpd.conf": render_frr_bgpd(spec)}
    if kind == "gobgp":
        return {"gobgpd.toml": render_gobgp(spec)}
    raise ValueError(f"unknown router kind {kind!r} (one of {', '.join(KINDS)})")


def commands(kind: str, spec: RouterSpec, directory: Path, netns: str) -> list[tuple[str, list[str]]]:
    """(process name, argv) in start order; every daemon in the foreground, in netns."""
    d = str(directory)
    exec_in = ["ip", "netns", "exec", netns]
    if kind == "bird":
        return [("bird", [*exec_in, "bird", "-f", "-c", f"{d}/bird.conf", "-s", f"{d}/bird.ctl"])]
    if kind == "frr":
        # zebra first: bgpd hands it the routes to install. Both run as user frr (the
        # daemons' compiled-in vty group refuses root), so the directory is frr's.
        common = ["--vty_socket", d, "-P", "0", "-z", f"{d}/zserv.api"]
        return [("zebra", [*exec_in, f"{FRR}/zebra", "-f", f"{d}/zebra.conf", "-i", f"{d}/zebra.pid", *common]),
                ("bgpd", [*exec_in, f"{FRR}/bgpd", "-f", f"{d}/bgpd.conf", "-i", f"{d}/bgpd.pid", "-S", *common])]
    if kind == "gobgp":
        return [("gobgpd", [*exec_in, "gobgpd", "-f", f"{d}/gobgpd.toml", "-p",
                            "--api-hosts", f"127.0.0.1:{spec.api_port}", "--log-plain"])]
    raise ValueError(f"unknown router kind {kind!r}")


def ready_file(kind: str, directory: Path) -> Path | None:
    """A file that exists once the daemon accepts queries (None: ask instead)."""
    return {"bird": directory / "bird.ctl", "frr": directory / "bgpd.vty"}.get(kind)


# --------------------------------------------------------------------------- queries


def _run(netns: str | None, argv: list[str], timeout: float = 10.0) -> str:
    cmd = ["ip", "netns", "exec", netns, *argv] if netns else argv
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return ""
    return result.stdout if result.returncode == 0 else ""


def sessions(kind: str, spec: RouterSpec, directory: Path, netns: str) -> list[dict]:
    """Every configured neighbor: {peer, name, kind, state ('up' when established), info}."""
    found: dict[str, tuple[str, str]] = {}  # address -> (state, info)
    if kind == "bird":
        names = {_proto_name(n): n.address for n in spec.neighbors}
        for line in _run(None, ["birdc", "-s", f"{directory}/bird.ctl", "show", "protocols"]).splitlines():
            parts = line.split()
            if len(parts) >= 4 and parts[0] in names and parts[1] == "BGP":
                info = " ".join(parts[6:]) if len(parts) > 6 else ""
                state = "up" if info.startswith("Established") else (info.split()[0].lower() if info else parts[3])
                found[names[parts[0]]] = (state, info)
    elif kind == "frr":
        text = _run(None, ["vtysh", "--vty_socket", str(directory), "-d", "bgpd", "-c", "show bgp summary json"])
        try:
            summary = json.loads(text) if text else {}
            peers = {**summary.get("ipv4Unicast", {}).get("peers", {}),
                     **summary.get("ipv6Unicast", {}).get("peers", {})}
        except (ValueError, AttributeError):
            peers = {}
        for address, p in peers.items():
            state = p.get("state", "")
            info = p.get("peerState", "")
            found[address] = ("up" if state == "Established" else state.lower(), "" if info == "OK" else info)
    elif kind == "gobgp":
        text = _run(netns, ["gobgp", "-u", "127.0.0.1", "-p", str(spec.api_port), "neighbor", "-j"])
        try:
            peers = json.loads(text) if text else []
        except ValueError:
            peers = []
        for p in peers or []:
            address = p.get("conf", {}).get("neighbor_address", "")
            state = p.get("state", {}).get("session_state", "")
            found[address] = ("up" if state in ("established", 6, "ESTABLISHED") else str(state).lower(), "")
    return [{"router": spec.name, "peer": n.address, "name": n.name, "kind": n.kind,
             "state": found.get(n.address, ("unknown", ""))[0], "info": found.get(n.address, ("", ""))[1]}
            for n in spec.neighbors]


def routes(kind: str, spec: RouterSpec, directory: Path, netns: str) -> dict[str, str]:
    """prefix -> next hop of the best route the router holds (its BGP RIB)."""
    out: dict[str, str] = {}
    if kind == "bird":
        prefix = None
        for line in _run(None, ["birdc", "-s", f"{directory}/bird.ctl", "show", "route"]).splitlines():
            parts = line.split()
            if not parts:
                continue
            if "/" in parts[0] and _is_prefix(parts[0]):
                prefix = parts[0]
            if prefix and "via" in parts and prefix not in out:
                out[prefix] = parts[parts.index("via") + 1]
    elif kind == "frr":
        table = {}
        for family in ("ipv4", "ipv6"):
            text = _run(None, ["vtysh", "--vty_socket", str(directory), "-d", "bgpd", "-c",
                               f"show bgp {family} unicast json"])
            try:
                table.update(json.loads(text).get("routes", {}) if text else {})
            except (ValueError, AttributeError):
                pass
        for prefix, paths in table.items():
            best = next((p for p in paths if p.get("bestpath")), paths[0] if paths else {})
            hops = best.get("nexthops") or [{}]
            out[prefix] = hops[0].get("ip", "")
    elif kind == "gobgp":
        for prefix, paths in _gobgp_rib(spec, netns).items():
            best = next((p for p in paths if p.get("best")), paths[0] if paths else {})
            hop = next((a.get("nexthop") for a in best.get("attrs", []) if a.get("nexthop")), "")
            out[prefix] = hop
    return out


def _gobgp_rib(spec: RouterSpec, netns: str) -> dict[str, list]:
    """GoBGP's RIB of both families: prefix -> its paths (JSON)."""
    table: dict[str, list] = {}
    for family in ("ipv4", "ipv6"):
        text = _run(netns, ["gobgp", "-u", "127.0.0.1", "-p", str(spec.api_port), "global", "rib", "-a", family,
                            "-j"])
        try:
            table.update(json.loads(text) or {} if text else {})
        except (ValueError, TypeError):
            pass
    return table


def _is_prefix(text: str) -> bool:
    try:
        ipaddress.ip_network(text, strict=False)
        return True
    except ValueError:
        return False


def ecmp(kind: str, spec: RouterSpec, directory: Path, netns: str) -> dict[str, set[str]]:
    """prefix -> the next hops the router spreads its traffic over (the ECMP set).

    BIRD and FRR: the ToR namespace's kernel table, what really forwards (BIRD's
    `merge paths`, FRR's `maximum-paths` through zebra). GoBGP has no FIB here: the paths
    of its RIB as long as the best one's AS path, the multipath set it would install."""
    out: dict[str, set[str]] = {}
    if kind in ("bird", "frr"):
        for family in ("-4", "-6"):
            text = _run(None, ["ip", family, "-j", "-n", netns, "route", "show", "proto",
                               "bird" if kind == "bird" else "bgp"])
            try:
                routes_ = json.loads(text) if text else []
            except ValueError:
                routes_ = []
            for route in routes_:
                dst = route.get("dst", "")
                prefix = dst if "/" in dst else f"{dst}/{32 if family == '-4' else 128}"
                hops = [h.get("gateway") for h in route.get("nexthops") or [route]]
                out[prefix] = {h for h in hops if h}
        return out
    for prefix, paths in _gobgp_rib(spec, netns).items():
        found = [(_as_path_length(p), _next_hop(p)) for p in paths]
        shortest = min((length for length, _ in found), default=0)
        out[prefix] = {hop for length, hop in found if length == shortest and hop}
    return out


def _next_hop(path: dict) -> str:
    return next((a.get("nexthop") for a in path.get("attrs", []) if a.get("nexthop")), "")


def _as_path_length(path: dict) -> int:
    for attr in path.get("attrs", []):
        if "as_paths" in attr:
            return sum(len(seg.get("asns") or []) for seg in attr.get("as_paths") or [])
    return 0
