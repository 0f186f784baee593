"""`routed lab up | down | status | pod add | pod del | routes`: commands call the lab
modules (which return data) and return it with how to show it; routed.render prints it."""

from __future__ import annotations

import os
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from routed.errors import RoutedError
from routed.render import Output, Section, Table

from . import cluster, kubecluster, kubeplane, picture, pods, status
from .cluster import Lab
from .kubecluster import KubeCluster


class Progress:
    """Progress on stderr: a rewritten line on a terminal, a line now and then otherwise."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self._live = False
        self._last = 0.0
        self._lock = threading.Lock()
        self._start = time.monotonic()

    def _stamp(self) -> str:
        return f"lab {time.monotonic() - self._start:5.1f}s"

    def line(self, text: str) -> None:
        with self._lock:
            if self._live:
                self.stream.write("\n")
                self._live = False
            self.stream.write(f"{self._stamp()}  {text}\n")
            self.stream.flush()

    def live(self, text: str, force: bool = False) -> None:
        with self._lock:
            now = time.monotonic()
            if self.tty:
                self.stream.write(f"\r\033[K{self._stamp()}  {text}")
                self._live = True
            elif force or now - self._last >= 2.0:
                self.stream.write(f"{self._stamp()}  {text}\n")
                self._last = now
            self.stream.flush()

    def done(self) -> None:
        with self._lock:
            if self._live:
                self.stream.write("\n")
                self._live = False
            self.stream.flush()

    def reach(self, checked: int, total: int, failing: int) -> None:
        self.live(f"reachability: {checked}/{total} pairs tried, {failing} not answering yet",
                  force=checked == total)


# --------------------------------------------------------------------------- how to show it


def status_sections(data: dict) -> list[Section]:
    lab = data["lab"]
    o = lab["options"]
    sessions = data["sessions"]
    up = sum(s["state"] == "up" for s in sessions)
    sections = [
        Section(f"routed lab at {lab['dir']}: {o['nodes']} node(s), {o['racks']} rack(s), encap {o['encap']}"
                f"{' + WireGuard' if o.get('wireguard') else ''}{', dual stack' if o.get('dual_stack') else ''}, "
                f"ToRs {o['tor']}, etcd {lab['etcd']}"),
        Section("NODES", Table(
            ["NAME", "RACK", "ADDRESS", "NETNS", "AGENT", "EXABGP", "HEALTH"],
            [[n["name"], n["rack"], " ".join(filter(None, (n["address"], n.get("address6")))), n["netns"],
              n["agent"], n["speaker"],
              f"127.0.0.1:{n['healthPort']}"] for n in data["nodes"]])),
        Section("TOP-OF-RACK ROUTERS", Table(
            ["NAME", "DAEMON", "AS", "ADDRESS", "CORE", "RUNNING", "POD ROUTES"],
            [[r["name"], r["kind"], r["as"], r["address"], r["coreAddress"] or "-",
              "yes" if r["running"] else "NO", r["podRoutes"]] for r in data["routers"]])),
        Section(f"BGP SESSIONS ({up}/{len(sessions)} up)", Table(
            ["SPEAKER", "PEER", "NAME", "TYPE", "STATE", "ACCEPTED", "INFO"],
            [[s["speaker"], s["peer"], s["name"], s["type"], s["state"],
              "" if s["accepted"] is None else s["accepted"], s["info"]] for s in sessions])),
        Section("BLOCKS", Table(
            ["CIDR", "NODE", "IN USE", "FREE"],
            [[b["cidr"], b["node"] or "(none)", b["inUse"], b["free"]] for b in data["blocks"]])),
        Section("PODS", Table(
            ["#", "NODE", "POD", "NAMESPACE", "IP", "NETNS"],
            [[i, p["node"], p["name"], p["namespace"], " ".join(filter(None, (p["ip"], p.get("ip6")))) or "-",
              p["netns"] if p["present"] else "(missing)"] for i, p in enumerate(data["pods"], 1)])),
    ]
    service_rows = [[r["name"], prefix, ", ".join(hops)] for r in data["routers"]
                    for prefix, hops in r.get("serviceRoutes", {}).items()]
    if service_rows:
        sections.insert(3, Section("SERVICE ROUTES AT THE TORS (ECMP next hops)",
                                   Table(["TOR", "PREFIX", "NEXT HOPS"], service_rows)))
    if "wireguard" in data:
        sections.insert(4, Section("WIREGUARD PEERS", Table(
            ["NODE", "PEER", "ENDPOINT", "STATE", "RX BYTES", "TX BYTES"],
            [[w["node"], w["peer"] or "-", w["endpoint"] or "-", w["state"], w["rx"], w["tx"]]
             for w in data["wireguard"]])))
    if "reachability" in data:
        sections.append(matrix_section(data["reachability"]))
    if "reachability6" in data:
        sections.append(matrix_section(data["reachability6"], "IPv6 REACHABILITY"))
    return sections


def all_reachable(reach: dict | None) -> bool:
    return reach is None or reach["failed"] + reach["untested"] == 0


def matrix_section(reach: dict, title: str = "REACHABILITY") -> Section:
    labels = reach["pods"]
    if len(labels) < 2:
        return Section(title, text="  (fewer than two pods: `routed lab pod add NODE NAME`)")
    blocked = reach.get("blocked", 0)
    total = reach["ok"] + reach["failed"] + blocked + reach["untested"]
    verdict = "ALL REACHABLE" if reach["ok"] == total else \
        "ALL REACHABLE THAT POLICY ALLOWS" if reach["ok"] + blocked == total else \
        f"{reach['failed']} FAILING" + (f", {reach['untested']} not tried" if reach["untested"] else "")
    policy = f", {blocked} blocked by policy (pol)" if blocked else ""
    head = f"{title}: {reach['ok']}/{total} pod pairs answer ping{policy} ({verdict}; {reach['seconds']}s)"
    cell = {True: "ok", False: "NO", None: "?", "policy": "pol"}
    width = max(len(str(len(labels))), 2)
    rows = []
    for i, src in enumerate(labels, 1):
        marks = ["-" if src == dst else cell[reach["matrix"][src][dst]] for dst in labels]
        rows.append([str(i), src, *[m.rjust(width) for m in marks]])
    return Section(head, Table(["#", "FROM \\ TO", *[str(i).rjust(width) for i in range(1, len(labels) + 1)]],
                               rows))


def annotate_routes(text: str) -> str:
    out = []
    for line in text.splitlines():
        note = ""
        if line.startswith("blackhole"):
            note = "<- blackhole: a block this node owns"
        elif "dev vxlan.routed" in line:
            note = "<- VXLAN: block of a node in another rack (next hop = that node)"
        elif "dev tunl0" in line:
            note = "<- IPIP"
        elif "proto 202" in line:
            note = "<- direct: block of a node in this rack (learned over BGP)"
        elif " dev cali" in line:
            note = "<- a local pod"
        elif line.startswith("default"):
            note = "<- the rack's ToR"
        out.append(f"  {line:<62} {note}".rstrip())
    return "\n".join(out)


def route_sections(state: dict, names: list[str]) -> tuple[dict, list[Section]]:
    """Each node's route table (as data) and its annotated sections."""
    tables, sections = {}, []
    for name in names:
        node = next((n for n in state["nodes"] if n["name"] == name), None)
        if node is None:
            raise RoutedError(f"the lab has no node {name!r} (nodes: {', '.join(n['name'] for n in state['nodes'])})")
        tables[name] = text = status.node_routes(state, name)
        sections.append(Section(f"$ ip -n {node['netns']} route      # {name}, rack {node['rack']}, "
                                f"{node['address']}", text=annotate_routes(text)))
    return tables, sections


def showcase_nodes(state: dict) -> list[str]:
    """Two nodes whose tables show a direct route and a VXLAN one: the first node and the
    first of another rack (or simply the first two)."""
    nodes = state["nodes"]
    if not nodes:
        return []
    other = next((n for n in nodes if n["rack"] != nodes[0]["rack"]), nodes[1] if len(nodes) > 1 else None)
    return [nodes[0]["name"]] + ([other["name"]] if other else [])


# --------------------------------------------------------------------------- commands


def _lab() -> Lab:
    return Lab()


def _kube(lab: Lab, nodes: int = 2) -> KubeCluster:
    """The Kubernetes lab lives beside the plain one: <lab dir>/kubernetes, <prefix>k-*."""
    return KubeCluster(lab.dir / "kubernetes", prefix=f"{cluster.options_from_env().prefix}k-", nodes=nodes)


def kube_up(args) -> int:
    progress = Progress()
    kube = _kube(_lab(), args.nodes or 2)
    started = time.monotonic()
    progress.line("images: scripts/build-image.sh (builds what changed)")
    images = kubecluster.image_archives()
    kube.up(images, progress.line)
    progress.line(f"routed: helm install --wait {images['routed'].ref} into kube-system")
    # A lab's GC acts within seconds (a cluster's default grace is 5 minutes).
    values = kubecluster.chart_values(kube, controller={"replicas": 1, "extraArgs": ["--grace=2", "--interval=2"]},
                                      metrics={"enabled": True})
    kubecluster.install_routed(kube, values)  # Helm waited: the DaemonSet and the controller are Ready
    progress.line(f"Kubernetes lab up in {time.monotonic() - started:.0f}s")
    print(kube.kubectl("get", "nodes", "-o", "wide").stdout.rstrip())
    print()
    print(kube.kubectl("get", "pods", "-A", "-o", "wide").stdout.rstrip())
    kubectl = kubeplane.binary("kubectl")
    print(f"""
Kubernetes {kube.state['release']} with routed installed by Helm (release {kubecluster.RELEASE!r}, kube-system).
Use kubectl against it:
  export KUBECONFIG={kube.kubeconfig}
  {kubectl} get nodes -o wide
  {kubectl} create deployment web --image={images['testpod'].ref} --replicas=4 -- sleep 3600
  {kubectl} get pods -o wide        # routed addresses; kubectl exec POD -- ping ADDRESS
No registry is reached: the images are imported into every node ({images['testpod'].ref} for pods).
routed's etcd: ROUTED_ETCD_ENDPOINTS={kube.etcd_host_url} .venv/bin/routedctl ipam show --show-blocks
Tear it down with: make lab-down   (or: .venv/bin/routed lab down)""")
    return 0


def up(args) -> Output | int:
    if args.kubernetes:
        return kube_up(args)
    progress = Progress()
    lab = _lab()
    options = cluster.options_from_env(nodes=args.nodes or 4, racks=args.racks, encap=args.encap, tor=args.tor,
                                         wireguard=args.wireguard, dual_stack=args.dual_stack)
    started = time.monotonic()
    state = cluster.up(lab, options, progress.line, timeout=args.timeout)
    progress.line(f"lab up in {time.monotonic() - started:.0f}s")
    if args.pods:
        wanted = [(n["name"], f"p{i}") for n in state["nodes"] for i in range(1, args.pods + 1)]
        have = {(p["node"], p["name"]) for p in state["pods"]}
        missing = [w for w in wanted if w not in have]
        if missing:
            progress.line(f"pods: adding {len(missing)} ({args.pods} per node) through the CNI plugin")
            errors = []

            def add(item):
                try:
                    pods.add(lab, item[0], item[1])
                except RoutedError as err:
                    errors.append(str(err))

            with ThreadPoolExecutor(max_workers=4) as pool:
                list(pool.map(add, missing))
            if errors:
                raise RoutedError("; ".join(errors))
    state = lab.load()
    reach_timeout = args.timeout if state["pods"] else 0
    data = status.collect(lab, reach=len(state["pods"]) > 1 and not args.no_ping,
                          timeout=min(60.0, reach_timeout), progress=progress.reach)
    progress.done()
    sections = status_sections(data)
    if state["pods"]:
        sections += route_sections(state, showcase_nodes(state))[1]
    sections.append(Section("", text="\n".join([
        f"The lab stays up (state in {lab.dir}). Try: routed lab status | routed lab pod add node1 web",
        f"  ROUTED_ETCD_ENDPOINTS={state['etcd']['endpoint']} .venv/bin/routedctl ipam show --show-blocks",
        "Tear it down with: make lab-down   (or: .venv/bin/routed lab down)"])))
    reachable = all_reachable(data.get("reachability")) and all_reachable(data.get("reachability6"))
    return Output(data=data, sections=sections, exit_code=0 if reachable else 1)


def down(args) -> int:
    progress = Progress()
    lab = _lab()
    kube = _kube(lab)
    if kube.state_file.exists():
        kube.down(progress.line)
    cluster.down(lab, progress.line)
    return 0


def show_status(args) -> Output:
    if args.html and not Path(args.html).parent.is_dir():  # said before the matrix takes its seconds
        raise RoutedError(f"--html {args.html}: no directory {str(Path(args.html).parent)!r} to write it in")
    progress = Progress()
    data = status.collect(_lab(), reach=not args.no_ping, timeout=args.timeout,
                          progress=None if args.output == "json" else progress.reach)
    progress.done()
    out = Output(data=data, sections=status_sections(data))
    if args.html:
        write_atomically(args.html, picture.page(data))
        out.messages.append(f"the lab drawn in {args.html} (open it in a browser; it fetches nothing)")
    return out


def write_atomically(path: str, text: str) -> None:
    """A reader (a browser reloading the page) sees the old file or the new one, never half of one."""
    target = Path(path)
    tmp = None
    try:
        with tempfile.NamedTemporaryFile("w", encoding="utf-8", dir=target.parent, prefix=f".{target.name}.",
                                         delete=False) as f:
            tmp = f.name
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except OSError as err:
        if tmp:
            Path(tmp).unlink(missing_ok=True)
        raise RoutedError(f"--html {path}: {err.strerror or err}") from None


def pod_add(args) -> Output:
    pod = pods.add(_lab(), args.node, args.name, args.namespace, _labels(args.labels))
    return Output(messages=[f"pod {pod['namespace']}/{pod['name']} on {pod['node']}: {pod['ip']} "
                                      f"(netns {pod['netns']})"])


def _labels(text: str) -> dict[str, str]:
    labels = {}
    for part in filter(None, (text or "").split(",")):
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise RoutedError(f"--labels: {part!r} is not KEY=VALUE")
        labels[key.strip()] = value.strip()
    return labels


def pod_del(args) -> Output:
    pod = pods.delete(_lab(), args.node, args.name)
    return Output(messages=[f"pod {pod['namespace']}/{pod['name']} on {pod['node']} deleted "
                                      f"({pod['ip']} released)"])


def routes(args) -> Output:
    state = _lab().load()
    tables, sections = route_sections(state, args.nodes or showcase_nodes(state))
    return Output(data=tables, sections=sections)


def register(sub) -> None:
    lab = sub.add_parser("lab", help="a routed cluster on this machine, in network namespaces")
    verbs = lab.add_subparsers(dest="verb", required=True, metavar="VERB")
    p = verbs.add_parser("up", help="start the lab (or what died of it), wait for every BGP session")
    p.add_argument("--nodes", type=int, default=None, help="nodes (default 4; 2 with --kubernetes)")
    p.add_argument("--kubernetes", action="store_true",
                   help="instead: a Kubernetes cluster of real kubelets (netns + containerd) with routed "
                        "installed by Helm; prints how to use kubectl")
    p.add_argument("--racks", type=int, default=2)
    p.add_argument("--encap", choices=sorted(cluster.ENCAPS), default="crosssubnet",
                   help="pool mode: crosssubnet = VXLAN across racks only (default); ipip needs a kernel with it")
    p.add_argument("--tor", choices=["bird", "frr", "gobgp"], default="bird", help="top-of-rack router daemon")
    p.add_argument("--wireguard", action="store_true", help="pod traffic between nodes over WireGuard")
    p.add_argument("--dual-stack", action="store_true",
                   help="IPv6 too: node and rack addresses, an IPv6 pool, IPv6 BGP sessions, dual-stack pods")
    p.add_argument("--pods", type=int, default=0, help="pods per node to add (p1..pK), then show reachability")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for BGP sessions")
    p.add_argument("--no-ping", action="store_true",
                   help="skip the every-pod-to-every-pod matrix (200 pods make 39,800 pairs)")
    p.set_defaults(func=up)
    verbs.add_parser("down", help="remove everything the lab created (also after a crash)").set_defaults(func=down)
    p = verbs.add_parser("status", help="nodes, BGP sessions, blocks, pods and a reachability matrix")
    p.add_argument("-o", "--output", choices=["table", "json"], default="table")
    p.add_argument("--no-ping", action="store_true", help="skip the reachability matrix")
    p.add_argument("--timeout", type=float, default=15.0, help="seconds the reachability matrix may take")
    p.add_argument("--html", metavar="FILE", help="also draw the lab (racks, sessions, matrix) into FILE, "
                   "one self-contained HTML page")
    p.set_defaults(func=show_status)
    pod = verbs.add_parser("pod", help="add or delete a pod (CNI ADD/DEL exactly as kubelet)")
    pverbs = pod.add_subparsers(dest="pod_verb", required=True, metavar="VERB")
    p = pverbs.add_parser("add", help="create a pod namespace on NODE and run CNI ADD")
    p.add_argument("node")
    p.add_argument("name")
    p.add_argument("--namespace", default="default", help="the pod's Kubernetes namespace")
    p.add_argument("--labels", default="", help="the pod's labels for network policy: k=v,k2=v2")
    p.set_defaults(func=pod_add)
    p = pverbs.add_parser("del", help="run CNI DEL and remove the pod's namespace")
    p.add_argument("node")
    p.add_argument("name")
    p.set_defaults(func=pod_del)
    p = verbs.add_parser("routes", help="the route tables of nodes, annotated")
    p.add_argument("nodes", nargs="*")
    p.set_defaults(func=routes)
