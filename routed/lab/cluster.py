"""The lab: a routed cluster of network namespaces on one machine, and its state on disk.

Shape (defaults: 4 nodes, 2 racks, BIRD ToRs, VXLAN CrossSubnet)::

                      rl-core  (bridge, 10.10.0.0/24)
                 .1 /                         \\ .2
        rl-rack1-tor  AS 65001          rl-rack2-tor  AS 65002     BIRD | FRR | GoBGP
             .1 |                             | .1
        rl-rack1-sw   10.10.1.0/24      rl-rack2-sw   10.10.2.0/24  (bridges)
           /        \\                     /        \\
     rl-node1     rl-node2            rl-node3     rl-node4         AS 64512, agent + ExaBGP
     .11          .12                 .13          .14

Every node namespace runs what a real node runs: `routed agent` (outside the namespace,
so it reaches etcd on loopback, driving the namespace) and `routed bgp-speaker`
(ExaBGP inside it). Pods are namespaces plugged in by the real CNI plugin.

BGP design, and why:
- Nodes keep the node-to-node mesh (iBGP, AS 64512), also across racks: ExaBGP leaves
  the TTL at the kernel's 64, so the iBGP sessions of nodes in different racks simply
  ride the fabric (node -> its ToR -> core -> other ToR -> node). The mesh is what makes
  VXLAN work: a mesh route's next hop is the node that owns the block, and routed's
  VXLAN uses the next hop as the VTEP (`<block> via <node> dev vxlan.routed onlink`).
  With CrossSubnet, nodes of one rack (one subnet) get direct routes, the others VXLAN.
- Every node also peers (eBGP) with its rack's ToR, from BGPPeer resources selected by
  the node label `rack`: `rack == '1'` -> 10.10.1.1 AS 65001. The ToRs peer with each
  other over the core (eBGP) and so every ToR holds every node block: the next hop of
  a block from another rack is that rack's ToR (eBGP rewrites it), which is what a
  fabric needs but useless as a VXLAN endpoint. The ToRs export nothing to the nodes:
  every such route carries the nodes' AS 64512 and the nodes would drop it.
- With `--encap none` traffic across racks takes each node's default route to its ToR,
  which forwards by the blocks it learned (BIRD and FRR program their namespace's
  kernel; GoBGP cannot here, see routers.py, so that one combination is refused).
- The underlay (rack subnets across the core) is static routes on the ToRs.
- `--dual-stack`: every rack link, core link and node gets an IPv6 address too
  (fd10:10:<rack>::/64, the core fd10:10::/64), an IPv6 pool is added beside the IPv4
  one (the same vxlanMode; IPIP has no IPv6, so `--encap ipip` is refused), and every
  session above gets an IPv6 twin between the IPv6 addresses (separate sessions per
  family, as Calico runs them: the mesh, node-ToR and ToR-ToR). Pods get both families.

State: everything `up` creates is written to `<ROUTED_LAB_DIR>/lab.json` as it is
created (namespaces, PIDs, ports, pods), so `down` removes it all, also after a crash;
`down` also removes namespaces of the lab's shape (`rl-node3`, `rl-pod-...`) that the
state no longer lists, and processes left inside them.

Another lab can run beside the default one with its own ROUTED_LAB_DIR,
ROUTED_LAB_PREFIX (must start with `rl-`) and ROUTED_LAB_ETCD_PORT: the e2e tests do.
"""

from __future__ import annotations

import fcntl
import ipaddress
import json
import os
import pwd
import re
import shutil
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from routed.errors import RoutedError

from . import etcd, procs, routers, topology
from .ports import free_port

DEFAULT_DIR = "/var/lib/routed-lab"
DEFAULT_PREFIX = "rl-"
NODE_AS = 64512
TOR_AS_BASE = 65000
POOL_NAME = "default-ipv4-ippool"
POOL_CIDR = "10.244.0.0/16"
# Service advertisement (Calico's BGPConfiguration fields): declare a Service and its
# EndpointSlice with `routedctl apply -f` and the ToRs learn its addresses.
SERVICE_CIDRS = {"serviceClusterIPs": "10.96.0.0/16", "serviceExternalIPs": "10.97.0.0/16",
                 "serviceLoadBalancerIPs": "10.98.0.0/16"}
SERVICE_CIDRS6 = {"serviceClusterIPs": "fd00:96::/112", "serviceExternalIPs": "fd00:97::/112",
                  "serviceLoadBalancerIPs": "fd00:98::/112"}  # beside them with --dual-stack
CORE_SUBNET = "10.10.0.0/24"
POOL6_NAME = "default-ipv6-ippool"
POOL6_CIDR = "fd00:244::/48"
CORE_SUBNET6 = "fd10:10::/64"
ENCAPS = {
    "none": {"ipipMode": "Never", "vxlanMode": "Never"},
    "ipip": {"ipipMode": "Always", "vxlanMode": "Never"},
    "vxlan": {"ipipMode": "Never", "vxlanMode": "Always"},
    "crosssubnet": {"ipipMode": "Never", "vxlanMode": "CrossSubnet"},
}
MAX_NODES = 200

Report = Callable[[str], None]  # one line of progress


def _quiet(_: str) -> None:
    pass


def routed_program() -> list[str]:
    script = Path(sys.executable).with_name("routed")
    return [str(script)] if script.exists() else [sys.executable, "-m", "routed.main"]


def rack_subnet(rack: int) -> str:
    return f"10.10.{rack}.0/24"


def rack_subnet6(rack: int) -> str:
    return f"fd10:10:{rack:x}::/64"


# --------------------------------------------------------------------------- options, plan


@dataclass(frozen=True)
class Options:
    nodes: int = 4
    racks: int = 2
    encap: str = "crosssubnet"
    tor: str = "bird"
    wireguard: bool = False  # pod traffic between nodes over WireGuard (the cluster's switch)
    dual_stack: bool = False  # IPv6 too: addresses, pool, sessions, pods
    prefix: str = DEFAULT_PREFIX
    etcd_port: int = etcd.CLIENT_PORT

    def check(self) -> None:
        if not 1 <= self.nodes <= MAX_NODES:
            raise RoutedError(f"--nodes {self.nodes}: between 1 and {MAX_NODES}")
        if not 1 <= self.racks <= self.nodes:
            raise RoutedError(f"--racks {self.racks}: between 1 and the number of nodes ({self.nodes})")
        if self.racks > 200:
            raise RoutedError("--racks: at most 200")
        if self.encap not in ENCAPS:
            raise RoutedError(f"--encap {self.encap}: one of {', '.join(ENCAPS)}")
        if self.tor not in routers.KINDS:
            raise RoutedError(f"--tor {self.tor}: one of {', '.join(routers.KINDS)}")
        if not re.fullmatch(r"rl-[a-z0-9-]{0,12}", self.prefix):
            raise RoutedError(f"lab prefix {self.prefix!r}: `rl-` then up to 12 of [a-z0-9-]")
        if self.dual_stack and self.encap == "ipip":
            raise RoutedError("--dual-stack --encap ipip: IPIP carries IPv4 only (an IPv6 pool refuses ipipMode); "
                              "use --encap vxlan, crosssubnet or none")
        if self.encap == "none" and self.racks > 1 and self.tor == "gobgp":
            raise RoutedError("--encap none across racks needs ToRs that forward to the pod blocks; GoBGP "
                              "cannot program the kernel here (no FIB; its zebra client fails with FRR 8.4): "
                              "use --tor bird or --tor frr, or an encapsulation")


def plan(options: Options, directory: Path) -> dict:
    """The lab's layout: racks, ToRs, nodes, addresses, AS numbers (pure)."""
    p, n, nr = options.prefix, options.nodes, options.racks
    racks = []
    for r in range(1, nr + 1):
        net = ipaddress.ip_network(rack_subnet(r))
        racks.append({
            "index": r, "name": f"rack{r}", "tor": f"rack{r}-tor", "as": TOR_AS_BASE + r,
            "subnet": str(net), "gateway": str(net.network_address + 1),
            "core_ip": str(ipaddress.ip_network(CORE_SUBNET).network_address + r) if nr > 1 else "",
            "switch_ns": f"{p}rack{r}-sw", "tor_ns": f"{p}rack{r}-tor", "kind": options.tor,
            "dir": str(directory / "racks" / f"rack{r}"), "pids": {}})
        if options.dual_stack:
            net6, core6 = ipaddress.ip_network(rack_subnet6(r)), ipaddress.ip_network(CORE_SUBNET6)
            racks[-1].update({"subnet6": str(net6), "gateway6": str(net6.network_address + 1),
                              "core_ip6": str(core6.network_address + r) if nr > 1 else ""})
    nodes = []
    for i in range(1, n + 1):
        r = (i - 1) * nr // n + 1  # contiguous: node1, node2 in rack1; node3, node4 in rack2
        net = ipaddress.ip_network(rack_subnet(r))
        name = f"node{i}"
        d = directory / "nodes" / name
        nodes.append({
            "name": name, "rack": r, "address": f"{net.network_address + 10 + i}/{net.prefixlen}",
            "ip": str(net.network_address + 10 + i), "gateway": racks[r - 1]["gateway"], "netns": f"{p}{name}",
            "dir": str(d), "health_port": 0, "cni_socket": str(d / "cni.sock"), "spool_dir": str(d / "spool"),
            "conf_dir": str(d / "net.d"), "pids": {}})
        if options.dual_stack:
            net6 = ipaddress.ip_network(rack_subnet6(r))
            nodes[-1].update({"address6": f"{net6.network_address + 10 + i}/{net6.prefixlen}",
                              "ip6": str(net6.network_address + 10 + i), "gateway6": racks[r - 1]["gateway6"]})
    return {"racks": racks, "nodes": nodes, "core_ns": f"{p}core" if nr > 1 else ""}


def router_spec(state: dict, rack: dict) -> routers.RouterSpec:
    neighbors = [routers.Neighbor(n["ip"], NODE_AS, n["name"], "node")
                 for n in state["nodes"] if n["rack"] == rack["index"]]
    neighbors += [routers.Neighbor(o["core_ip"], o["as"], o["tor"], "tor")
                  for o in state["racks"] if o["index"] != rack["index"]]
    # Dual stack: an IPv6 session beside each IPv4 one, between the IPv6 addresses.
    neighbors += [routers.Neighbor(n["ip6"], NODE_AS, n["name"], "node")
                  for n in state["nodes"] if n["rack"] == rack["index"] and n.get("ip6")]
    neighbors += [routers.Neighbor(o["core_ip6"], o["as"], o["tor"], "tor")
                  for o in state["racks"] if o["index"] != rack["index"] and o.get("core_ip6")]
    return routers.RouterSpec(rack["tor"], rack["gateway"], rack["as"], tuple(neighbors))


def resources(options: Options, state: dict) -> list[dict]:
    """What the lab applies to etcd: the pool, the BGP configuration, one BGPPeer per rack."""
    docs = [{"apiVersion": "routed.io/v1", "kind": "IPPool", "metadata": {"name": POOL_NAME},
             "spec": {"cidr": POOL_CIDR, "blockSize": 26, **ENCAPS[options.encap], "natOutgoing": True}},
            {"apiVersion": "routed.io/v1", "kind": "BGPConfiguration", "metadata": {"name": "default"},
             "spec": {"asNumber": NODE_AS, "nodeToNodeMeshEnabled": True,
                      **{field: [{"cidr": cidr}] + ([{"cidr": SERVICE_CIDRS6[field]}] if options.dual_stack else [])
                         for field, cidr in SERVICE_CIDRS.items()},
                      **({"wireguard": "Enabled"} if options.wireguard else {})}}]
    if options.dual_stack:
        docs.append({"apiVersion": "routed.io/v1", "kind": "IPPool", "metadata": {"name": POOL6_NAME},
                     "spec": {"cidr": POOL6_CIDR, "blockSize": 122, "ipipMode": "Never",
                              "vxlanMode": ENCAPS[options.encap]["vxlanMode"]}})
    for rack in state["racks"]:
        docs.append({"apiVersion": "routed.io/v1", "kind": "BGPPeer", "metadata": {"name": rack["tor"]},
                     "spec": {"peerIP": rack["gateway"], "asNumber": rack["as"],
                              "nodeSelector": f"rack == '{rack['index']}'"}})
        if rack.get("gateway6"):
            docs.append({"apiVersion": "routed.io/v1", "kind": "BGPPeer", "metadata": {"name": f"{rack['tor']}-v6"},
                         "spec": {"peerIP": rack["gateway6"], "asNumber": rack["as"],
                                  "nodeSelector": f"rack == '{rack['index']}'"}})
    return docs


def lab_namespace_pattern(prefix: str) -> re.Pattern:
    """Names only a lab with this prefix creates (a test lab's `rl-e2e1-node1` does not
    match the default lab's `rl-` pattern, so neither removes the other's)."""
    return re.compile(rf"^{re.escape(prefix)}(core|node\d+|rack\d+-(sw|tor)|pod-.+)$")


# --------------------------------------------------------------------------- state on disk


class Lab:
    """The state directory: lab.json (under a lock for every change), logs, configs."""

    def __init__(self, directory: Path | str | None = None):
        self.dir = Path(directory or os.environ.get("ROUTED_LAB_DIR") or DEFAULT_DIR).absolute()
        self.file = self.dir / "lab.json"

    @property
    def marker(self) -> str:
        return str(self.dir) + "/"

    def exists(self) -> bool:
        return self.file.exists()

    def load(self) -> dict:
        try:
            return json.loads(self.file.read_text())
        except FileNotFoundError:
            raise RoutedError(f"no lab at {self.dir}: start one with `routed lab up`") from None
        except ValueError as err:
            raise RoutedError(f"{self.file} is damaged ({err}); `routed lab down` removes the lab") from None

    def save(self, state: dict) -> None:
        tmp = self.file.with_name(".lab.json.tmp")
        tmp.write_text(json.dumps(state, indent=2) + "\n")
        os.rename(tmp, self.file)

    @contextmanager
    def locked(self):
        """Exclusive use of the state (pod add/del from several shells at once)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / "lab.lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    @contextmanager
    def editing(self):
        """Load, let the caller change, save (also when the caller fails half way)."""
        with self.locked():
            state = self.load()
            try:
                yield state
            finally:
                self.save(state)


def options_from_env(**given) -> Options:
    env = os.environ.get
    return Options(prefix=env("ROUTED_LAB_PREFIX", DEFAULT_PREFIX),
                   etcd_port=int(env("ROUTED_LAB_ETCD_PORT", str(etcd.CLIENT_PORT))), **given)



# --------------------------------------------------------------------------- checks


def ipip_supported(prefix: str) -> bool:
    """Whether this kernel can make an IPIP device: tried in a scratch lab namespace."""
    probe = f"{prefix}probe"
    topology.ip("netns", "add", probe, check=False)
    try:
        return topology.ip("link", "add", "rlprobe0", "type", "ipip", "remote", "192.0.2.1", "local", "192.0.2.2",
                           netns=probe, check=False).returncode == 0
    finally:
        topology.ip("netns", "del", probe, check=False)


def _reachable_by(user: str, path: Path) -> bool:
    """Whether every directory above path lets others (or user) through."""
    try:
        uid = pwd.getpwnam(user).pw_uid
    except KeyError:
        return False
    for parent in [path, *path.parents]:
        if not parent.exists():
            continue
        st = parent.stat()
        if not (st.st_mode & 0o001 or (st.st_uid == uid and st.st_mode & 0o100)):
            return False
    return True


def preflight(options: Options, lab: Lab) -> None:
    missing = [b for b in ("etcd", "ip", "ping", *{"bird": ["bird", "birdc"], "frr": ["vtysh"],
                                                     "gobgp": ["gobgpd", "gobgp"]}[options.tor]) if not shutil.which(b)]
    if options.tor == "frr" and not os.access(f"{routers.FRR}/bgpd", os.X_OK):
        missing.append(f"{routers.FRR}/bgpd")
    if missing:
        raise RoutedError(f"missing {', '.join(missing)}: run `make lab` (scripts/setup.sh installs them)")
    if options.encap == "ipip" and not ipip_supported(options.prefix):
        raise RoutedError("--encap ipip: this kernel has no IPIP support (`ip link add type ipip`: Unknown "
                          "device type). Use --encap vxlan or crosssubnet (VXLAN across racks, the default); "
                          "IPIP itself is tested in a VM (tests/vm)")
    if options.tor == "frr" and not _reachable_by("frr", lab.dir):
        raise RoutedError(f"FRR's daemons run as user frr and cannot reach {lab.dir}: use a ROUTED_LAB_DIR "
                          "whose parent directories others may enter (e.g. under /var/lib or /tmp)")


# --------------------------------------------------------------------------- up


def up(lab: Lab, options: Options, report: Report = _quiet, timeout: float = 120.0) -> dict:
    """Build the lab (or bring an existing one's dead processes back); returns the state."""
    options.check()
    if lab.exists():
        state = lab.load()
        if not state.get("complete"):
            raise RoutedError(f"a lab at {lab.dir} was not finished (interrupted?): `routed lab down` first")
        have = state["options"]
        wanted = asdict(options)
        differs = [k for k in ("nodes", "racks", "encap", "tor", "dual_stack") if have.get(k, False) != wanted[k]]
        if differs:
            shape = ", ".join(f"{k}={have[k]}" for k in ("nodes", "racks", "encap", "tor"))
            raise RoutedError(f"a lab is already up at {lab.dir} ({shape}): `routed lab down` first to change "
                              f"{', '.join(differs)}")
        report(f"a lab is already up at {lab.dir}; checking its processes")
        restarted = ensure_running(lab, report)
        report(f"restarted {restarted} process(es)" if restarted else "every process is running")
        wait_sessions(lab, report, timeout)
        return lab.load()
    preflight(options, lab)
    lab.dir.mkdir(parents=True, exist_ok=True)
    state = {"version": 1, "complete": False, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
             "options": asdict(options), "prefix": options.prefix,
             "etcd": {"endpoint": etcd.endpoint(options.etcd_port), "port": options.etcd_port,
                      "peer_port": options.etcd_port + 10},
             "namespaces": [], "pods": [], "cni": {"bin_dir": str(lab.dir / "cni" / "bin")},
             **plan(options, lab.dir)}
    with lab.locked():
        lab.save(state)
    try:
        _build(lab, state, options, report)
    except (RoutedError, OSError) as err:
        raise RoutedError(f"{err}\nThe lab is half built: `routed lab down` removes what was made "
                          f"(logs in {lab.dir}).") from None
    wait_sessions(lab, report, timeout)
    return lab.load()


def _build(lab: Lab, state: dict, options: Options, report: Report) -> None:
    def save():
        with lab.locked():
            lab.save(state)

    report(f"etcd on {state['etcd']['endpoint']} (data in {lab.dir / 'etcd'})")
    pid = etcd.start(lab.dir, state["etcd"]["port"], state["etcd"]["peer_port"])
    state["etcd"]["pid"] = pid
    save()
    _apply(state, resources(options, state))

    report(f"topology: {options.racks} rack(s), {options.nodes} node(s), prefix {options.prefix}")

    def netns(name: str, forward: bool = True) -> str:
        state["namespaces"].append(name)
        save()  # recorded before it exists: down removes a half-made one too
        return topology.add_netns(name, forward=forward)

    if state["core_ns"]:
        topology.add_bridge(netns(state["core_ns"]))
    for rack in state["racks"]:
        topology.add_bridge(netns(rack["switch_ns"]))
        netns(rack["tor_ns"])
        topology.plug(rack["tor_ns"], "eth0", rack["switch_ns"], f"{rack['gateway']}/24")
        if state["core_ns"]:
            topology.plug(rack["tor_ns"], "eth1", state["core_ns"], f"{rack['core_ip']}/24")
        if rack.get("gateway6"):
            topology.add_address6(rack["tor_ns"], "eth0", f"{rack['gateway6']}/64")
            if state["core_ns"]:
                topology.add_address6(rack["tor_ns"], "eth1", f"{rack['core_ip6']}/64")
    for rack in state["racks"]:  # the underlay: other racks' subnets through their ToR
        for other in state["racks"]:
            if other is not rack:
                topology.ip("route", "replace", other["subnet"], "via", other["core_ip"], "dev", "eth1",
                            netns=rack["tor_ns"])
                if other.get("subnet6"):
                    topology.ip("-6", "route", "replace", other["subnet6"], "via", other["core_ip6"], "dev", "eth1",
                                netns=rack["tor_ns"])
    for node in state["nodes"]:
        rack = state["racks"][node["rack"] - 1]
        netns(node["netns"])
        topology.plug(node["netns"], "eth0", rack["switch_ns"], node["address"])
        topology.default_route(node["netns"], node["gateway"], "eth0")
        if node.get("address6"):
            topology.add_address6(node["netns"], "eth0", node["address6"])
            topology.ip("-6", "route", "replace", "default", "via", node["gateway6"], "dev", "eth0",
                        netns=node["netns"])

    report(f"ToR routers: {options.tor} (AS {TOR_AS_BASE}+rack), eBGP to their nodes (AS {NODE_AS})"
           + (" and to each other" if options.racks > 1 else ""))
    for rack in state["racks"]:
        _start_router(lab, state, rack)
        save()

    from cni.install import install

    for node in state["nodes"]:
        node["health_port"] = free_port()
        install(state["cni"]["bin_dir"], node["conf_dir"], socket=node["cni_socket"], spool_dir=node["spool_dir"],
                chain=False, ipv6=options.dual_stack)
    save()
    report(f"CNI: plugin in {state['cni']['bin_dir']}, one conflist per node (<node dir>/net.d)")

    report(f"nodes: starting {len(state['nodes'])} agent(s) and ExaBGP speaker(s)")
    for node in state["nodes"]:
        _start_agent(lab, node, state)
        _start_speaker(lab, node)
        save()
    _wait_ready(lab, state, report)
    state["complete"] = True
    save()


def _apply(state: dict, docs: list[dict]) -> None:
    from routed import resources as r
    from routed.datastore.etcd import EtcdKV
    from routed.datastore.resources import ResourceStore

    kv = EtcdKV([state["etcd"]["endpoint"]])
    try:
        store = ResourceStore(kv)
        for doc in docs:
            store.apply(r.parse(doc))
    finally:
        kv.close()


def _start_router(lab: Lab, state: dict, rack: dict) -> None:
    directory = Path(rack["dir"])
    directory.mkdir(parents=True, exist_ok=True)
    spec = router_spec(state, rack)
    for name, text in routers.config_files(rack["kind"], spec).items():
        (directory / name).write_text(text)
    if rack["kind"] == "frr":
        for path in [directory, *directory.iterdir()]:
            shutil.chown(path, "frr", "frr")
    for name, argv in routers.commands(rack["kind"], spec, directory, rack["tor_ns"]):
        if procs.alive(rack["pids"].get(name), lab.marker):
            continue
        rack["pids"][name] = procs.spawn(argv, directory / f"{name}.log")
        if name == "zebra":  # bgpd connects to zebra's socket at start
            _wait_for(lambda: (directory / "zserv.api").exists(), 10, f"{rack['tor']}: zebra's socket",
                      directory / "zebra.log")
    ready = routers.ready_file(rack["kind"], directory)
    if ready is not None:
        _wait_for(ready.exists, 10, f"{rack['tor']} ({rack['kind']}) to start", directory / f"{rack['kind']}.log")


def _wait_for(predicate, timeout: float, what: str, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            tail = f"\n{log}:\n{log.read_text()[-1500:]}" if log and log.exists() else ""
            raise RoutedError(f"timed out waiting for {what}{tail}")
        time.sleep(0.1)


def agent_argv(state: dict, node: dict) -> list[str]:
    d = node["dir"]
    return [*routed_program(), "agent", "--node-name", node["name"], "--node-ip", node["address"],
            "--node-labels", f"rack={node['rack']}", "--netns", node["netns"], "--bgp",
            "--bgp-dir", f"{d}/bgp", "--bgp-socket", f"{d}/bgp.sock", "--cni-socket", node["cni_socket"],
            "--spool-dir", node["spool_dir"], "--state-dir", f"{d}/state", "--secrets-dir", f"{d}/secrets",
            "--health-port", str(node["health_port"]), "--etcd-endpoints", state["etcd"]["endpoint"],
            "--log-level", "info", *(["--node-ip6", node["address6"]] if node.get("address6") else [])]


def _start_agent(lab: Lab, node: dict, state: dict | None = None) -> None:
    state = state or lab.load()
    Path(node["dir"]).mkdir(parents=True, exist_ok=True)
    if not procs.alive(node["pids"].get("agent"), lab.marker):
        node["pids"]["agent"] = procs.spawn(agent_argv(state, node), Path(node["dir"]) / "agent.log")


def _start_speaker(lab: Lab, node: dict) -> None:
    if not procs.alive(node["pids"].get("speaker"), lab.marker):
        argv = [*routed_program(), "bgp-speaker", "--config-dir", f"{node['dir']}/bgp", "--netns", node["netns"]]
        node["pids"]["speaker"] = procs.spawn(argv, Path(node["dir"]) / "speaker.log")


def agent_get(node: dict, path: str, timeout: float = 2.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{node['health_port']}{path}", timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode(errors="replace")
    except OSError as err:
        return 0, str(getattr(err, "reason", err))


def _wait_ready(lab: Lab, state: dict, report: Report, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    waiting = list(state["nodes"])
    while waiting:
        for node in list(waiting):
            if not procs.alive(node["pids"].get("agent"), lab.marker):
                log = Path(node["dir"]) / "agent.log"
                raise RoutedError(f"the agent of {node['name']} exited:\n{log.read_text()[-2000:]}")
            if agent_get(node, "/readyz")[0] == 200:
                waiting.remove(node)
        if not waiting:
            break
        if time.monotonic() > deadline:
            raise RoutedError(f"agents not ready after {timeout:.0f}s: {', '.join(n['name'] for n in waiting)} "
                              f"(see {waiting[0]['dir']}/agent.log)")
        time.sleep(0.2)
    report(f"agents ready: {len(state['nodes'])}")


def ensure_running(lab: Lab, report: Report = _quiet) -> int:
    """Start again whatever recorded process died; returns how many were started."""
    started = 0
    with lab.editing() as state:
        if not etcd.running_pid(lab.dir):
            report("etcd is not running: starting it")
            state["etcd"]["pid"] = etcd.start(lab.dir, state["etcd"]["port"], state["etcd"]["peer_port"])
            started += 1
        missing = [n for n in state["namespaces"] if not os.path.exists(f"{topology.NETNS_DIR}/{n}")]
        if missing:
            raise RoutedError(f"namespaces of the lab are gone ({', '.join(missing[:4])}...): "
                              "`routed lab down`, then `routed lab up`")
        for rack in state["racks"]:
            dead = [k for k, pid in rack["pids"].items() if not procs.alive(pid, lab.marker)]
            if dead:
                report(f"{rack['tor']}: {', '.join(dead)} not running: starting")
                if rack["kind"] == "frr":  # bgpd needs a fresh zebra, and zebra's routes need bgpd
                    procs.terminate([p for p in rack["pids"].values() if procs.alive(p, lab.marker)])
                    rack["pids"] = {}
                _start_router(lab, state, rack)
                started += len(dead)
        for node in state["nodes"]:
            if not procs.alive(node["pids"].get("agent"), lab.marker):
                report(f"{node['name']}: agent not running: starting")
                _start_agent(lab, node, state)
                started += 1
            if not procs.alive(node["pids"].get("speaker"), lab.marker):
                # A speaker killed with SIGKILL leaves its ExaBGP running (own session), holding
                # port 179: a new speaker's ExaBGP could not bind and would restart forever.
                # Everything in a node's namespace is ExaBGP or its helper.
                orphans = procs.in_netns(node["netns"])
                report(f"{node['name']}: speaker not running: starting"
                       + (f" (after stopping {len(orphans)} leftover ExaBGP process(es))" if orphans else ""))
                procs.terminate(orphans)
                _start_speaker(lab, node)
                started += 1
    if started:
        _wait_ready(lab, lab.load(), report)
    return started


# --------------------------------------------------------------------------- sessions


def node_sessions(node: dict) -> list[dict] | None:
    code, body = agent_get(node, "/bgp/peers")
    if code != 200:
        return None
    try:
        return json.loads(body)
    except ValueError:
        return None


def node_wireguard(node: dict) -> dict | None:
    """The agent's /wireguard document (its device and peers), None when it does not answer."""
    code, body = agent_get(node, "/wireguard")
    try:
        return json.loads(body) if code == 200 else None
    except ValueError:
        return None


def router_sessions(state: dict, rack: dict) -> list[dict]:
    return routers.sessions(rack["kind"], router_spec(state, rack), Path(rack["dir"]), rack["tor_ns"])


def expected_sessions(state: dict) -> int:
    """Both ends of every session, as `routed lab status` lists them: each node has n-1
    mesh peers and its ToR; each ToR has its nodes and the other ToRs."""
    n, nr = len(state["nodes"]), len(state["racks"])
    families = 2 if state["options"].get("dual_stack") else 1  # an IPv6 twin of each session
    return (n * n + n + nr * (nr - 1)) * families


def session_counts(state: dict) -> tuple[int, int, list[str]]:
    """(up, expected, what is not up yet)."""
    up, pending = 0, []
    for node in state["nodes"]:
        peers = node_sessions(node)
        if peers is None:
            pending.append(f"{node['name']}: agent not answering")
            continue
        for p in peers:
            if p.get("state") == "up":
                up += 1
            else:
                pending.append(f"{node['name']} -> {p['name']} ({p['address']}): {p.get('state')} {p.get('info', '')}"
                               .rstrip())
        if len(peers) < len(state["nodes"]) * (2 if node.get("ip6") else 1):
            pending.append(f"{node['name']}: {len(peers)} peer(s) configured so far")
    for rack in state["racks"]:
        for s in router_sessions(state, rack):
            if s["state"] == "up":
                up += 1
            else:
                pending.append(f"{rack['tor']} -> {s['name']} ({s['peer']}): {s['state']}")
    return up, expected_sessions(state), pending


def wait_sessions(lab: Lab, report: Report = _quiet, timeout: float = 120.0) -> None:
    state = lab.load()
    start = time.monotonic()
    last = None
    while True:
        up, expected, pending = session_counts(state)
        line = f"BGP sessions up: {up}/{expected} ({time.monotonic() - start:.0f}s)"
        if line != last:
            report(line)
            last = line
        if up >= expected and not pending:
            return
        if time.monotonic() - start > timeout:
            raise RoutedError(f"BGP sessions not up after {timeout:.0f}s:\n  " + "\n  ".join(pending[:20])
                              + f"\nlogs: {lab.dir}/nodes/*/bgp/exabgp.log, {lab.dir}/racks/*/")
        time.sleep(0.5)


# --------------------------------------------------------------------------- down


def _recorded_pids(state: dict) -> list[int]:
    pids = []
    for node in state.get("nodes", []):
        pids += [node["pids"].get("speaker"), node["pids"].get("agent")]
    for rack in state.get("racks", []):
        pids += list(rack.get("pids", {}).values())
    return [p for p in pids if p]


def down(lab: Lab, report: Report = _quiet) -> dict:
    """Remove every namespace, process and file of the lab; returns what was removed."""
    state: dict = {}
    if lab.exists():
        try:
            state = lab.load()
        except RoutedError as err:
            report(f"{err}; removing what can be found")
    prefix = state.get("prefix") or os.environ.get("ROUTED_LAB_PREFIX", DEFAULT_PREFIX)
    removed = {"processes": 0, "namespaces": 0}
    # 1. the processes we recorded (checked by their command line), and theirs
    tree = procs.children()
    mine = [p for p in _recorded_pids(state) if procs.alive(p, lab.marker)]
    family = mine + [d for p in mine for d in procs.descendants(p, tree)]
    removed["processes"] += len(procs.terminate(family, timeout=15))
    # 2. whatever is left inside the lab's namespaces, or names the state dir (orphans)
    pattern = lab_namespace_pattern(prefix)
    spaces = list(dict.fromkeys([*state.get("namespaces", []), *(p["netns"] for p in state.get("pods", [])),
                                 *(n for n in topology.list_netns(prefix) if pattern.match(n))]))
    left = [p for n in spaces if os.path.exists(f"{topology.NETNS_DIR}/{n}") for p in procs.in_netns(n)]
    left += procs.with_path(str(lab.dir)) if lab.dir.exists() else []
    removed["processes"] += len(procs.terminate(left, timeout=10))
    etcd.stop(lab.dir)
    # 3. namespaces: pods first (their veths end in the nodes), then the rest
    for name in sorted(spaces, key=lambda n: (not n.startswith(f"{prefix}pod-"), n)):
        if os.path.exists(f"{topology.NETNS_DIR}/{name}"):
            topology.del_netns(name)
            removed["namespaces"] += 1
    # 4. files: FRR's per-process crash-log directories, then the state directory
    for rack in state.get("racks", []):
        if rack.get("kind") == "frr":
            for name, pid in rack.get("pids", {}).items():
                shutil.rmtree(f"/var/tmp/frr/{name}.{pid}", ignore_errors=True)
    shutil.rmtree(lab.dir, ignore_errors=True)
    report(f"removed {removed['namespaces']} namespace(s) and {removed['processes']} process(es); "
           f"{lab.dir} deleted")
    return removed


__all__ = ["Lab", "Options", "up", "down", "plan", "resources", "router_spec", "wait_sessions",
           "ensure_running", "node_sessions", "router_sessions", "agent_get", "options_from_env",
           "lab_namespace_pattern"]
