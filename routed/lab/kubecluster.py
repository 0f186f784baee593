"""A kind-like Kubernetes cluster without Docker: network namespaces on one machine.

    <prefix>sw   a bridge (10.77.0.0/24) joining everything below
    <prefix>cp   the control plane at 10.77.0.1: etcd for the API server, kube-apiserver,
                 kube-scheduler, kube-controller-manager, and an etcd for routed
    <prefix>nN   a node at 10.77.0.1N: containerd and kubelet, in a mount namespace of
                 its own where /etc/cni/net.d, /opt/cni/bin, /var/lib/routed, /var/run/routed
                 are the node's directories (the chart's hostPaths must differ per node)

The machine's own network is never touched: the host reaches the API server and routed's
etcd through socat bridges over unix sockets (127.0.0.1:PORT on the host, TCP in the
control-plane namespace). Inside each node, iptables (in the node's namespace only)
sends the `kubernetes` Service address 10.96.0.1:443 to the API server, as kube-proxy
would: pods reach the API with their in-cluster configuration.

Everything is recorded in <dir>/kube.json (PIDs checked against their command line before
a signal, as the lab's processes are), and `down()` removes it all, also after a crash.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from routed.errors import RoutedError

from . import kubeplane, procs, topology
from .cluster import _wait_for  # the lab's one wait: a predicate, a timeout, a log to show
from .ports import free_port

Report = Callable[[str], None]

SUBNET = "10.77.0.0/24"
API_PORT = 6443
ETCD_PORT = 2379
API_VIP = "10.96.0.1"
CNI_PLUGINS = ("loopback", "portmap", "bandwidth")  # containerd needs loopback; the chart chains the others
DEBIAN_CNI = Path("/usr/lib/cni")
# The node paths the chart's DaemonSet mounts from the host, private to each node.
# /var/run/netns too: containerd creates a file there for every pod sandbox, and on the
# host's filesystem those files outlived the node (empty, "invalid" to `ip netns`).
NODE_PATHS = ("/etc/cni/net.d", "/opt/cni/bin", "/var/lib/routed", "/var/run/routed", "/var/run/netns")


def _quiet(_: str) -> None:
    pass


def cp_ip() -> str:
    return str(ipaddress.ip_network(SUBNET).network_address + 1)


def node_ip(index: int) -> str:
    return str(ipaddress.ip_network(SUBNET).network_address + 10 + index)


def plan(directory: Path, prefix: str, nodes: int) -> dict:
    d = Path(directory)
    return {
        "dir": str(d), "prefix": prefix, "release": kubeplane.release(),
        "switch": f"{prefix}sw", "cp": {"netns": f"{prefix}cp", "ip": cp_ip()},
        "api": {"host_port": free_port(), "url": f"https://{cp_ip()}:{API_PORT}"},
        "etcd": {"host_port": free_port(), "url": f"http://{cp_ip()}:{ETCD_PORT}"},
        "kubeconfig": str(d / "admin.kubeconfig"),
        "nodes": [{"name": f"node{i}", "netns": f"{prefix}n{i}", "ip": node_ip(i), "dir": str(d / "nodes" / f"node{i}")}
                  for i in range(1, nodes + 1)],
        "pids": {},
    }


class KubeCluster:
    def __init__(self, directory: Path | str, prefix: str = "rk-", nodes: int = 2):
        self.dir = Path(directory).resolve()
        self.state_file = self.dir / "kube.json"
        self.prefix, self.node_count = prefix, nodes
        self.state: dict = {}

    # -- state ------------------------------------------------------------------------------

    def load(self) -> dict:
        self.state = json.loads(self.state_file.read_text())
        return self.state

    def save(self) -> None:
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.state, indent=2) + "\n")
        tmp.replace(self.state_file)

    def _record(self, key: str, pid: int) -> int:
        self.state["pids"][key] = pid
        self.save()
        return pid

    @property
    def kubeconfig(self) -> str:
        return self.state["kubeconfig"]

    @property
    def etcd_host_url(self) -> str:
        """routed's etcd, as the host reaches it."""
        return f"http://127.0.0.1:{self.state['etcd']['host_port']}"

    @property
    def etcd_cluster_url(self) -> str:
        """routed's etcd, as nodes and pods reach it (the chart's etcd.endpoints)."""
        return self.state["etcd"]["url"]

    def nodes(self) -> list[dict]:
        return self.state["nodes"]

    # -- up ---------------------------------------------------------------------------------

    def up(self, images: dict[str, Image], report: Report = _quiet) -> dict:
        """The whole cluster, its Nodes registered. images: the image lane's archives
        (image_archives()); each node's containerd imports them all and runs pods on
        images["pause"] (no registry is reached)."""
        for tool in ("ip", "iptables", "socat", "containerd", "ctr", "runc", "openssl", "etcd"):
            if not shutil.which(tool):
                raise RoutedError(f"{tool} not found: run scripts/setup.sh")
        bins = kubeplane.bin_dir()
        for name in ("kube-apiserver", "kube-scheduler", "kube-controller-manager", "kubelet", "kubectl",
                     "crictl"):
            kubeplane.binary(name, bins)
        if self.state_file.exists():
            raise RoutedError(f"a Kubernetes lab already exists in {self.dir}: `down` it first")
        self.dir.mkdir(parents=True, exist_ok=True)
        self.state = plan(self.dir, self.prefix, self.node_count)
        self.state["images"] = {name: image.ref for name, image in images.items()}
        self.save()
        try:
            self._network(report)
            self._control_plane(report, bins)
            for node in self.nodes():
                self._node(node, report, bins, [i.archive for i in images.values()])
            self.wait_nodes_ready(report)
        except BaseException:
            report("failed: removing what was started")
            self.down()
            raise
        return self.state

    def _network(self, report: Report) -> None:
        s = self.state
        report(f"network: bridge in {s['switch']}, control plane {s['cp']['netns']} at {cp_ip()}, "
               f"nodes {', '.join(n['netns'] for n in self.nodes())}")
        prefixlen = ipaddress.ip_network(SUBNET).prefixlen
        topology.add_netns(s["switch"], forward=False)
        topology.add_bridge(s["switch"])
        topology.add_netns(s["cp"]["netns"], forward=False)
        topology.plug(s["cp"]["netns"], "eth0", s["switch"], f"{cp_ip()}/{prefixlen}")
        for node in self.nodes():
            ns = topology.add_netns(node["netns"])
            topology.plug(ns, "eth0", s["switch"], f"{node['ip']}/{prefixlen}")
            # The `kubernetes` Service, as kube-proxy would make it: a route so that the
            # address has a source, DNAT to the API server, and masquerading for pods
            # (the control plane has no route back to pod addresses).
            topology.ip("route", "add", f"{API_VIP}/32", "dev", "eth0", netns=ns)
            dnat = ["-d", f"{API_VIP}/32", "-p", "tcp", "--dport", "443",
                    "-j", "DNAT", "--to-destination", f"{cp_ip()}:{API_PORT}"]
            topology.run_in(ns, "iptables", "-t", "nat", "-A", "OUTPUT", *dnat)
            topology.run_in(ns, "iptables", "-t", "nat", "-A", "PREROUTING", *dnat)
            topology.run_in(ns, "iptables", "-t", "nat", "-A", "POSTROUTING", "-d", f"{cp_ip()}/32", "-p", "tcp",
                            "--dport", str(API_PORT), "-m", "conntrack", "--ctstate", "DNAT", "-j", "MASQUERADE")

    def _in_cp(self, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.state["cp"]["netns"], *argv]

    def _spawn(self, key: str, argv: list[str], log: Path) -> int:
        return self._record(key, procs.spawn(argv, log))

    def _bridge(self, key: str, host_port: int, target: str) -> None:
        """127.0.0.1:host_port on the host -> unix socket -> target (HOST:PORT) in the control plane."""
        sock = self.dir / f"{key}.sock"
        sock.unlink(missing_ok=True)
        self._spawn(f"{key}-cp", self._in_cp(["socat", f"UNIX-LISTEN:{sock},fork,unlink-early",
                                              f"TCP:{target}"]), self.dir / "logs" / f"{key}-bridge.log")
        self._spawn(f"{key}-host", ["socat", f"TCP-LISTEN:{host_port},bind=127.0.0.1,fork,reuseaddr",
                                    f"UNIX-CONNECT:{sock}"], self.dir / "logs" / f"{key}-bridge.log")

    def _control_plane(self, report: Report, bins: Path) -> None:
        s, logs = self.state, self.dir / "logs"
        report(f"control plane: Kubernetes {s['release']} from {bins}")
        for key, port in (("api-etcd", 2381), ("etcd", ETCD_PORT)):
            url = f"http://{cp_ip()}:{port}"
            peer = f"http://127.0.0.1:{port + 1000}"
            self._spawn(key, self._in_cp([
                "etcd", "--name", key, "--data-dir", str(self.dir / key),
                "--listen-client-urls", url, "--advertise-client-urls", url,
                "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                "--initial-cluster", f"{key}={peer}", "--logger", "zap", "--log-level", "warn"]), logs / f"{key}.log")
        self._bridge("etcd", s["etcd"]["host_port"], f"{cp_ip()}:{ETCD_PORT}")
        self._bridge("api", s["api"]["host_port"], f"{cp_ip()}:{API_PORT}")

        api = kubeplane.APIServer(self.dir / "control-plane", f"http://{cp_ip()}:2381", API_PORT, address=cp_ip(),
                                  client_url=f"https://127.0.0.1:{s['api']['host_port']}")
        api.pki.create(server_ips=("127.0.0.1", cp_ip(), API_VIP))
        self._spawn("kube-apiserver", self._in_cp(api.argv()), logs / "kube-apiserver.log")
        api.log = logs / "kube-apiserver.log"
        kubeplane.write_kubeconfig(Path(self.kubeconfig), api.client_url, api.pki, kubeplane.ADMIN)
        api.wait_ready(180, pid=s["pids"]["kube-apiserver"])
        report(f"kube-apiserver ready at {api.client_url} (in {s['cp']['netns']}: {s['api']['url']})")

        pki, inside = api.pki, s["api"]["url"]
        for name, who in (("kube-scheduler", kubeplane.SCHEDULER),
                          ("kube-controller-manager", kubeplane.CONTROLLER_MANAGER)):
            kc = kubeplane.write_kubeconfig(self.dir / "control-plane" / f"{name}.kubeconfig", inside, pki, who)
            argv = [str(bins / name), f"--kubeconfig={kc}", f"--authentication-kubeconfig={kc}",
                    f"--authorization-kubeconfig={kc}", "--bind-address=127.0.0.1", "--leader-elect=false",
                    f"--secure-port={free_port()}"]
            if name == "kube-controller-manager":
                argv += [f"--service-account-private-key-file={pki.dir / 'sa.key'}",
                         f"--root-ca-file={pki.ca}", "--use-service-account-credentials=true",
                         f"--cluster-signing-cert-file={pki.ca}", f"--cluster-signing-key-file={pki.ca_key}",
                         f"--service-cluster-ip-range={kubeplane.SERVICE_CIDR}",
                         # Faster reactions for a lab: a stopped node's pods move within a minute.
                         "--node-monitor-grace-period=20s"]
            self._spawn(name, self._in_cp(argv), logs / f"{name}.log")

    # -- nodes ----------------------------------------------------------------------------------

    def _node(self, node: dict, report: Report, bins: Path, archives: list[Path]) -> None:
        d = Path(node["dir"])
        name = node["name"]
        report(f"{name}: containerd and kubelet in {node['netns']} at {node['ip']}")
        for sub in ("etc-cni-net.d", "opt-cni-bin", "var-lib-routed", "var-run-routed", "var-run-netns", "kubelet", "logs",
                    "pods"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        for plugin in CNI_PLUGINS:
            shutil.copy2(DEBIAN_CNI / plugin, d / "opt-cni-bin" / plugin)
        # The node's mount namespace, held open by a sleeping process; everything of the node
        # runs inside it (nsenter), so its mounts (pods' volumes, netns files) vanish with it.
        binds = "".join(f"mkdir -p {p} && mount --bind {d / p.strip('/').replace('/', '-')} {p} && "
                        for p in NODE_PATHS)
        (d / "hold").touch()
        # Not `ip netns exec`: it mounts a fresh /sys, which hides the cgroup hierarchies
        # kubelet and runc need.
        holder = ["unshare", "--mount", "--propagation", "slave", "nsenter", f"--net={topology.NETNS_DIR}/"
                  f"{node['netns']}", "sh", "-c", f"mount --make-rshared / && {binds}exec tail -f {d / 'hold'}"]
        holder_pid = self._spawn(f"{name}/holder", holder, d / "logs" / "holder.log")
        # unshare, nsenter and sh exec one another: the PID is tail's once the mounts are made.
        _wait_for(lambda: procs.cmdline(holder_pid)[:1] == ["tail"], 30, f"{name}'s mount namespace",
              d / "logs" / "holder.log")

        def inside(argv):
            return ["nsenter", "-t", str(holder_pid), "-m", "-n", "--", *argv]

        sock = d / "containerd.sock"
        (d / "containerd.toml").write_text(containerd_config(d, sock, self.state["images"]["pause"]))
        self._spawn(f"{name}/containerd", inside(["containerd", "--config", str(d / "containerd.toml")]),
                    d / "logs" / "containerd.log")
        _wait_for(lambda: sock.exists() and subprocess.run(["ctr", "-a", str(sock), "version"],
                                                         capture_output=True).returncode == 0,
              60, f"{name}'s containerd", d / "logs" / "containerd.log")
        for archive in archives:
            self._import(node, archive)

        api = kubeplane.PKI(self.dir / "control-plane" / "pki")
        kc = kubeplane.write_kubeconfig(d / "kubelet.kubeconfig", self.state["api"]["url"], api,
                                        kubeplane.node_identity(name))
        cert, key = api.serving(f"kubelet-serving-{name}", (node["ip"], name))
        (d / "kubelet.yaml").write_text(json.dumps(kubelet_config(d, node, sock, api.ca, cert, key), indent=2))
        make_cgroups(cgroup_root(node))
        self._spawn(f"{name}/kubelet", inside([
            str(bins / "kubelet"), f"--config={d / 'kubelet.yaml'}", f"--kubeconfig={kc}",
            f"--hostname-override={name}", f"--node-ip={node['ip']}", f"--root-dir={d / 'kubelet'}",
            "--v=1"]), d / "logs" / "kubelet.log")

    @staticmethod
    def _import(node: dict, archive: Path) -> None:
        sock = Path(node["dir"]) / "containerd.sock"
        done = subprocess.run(["ctr", "-a", str(sock), "-n", "k8s.io", "images", "import", str(archive)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise RoutedError(f"{node['name']}: importing {archive} failed: {done.stderr.strip()}")

    def kubectl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        done = subprocess.run([kubeplane.binary("kubectl"), f"--kubeconfig={self.kubeconfig}", *args],
                              capture_output=True, text=True)
        if check and done.returncode != 0:
            raise RoutedError(f"kubectl {' '.join(args)}: {done.stderr.strip()}")
        return done

    def wait_nodes_ready(self, report: Report = _quiet, timeout: float = 300) -> None:
        want = {n["name"] for n in self.nodes()}

        def registered():
            out = self.kubectl("get", "nodes", "-o", "json", check=False)
            if out.returncode != 0:
                return False
            return {n["metadata"]["name"] for n in json.loads(out.stdout)["items"]} >= want

        def registered_or_died():
            for node in self.nodes():
                pid = self.state["pids"].get(f"{node['name']}/kubelet")
                if pid and not procs.alive(pid, str(self.dir)):
                    log = Path(node["dir"]) / "logs" / "kubelet.log"
                    raise RoutedError(f"{node['name']}'s kubelet exited; {log}:\n"
                                      + log.read_text(errors="replace")[-1500:])
            return registered()

        _wait_for(registered_or_died, timeout, "every kubelet to register its Node",
              Path(self.nodes()[0]["dir"]) / "logs" / "kubelet.log")
        report(f"nodes registered: {', '.join(sorted(want))} (Ready once a CNI configuration exists)")

        # Pods can be created once kube-controller-manager made the namespaces' service accounts.
        def accounts():
            return all(self.kubectl("-n", ns, "get", "serviceaccount", "default", check=False).returncode == 0
                       for ns in ("default", "kube-system"))

        _wait_for(accounts, timeout, "kube-controller-manager to create the default service accounts",
              self.dir / "logs" / "kube-controller-manager.log")

    def crictl(self, node: dict, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([kubeplane.binary("crictl"), "--runtime-endpoint",
                               f"unix://{node['dir']}/containerd.sock", *args], capture_output=True, text=True)

    # -- down -------------------------------------------------------------------------------

    def down(self, report: Report = _quiet) -> None:
        """Stop everything recorded (kubelets first, then pods, containerd, the control
        plane), remove the namespaces, cgroups and the directory's runtime state."""
        if not self.state and self.state_file.exists():
            self.load()
        if not self.state:
            return
        marker = str(self.dir)
        pids = self.state.get("pids", {})
        kubelets = [p for k, p in pids.items() if k.endswith("/kubelet") and procs.alive(p, marker)]
        procs.terminate(kubelets)
        for node in self.nodes():
            if Path(node["dir"], "containerd.sock").exists():
                self.crictl(node, "rmp", "--all", "--force")
        # containerd's shims outlive containerd: find them by our directory in their arguments.
        recorded = [p for p in pids.values() if procs.alive(p, marker)]
        tree = procs.children()
        everything = recorded + [c for p in recorded for c in procs.descendants(p, tree)]
        everything += [p for ns in [n["netns"] for n in self.nodes()] + [self.state["cp"]["netns"]]
                       for p in procs.in_netns(ns)]
        everything += procs.with_path(marker)
        everything += [p for node in self.nodes() for p in cgroup_pids(cgroup_root(node))]
        procs.terminate(list(dict.fromkeys(everything)))
        for ns in topology.list_netns(self.state["prefix"]):
            topology.del_netns(ns)
        for node in self.nodes():
            remove_cgroups(cgroup_root(node))
        self.state_file.unlink(missing_ok=True)
        report(f"removed the Kubernetes lab in {self.dir}")


def cgroup_root(node: dict) -> str:
    """Each kubelet's own cgroup hierarchy, so that two kubelets on one machine never meet."""
    return f"/{node['netns']}"


def cgroup_pids(root: str) -> list[int]:
    """Every process in the node's cgroups (its pods' containers, whatever their parent)."""
    top = Path("/sys/fs/cgroup/pids") / root.lstrip("/")
    found = []
    for dirpath, _, files in os.walk(top):
        if "cgroup.procs" in files:
            try:
                found += [int(p) for p in Path(dirpath, "cgroup.procs").read_text().split()]
            except OSError:
                pass
    return found


def make_cgroups(root: str) -> None:
    """kubelet wants its cgroupRoot to exist in every v1 controller; a new cpuset starts
    with no CPUs and no memory nodes, so it gets its parent's."""
    base = Path("/sys/fs/cgroup")
    for controller in base.iterdir():
        if controller.name == "unified" or not controller.is_dir() or controller.is_symlink():
            continue
        top = controller / root.lstrip("/")
        top.mkdir(exist_ok=True)
        for name in ("cpuset.cpus", "cpuset.mems"):
            if (top / name).exists() and not (top / name).read_text().strip():
                (top / name).write_text((controller / name).read_text())


def remove_cgroups(root: str) -> None:
    """rmdir the hierarchy under root in every v1 controller (children first)."""
    base = Path("/sys/fs/cgroup")
    for controller in base.iterdir() if base.exists() else ():
        top = controller / root.lstrip("/")
        if not top.is_dir():
            continue
        for dirpath, _, _ in sorted(os.walk(top), key=lambda w: -w[0].count("/")):
            try:
                os.rmdir(dirpath)
            except OSError:
                pass


def containerd_config(d: Path, sock: Path, pause: str) -> str:
    return f"""version = 2
root = "{d / 'containerd' / 'root'}"
state = "{d / 'containerd' / 'state'}"
[grpc]
  address = "{sock}"
[ttrpc]
  address = "{sock}.ttrpc"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause}"
  # This machine grants no CAP_SYS_RESOURCE, so nothing may lower an oom_score_adj below
  # its own (runc fails with "failed to update /proc/self/oom_score_adj: Permission
  # denied" for the sandbox's -998): keep every container at containerd's own score or above.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/opt/cni/bin"
    conf_dir = "/etc/cni/net.d"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
      SystemdCgroup = false
      Root = "{d / 'runc'}"
"""


def kubelet_config(d: Path, node: dict, sock: Path, ca: Path, cert: Path, key: Path) -> dict:
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
        # This machine has the cgroup v1 hierarchy; kubelet 1.35+ refuses it unless told.
        "failCgroupV1": False, "cgroupDriver": "cgroupfs", "cgroupRoot": cgroup_root(node),
        "containerRuntimeEndpoint": f"unix://{sock}",
        "address": node["ip"], "port": 10250, "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1", "healthzPort": 10248,
        "tlsCertFile": str(cert), "tlsPrivateKeyFile": str(key),
        "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": True},
                           "x509": {"clientCAFile": str(ca)}},
        "authorization": {"mode": "Webhook"},
        "podLogsDir": str(d / "pods"),
        "failSwapOn": False, "protectKernelDefaults": False,
        "resolvConf": "", "clusterDomain": "cluster.local",
        # The machine's disk is shared by everyone: never evict for disk pressure here.
        "evictionHard": {"memory.available": "50Mi", "nodefs.available": "1%", "imagefs.available": "1%",
                         "nodefs.inodesFree": "1%"},
        "imageGCHighThresholdPercent": 100, "imageGCLowThresholdPercent": 99,
        "serializeImagePulls": False, "registerNode": True,
    }


# -- routed on it ---------------------------------------------------------------------------

RELEASE = "routed"
CHART = kubeplane.REPO / "charts" / "routed"


@dataclass(frozen=True)
class Image:
    ref: str  # e.g. localhost/routed/routed:0.1.0
    archive: Path  # docker-archive, what `ctr images import` takes


def image_archives() -> dict[str, Image]:
    """routed, pause and testpod, from the image lane's scripts/build-image.sh (it builds
    what changed, else answers in a second): one line per image, `name ref archive`."""
    script = kubeplane.REPO / "scripts" / "build-image.sh"
    if not script.exists():
        raise RoutedError(f"{script} not found: the images are built from the repository")
    done = subprocess.run(["bash", str(script)], capture_output=True, text=True)
    if done.returncode != 0:
        raise RoutedError(f"scripts/build-image.sh failed:\n{done.stderr[-3000:]}")
    images = {}
    for line in done.stdout.splitlines():
        name, ref, archive = line.split()
        images[name] = Image(ref, Path(archive))
    missing = {"routed", "pause", "testpod"} - set(images)
    if missing:
        raise RoutedError(f"scripts/build-image.sh did not name the {', '.join(sorted(missing))} image(s)")
    return images


def chart_values(cluster: KubeCluster, **extra) -> dict:
    repository, tag = cluster.state["images"]["routed"].rsplit(":", 1)
    return {"image": {"repository": repository, "tag": tag, "pullPolicy": "Never"},
            "etcd": {"endpoints": [cluster.etcd_cluster_url]},
            "controller": {"replicas": 1}, **extra}


def helm_config(cluster: KubeCluster):
    """helm-python-sdk (Helm 4's own code; a test dependency of the project) on the cluster.
    Its install runs the chart's hooks and keeps a release that uninstall removes."""
    try:
        import helm_python
    except ImportError:
        raise RoutedError("helm-python-sdk is not installed: run scripts/setup.sh (.venv has it)") from None
    return helm_python.Config(kubeconfig_path=cluster.kubeconfig, namespace="kube-system")


def _helm(cluster: KubeCluster, what: str, action: Callable) -> dict:
    """One Helm action on the cluster; its failure (a timed-out wait, a failed hook) in one line."""
    from helm_python import HelmError

    with helm_config(cluster) as cfg:
        try:
            return action(cfg)
        except HelmError as err:
            raise RoutedError(f"helm {what} {RELEASE} failed: {err}") from None


# Helm's --timeout for install and upgrade: Helm waits this long for every resource to be
# Ready, then again for each hook job, and fails (never hangs) past it.
HELM_TIMEOUT = 600


def install_routed(cluster: KubeCluster, values: dict) -> dict:
    """`helm install --wait` of the chart into kube-system (the image is on every node
    already), as the README installs: Helm waits for the DaemonSet and the controller to be
    Ready, then runs the post-install job that creates the IP pool."""
    return _helm(cluster, "install", lambda cfg: cfg.install(
        str(CHART), RELEASE, values, namespace="kube-system", wait="watcher", timeout=HELM_TIMEOUT))


def upgrade_routed(cluster: KubeCluster, changes: dict) -> dict:
    """`helm upgrade --wait --reuse-values` with changes: the rollout Ready, then the
    post-upgrade job."""
    return _helm(cluster, "upgrade", lambda cfg: cfg.upgrade(
        str(CHART), RELEASE, changes, namespace="kube-system", wait="watcher", timeout=HELM_TIMEOUT,
        reuse_values=True))


def uninstall_routed(cluster: KubeCluster) -> dict:
    """`helm uninstall`: its pre-delete hook job takes routed off every node first."""
    return _helm(cluster, "uninstall", lambda cfg: cfg.uninstall(RELEASE, timeout=600))
