"""Real BGP routers for the BGP tests: BIRD 2, FRR bgpd (standalone, no zebra) and GoBGP,
each run inside a test namespace from a rendered configuration, and queried for their RIB
and session states.

Every daemon is started by us with Popen (`ip netns exec` execs the daemon itself, so the
Popen PID is the daemon's) and stopped by that PID only. Files (configuration, control
sockets, logs) live in the router's own work directory.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import signal
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from routed.lab import topology
from tests.support.wait import eventually

BIRD = "/usr/sbin/bird"
BIRDC = "/usr/sbin/birdc"
FRR_BGPD = "/usr/lib/frr/bgpd"
VTYSH = "/usr/bin/vtysh"
GOBGPD = "/usr/bin/gobgpd"
GOBGP = "/usr/bin/gobgp"


@dataclass
class Neighbor:
    address: str
    as_number: int
    password: str | None = None
    rr_client: bool = False
    port: int = 179  # the neighbor's listen port (a node with BGPConfiguration listenPort)
    passive: bool = False  # GoBGP only: never connect, wait for the neighbor to


@dataclass
class Announce:
    """A route the router originates: prefix, optionally with extra ASes prepended."""

    prefix: str
    prepend: tuple[int, ...] = ()
    next_hop: str | None = None  # GoBGP only: a third-party next hop instead of the router's own


@dataclass
class RouterSpec:
    address: str  # the router's address (no prefix): router ID, session source
    as_number: int
    neighbors: list[Neighbor] = field(default_factory=list)
    announce: list[Announce] = field(default_factory=list)
    cluster_id: str | None = None  # route reflector cluster ID (iBGP reflection)
    kernel_export: bool = False  # install learned routes into the router's kernel (BIRD only)
    router_id: str | None = None  # default: address (an IPv6 router needs an IPv4-shaped ID; GoBGP only)


def wait_for(predicate, timeout: float, what: str, log: Path | None = None):
    return eventually(predicate, what, timeout, 0.2,
                      details=lambda: log.read_text()[-3000:] if log is not None and log.exists() else "")


class Router:
    """One routing daemon in netns; subclasses render the configuration and parse queries."""

    kind = "router"

    def __init__(self, netns: str, workdir: Path, spec: RouterSpec):
        self.netns, self.spec = netns, spec
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log = self.workdir / f"{self.kind}.log"
        self.proc: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return self.spec.address

    # -- lifecycle ----------------------------------------------------------------------

    def command(self) -> list[str]:
        raise NotImplementedError

    def render(self) -> str:
        raise NotImplementedError

    def start(self, timeout: float = 20.0) -> Router:
        self.config_path.write_text(self.render())
        self.proc = subprocess.Popen(["ip", "netns", "exec", self.netns, *self.command()],
                                     stdout=open(self.log, "ab"), stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.monotonic() + timeout
        while not self.ready():
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.kind} exited with {self.proc.returncode}:\n"
                                   f"{self.log.read_text()[-3000:]}\n--- config\n{self.render()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{self.kind} not ready within {timeout}s:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.1)
        self.after_start()
        return self

    def after_start(self) -> None:
        pass

    def ready(self) -> bool:
        raise NotImplementedError

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.kill(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    # -- queries ------------------------------------------------------------------------

    def rib(self) -> dict[str, set[str]]:
        """prefix -> the next hops of every path the router holds for it."""
        raise NotImplementedError

    def established(self) -> set[str]:
        """Neighbor addresses whose session is Established."""
        raise NotImplementedError

    def wait_established(self, addresses, timeout: float = 60.0) -> None:
        wanted = set(addresses)
        wait_for(lambda: wanted <= self.established(), timeout,
                 f"{self.kind} sessions with {sorted(wanted)} (up: {sorted(self.established())})", self.log)

    def wait_route(self, prefix: str, next_hop: str, timeout: float = 60.0) -> None:
        wait_for(lambda: next_hop in self.rib().get(prefix, set()), timeout,
                 f"{self.kind} to learn {prefix} via {next_hop} (RIB: {self.rib()})", self.log)

    def run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        return topology.run_in(self.netns, *cmd, check=check)


# ------------------------------------------------------------------------------- BIRD


class Bird(Router):
    kind = "bird"

    def __init__(self, netns: str, workdir: Path, spec: RouterSpec):
        super().__init__(netns, workdir, spec)
        self.config_path = self.workdir / "bird.conf"
        self.socket = str(self.workdir / "bird.ctl")

    def command(self) -> list[str]:
        return [BIRD, "-f", "-c", str(self.config_path), "-s", self.socket, "-P", str(self.workdir / "bird.pid")]

    def render(self) -> str:
        s = self.spec
        prepends = {a.prefix: a.prepend for a in s.announce if a.prepend}
        export = ["export filter {"]
        for prefix, path in prepends.items():
            ops = " ".join(f"bgp_path.prepend({asn});" for asn in reversed(path))
            export.append(f"    if net = {prefix} then {{ {ops} }}")
        export += ["    accept;", "  };"]
        lines = [f"router id {s.address};", f'log "{self.log}" all;', "",
                 "protocol device { scan time 2; }", ""]
        if s.announce:
            lines += ["protocol static originated {", "  ipv4;"]
            lines += [f"  route {a.prefix} blackhole;" for a in s.announce]
            lines += ["}", ""]
        if s.kernel_export:
            # Learned routes into the router's own kernel table, so traffic really flows.
            lines += ["protocol kernel {", "  ipv4 { import none; export where source = RTS_BGP; };",
                      "}", ""]
        for i, n in enumerate(s.neighbors):
            lines += [f"protocol bgp peer{i} {{",
                      f"  local {s.address} as {s.as_number};",
                      f"  neighbor {n.address} port {n.port} as {n.as_number};",
                      "  direct;",
                      "  hold time 30;",
                      "  connect retry time 2;",
                      "  error wait time 1, 5;"]
            if n.password:
                lines.append(f'  password "{n.password}";')
            if n.rr_client:
                lines += ["  rr client;", f"  rr cluster id {s.cluster_id};"]
            lines += ["  ipv4 {", "    import all;", "    " + "\n    ".join(export), "  };", "}", ""]
        return "\n".join(lines)

    def birdc(self, *args: str) -> str:
        out = subprocess.run([BIRDC, "-s", self.socket, *args], capture_output=True, text=True, timeout=10)
        return out.stdout

    def ready(self) -> bool:
        return os.path.exists(self.socket) and "BIRD" in self.birdc("show", "status")

    def _protocol_names(self) -> dict[str, str]:
        return {f"peer{i}": n.address for i, n in enumerate(self.spec.neighbors)}

    def established(self) -> set[str]:
        names = self._protocol_names()
        up = set()
        for line in self.birdc("show", "protocols").splitlines():
            parts = line.split()
            if parts and parts[0] in names and "Established" in line:
                up.add(names[parts[0]])
        return up

    def protocol_info(self, address: str) -> str:
        name = {a: n for n, a in self._protocol_names().items()}[address]
        return self.birdc("show", "protocols", "all", name)

    def rib(self) -> dict[str, set[str]]:
        rib: dict[str, set[str]] = {}
        prefix = None
        for line in self.birdc("show", "route", "all").splitlines():
            m = re.match(r"^(\d+\.\d+\.\d+\.\d+/\d+)\s", line)
            if m:
                prefix = m.group(1)
                rib.setdefault(prefix, set())
            m = re.search(r"\bvia (\d+\.\d+\.\d+\.\d+)", line)
            if m and prefix:
                rib[prefix].add(m.group(1))
            m = re.search(r"BGP\.next_hop: (\d+\.\d+\.\d+\.\d+)", line)
            if m and prefix:
                rib[prefix].add(m.group(1))
        return rib

    def communities(self, prefix: str) -> tuple[set[str], set[str]]:
        """The standard ("aa:nn") and large ("aa:nn:mm") communities of prefix's routes."""
        out = self.birdc("show", "route", prefix, "all")
        standard = {f"{a}:{b}" for line in re.findall(r"BGP\.community:(.*)", out)
                    for a, b in re.findall(r"\((\d+),\s*(\d+)\)", line)}
        large = {f"{a}:{b}:{c}" for line in re.findall(r"BGP\.large_community:(.*)", out)
                 for a, b, c in re.findall(r"\((\d+),\s*(\d+),\s*(\d+)\)", line)}
        return standard, large

    def as_paths(self, prefix: str) -> list[list[int]]:
        out = self.birdc("show", "route", prefix, "all")
        return [[int(x) for x in m.split()] for m in re.findall(r"BGP\.as_path:([ \d]*)", out)]


# ------------------------------------------------------------------------------- FRR


class Frr(Router):
    kind = "frr"

    def __init__(self, netns: str, workdir: Path, spec: RouterSpec):
        super().__init__(netns, workdir, spec)
        self.config_path = self.workdir / "bgpd.conf"
        self.vty_dir = self.workdir / "vty"
        self.vty_dir.mkdir(exist_ok=True)

    def command(self) -> list[str]:
        return [FRR_BGPD, "-f", str(self.config_path), "-Z", "-S", "-i", str(self.workdir / "bgpd.pid"),
                "--vty_socket", str(self.vty_dir), "-P", "0", "-l", self.spec.address,
                "--log", f"file:{self.log}"]

    def render(self) -> str:
        s = self.spec
        lines = ["frr defaults traditional", "hostname tor", "!"]
        for a in s.announce:
            if a.prepend:
                name = "PREPEND-" + a.prefix.replace(".", "-").replace("/", "-")
                lines += [f"route-map {name} permit 10",
                          f" set as-path prepend {' '.join(str(x) for x in a.prepend)}", "!"]
        lines += [f"router bgp {s.as_number}", f" bgp router-id {s.address}",
                  " no bgp ebgp-requires-policy", " no bgp network import-check",
                  " no bgp default ipv4-unicast", " timers bgp 10 30"]
        if s.cluster_id:
            lines.append(f" bgp cluster-id {s.cluster_id}")
        for n in s.neighbors:
            lines += [f" neighbor {n.address} remote-as {n.as_number}",
                      f" neighbor {n.address} update-source {s.address}",
                      f" neighbor {n.address} timers connect 2"]
            if n.port != 179:
                lines.append(f" neighbor {n.address} port {n.port}")
            if n.password:
                lines.append(f" neighbor {n.address} password {n.password}")
        lines.append(" address-family ipv4 unicast")
        for a in s.announce:
            if a.prepend:
                name = "PREPEND-" + a.prefix.replace(".", "-").replace("/", "-")
                lines.append(f"  network {a.prefix} route-map {name}")
            else:
                lines.append(f"  network {a.prefix}")
        for n in s.neighbors:
            lines.append(f"  neighbor {n.address} activate")
            if n.rr_client:
                lines.append(f"  neighbor {n.address} route-reflector-client")
        lines += [" exit-address-family", "!", ""]
        return "\n".join(lines)

    def vtysh(self, command: str) -> str:
        out = subprocess.run([VTYSH, "--vty_socket", str(self.vty_dir), "-d", "bgpd", "-c", command],
                             capture_output=True, text=True, timeout=10)
        return out.stdout

    def ready(self) -> bool:
        return (self.vty_dir / "bgpd.vty").exists() and "BGP" in self.vtysh("show bgp summary")

    def established(self) -> set[str]:
        try:
            data = json.loads(self.vtysh("show bgp ipv4 unicast summary json") or "{}")
        except ValueError:
            return set()
        return {a for a, p in data.get("peers", {}).items() if p.get("state") == "Established"}

    def rib(self) -> dict[str, set[str]]:
        try:
            data = json.loads(self.vtysh("show bgp ipv4 unicast json") or "{}")
        except ValueError:
            return {}
        rib = {}
        for prefix, paths in data.get("routes", {}).items():
            hops = set()
            for path in paths:
                for hop in path.get("nexthops", []):
                    if hop.get("ip"):
                        hops.add(hop["ip"])
            rib[prefix] = hops
        return rib


# ------------------------------------------------------------------------------- GoBGP


class GoBgp(Router):
    kind = "gobgp"

    def __init__(self, netns: str, workdir: Path, spec: RouterSpec, api_port: int = 50051):
        super().__init__(netns, workdir, spec)
        self.config_path = self.workdir / "gobgpd.toml"
        self.api_port = api_port  # on 127.0.0.1 inside the router's namespace

    def command(self) -> list[str]:
        return [GOBGPD, "-f", str(self.config_path), "-p", "--api-hosts", f"127.0.0.1:{self.api_port}",
                "--pprof-disable"]

    def render(self) -> str:
        s = self.spec
        lines = ["[global.config]", f"  as = {s.as_number}", f'  router-id = "{s.router_id or s.address}"',
                 f'  local-address-list = ["{s.address}"]', ""]
        for n in s.neighbors:
            lines += ["[[neighbors]]", "  [neighbors.config]", f'    neighbor-address = "{n.address}"',
                      f"    peer-as = {n.as_number}"]
            if n.password:
                lines.append(f'    auth-password = "{n.password}"')
            lines += ["  [neighbors.timers.config]", "    connect-retry = 2", "    hold-time = 30",
                      "    keepalive-interval = 10",
                      "  [neighbors.transport.config]", f'    local-address = "{s.address}"']
            if n.port != 179:
                lines.append(f"    remote-port = {n.port}")
            if n.passive:
                lines.append("    passive-mode = true")
            if n.rr_client:
                lines += ["  [neighbors.route-reflector.config]", "    route-reflector-client = true",
                          f'    route-reflector-cluster-id = "{s.cluster_id}"']
            lines += ["  [[neighbors.afi-safis]]", "    [neighbors.afi-safis.config]",
                      f'      afi-safi-name = "{_family(n.address)}-unicast"', ""]
        return "\n".join(lines)

    def gobgp(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.run(GOBGP, "-p", str(self.api_port), *args, check=check)

    def ready(self) -> bool:
        return self.gobgp("global", check=False).returncode == 0

    def after_start(self) -> None:
        for a in self.spec.announce:
            self.announce(a)

    def announce(self, a: Announce) -> None:
        """Originate a route now (the hostile peer of a test: any prefix, any next hop)."""
        args = ["global", "rib", "add", "-a", _family(a.prefix), a.prefix]
        if a.prepend:
            args += ["aspath", ",".join(str(x) for x in a.prepend)]
        if a.next_hop:
            args += ["nexthop", a.next_hop]
        self.gobgp(*args)

    def withdraw(self, prefix: str) -> None:
        self.gobgp("global", "rib", "del", "-a", _family(prefix), prefix)

    def established(self) -> set[str]:
        out = self.gobgp("neighbor", "-j", check=False).stdout
        try:
            data = json.loads(out or "[]")
        except ValueError:
            return set()
        up = set()
        for n in data or []:
            state = (n.get("state") or {})
            if state.get("session_state") in (6, "ESTABLISHED", "established"):
                up.add((n.get("conf") or {}).get("neighbor_address") or state.get("neighbor_address"))
        return up

    def timers(self, address: str) -> dict:
        """The session's timers as GoBGP negotiated them: negotiated_hold_time, keepalive_interval."""
        out = self.gobgp("neighbor", address, "-j", check=False).stdout
        try:
            return ((json.loads(out or "{}").get("timers") or {}).get("state")) or {}
        except ValueError:
            return {}

    def rib(self) -> dict[str, set[str]]:
        out = self.gobgp("global", "rib", "-a", "ipv4", "-j", check=False).stdout
        try:
            data = json.loads(out or "{}")
        except ValueError:
            return {}
        rib = {}
        for prefix, paths in (data or {}).items():
            hops = set()
            for path in paths:
                for attr in path.get("attrs", []):
                    if attr.get("type") == 3 and attr.get("nexthop"):
                        hops.add(attr["nexthop"])
            rib[prefix] = hops
        return rib


ROUTERS = {"bird": Bird, "frr": Frr, "gobgp": GoBgp}


def host_ip(address: str) -> str:
    return str(ipaddress.ip_interface(address).ip)


# ------------------------------------------------------------------------------- shared set-ups


@contextmanager
def module_cluster(workdir: Path, **kwargs):
    """A real etcd and a Cluster for a whole test module (set-ups are too slow to repeat
    per test); everything is removed at the end, also on failure."""
    from tests.support.cluster import Cluster
    from tests.support.etcd import ETCD, EtcdServer

    if os.geteuid() != 0:
        pytest.fail("missing test dependency: root (network namespaces)", pytrace=False)
    for binary in (ETCD, BIRD, FRR_BGPD, GOBGPD):
        if not os.access(binary, os.X_OK):
            pytest.fail(f"missing test dependency: {binary} (run scripts/setup.sh)", pytrace=False)
    etcd = EtcdServer(Path(workdir) / "etcd")
    etcd.start()
    try:
        cluster = Cluster(workdir, etcd, **kwargs)
        try:
            yield cluster
        finally:
            cluster.close()
    finally:
        etcd.stop()


def agent_log(node) -> str:
    return node.agent.log.read_text()


def _family(address_or_prefix: str) -> str:
    return "ipv6" if ":" in address_or_prefix else "ipv4"


def ping(netns_run, address: str, count: int = 1) -> bool:
    """One ping (or count) from a namespace (pod.run / Node.ns.run); True when answered."""
    return netns_run("ping", "-c", str(count), "-W", "2", address, check=False).returncode == 0
