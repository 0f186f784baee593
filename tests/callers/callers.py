"""Shared by the real-CNI-caller tests (libcni, podman): build the Go caller, stand up a
node (etcd + host netns + agent + installed plugin), and look at the real host.

Nothing here skips: a missing dependency fails the test with what to install.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

import routed.resources
from ipam.allocator import IPAM
from routed.datastore import keys
from routed.datastore.resources import ResourceStore
from tests.support.agent import ROUTED, AgentProcess
from tests.support.netns import PREFIX, Netns, node_host, sh

HERE = Path(__file__).resolve().parent
LIBCNI_SOURCE = HERE / "libcni"
GOPATH_DEBIAN = "/usr/share/gocode"
LIBCNI_PACKAGE = Path(GOPATH_DEBIAN) / "src/github.com/containernetworking/cni/libcni"
DEBIAN_CNI_DIR = Path("/usr/lib/cni")
POOL_CIDR = "10.60.0.0/16"
NETWORK = "k8s-pod-network"


def require(condition: bool, what: str) -> None:
    if not condition:
        pytest.fail(f"missing test dependency: {what} (run scripts/setup.sh)", pytrace=False)


def require_root() -> None:
    require(os.geteuid() == 0, "root (network namespaces)")


# --------------------------------------------------------------------------- libcni


def build_libcni_caller(out_dir: Path) -> Path:
    """`go build` tests/callers/libcni offline against Debian's libcni (GOPATH mode)."""
    go = shutil.which("go")
    require(go is not None, "go (Debian package golang-go)")
    require((LIBCNI_PACKAGE / "api.go").exists(), f"libcni at {LIBCNI_PACKAGE} (Debian package golang-github-appc-cni-dev)")
    out_dir.mkdir(parents=True, exist_ok=True)
    binary = out_dir / "libcni-caller"
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(out_dir),
           "GO111MODULE": "off", "GOPATH": GOPATH_DEBIAN, "GOFLAGS": "", "GOPROXY": "off",
           "GOCACHE": str(out_dir / "gocache"), "GOTOOLCHAIN": "local", "CGO_ENABLED": "0"}
    proc = subprocess.run([go, "build", "-o", str(binary), "."], cwd=LIBCNI_SOURCE, env=env,
                          capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        pytest.fail(f"building the libcni caller failed:\n{proc.stdout}{proc.stderr}", pytrace=False)
    return binary


@pytest.fixture(scope="session")
def libcni_caller(tmp_path_factory) -> Path:
    """The Go caller, built once per test session."""
    return build_libcni_caller(tmp_path_factory.mktemp("libcni-caller"))


def ipv4_only_path(directory: Path) -> str:
    """A PATH with iptables but no ip6tables: an IPv4-only node, as portmap sees it.

    Debian's portmap (plugins 1.1.1) fails CHECK on an IPv4-only pod whenever ip6tables
    exists, looking for an IPv6 DNAT chain it never made (containernetworking/plugins#819).
    """
    directory.mkdir(parents=True, exist_ok=True)
    for tool in ("iptables", "iptables-save", "iptables-restore"):
        link = directory / tool
        if not link.exists():
            require(os.path.exists(f"/usr/sbin/{tool}"), f"{tool} (Debian package iptables)")
            link.symlink_to(f"/usr/sbin/{tool}")
    return f"{directory}:/usr/bin"


class Libcni:
    """Runs the libcni caller INSIDE the node's host netns, as a runtime on that node
    would: chained plugins (portmap, bandwidth) then program that namespace."""

    def __init__(self, binary: Path, node: "Node", workdir: Path):
        self.binary, self.node = binary, node
        self.cache = workdir / "libcni-cache"
        self.path = ipv4_only_path(workdir / "ipv4-only-bin")

    def __call__(self, command: str, container: str, netns: str, *, ifname: str = "eth0",
                 pod: tuple[str, str] | None = ("default", "web"), caps: dict | None = None):
        """(exit code, parsed stdout or None, stdout + stderr)."""
        args = ["ip", "netns", "exec", self.node.host.name, str(self.binary), command,
                "-conflist", str(self.node.conflist), "-container", container, "-netns", netns,
                "-ifname", ifname, "-path", str(self.node.bin_dir), "-cache-dir", str(self.cache)]
        if pod:
            args += ["-args", f"IgnoreUnknown=1;K8S_POD_NAMESPACE={pod[0]};K8S_POD_NAME={pod[1]};"
                              f"K8S_POD_INFRA_CONTAINER_ID={container}"]
        if caps:
            args += ["-cap", json.dumps(caps)]
        proc = subprocess.run(args, capture_output=True, text=True, timeout=180, env={"PATH": self.path})
        try:
            parsed = json.loads(proc.stdout) if proc.stdout.strip() else None
        except ValueError:
            parsed = None
        return proc.returncode, parsed, proc.stdout + proc.stderr


# --------------------------------------------------------------------------- the node


def create_pool(etcd, cidr: str = POOL_CIDR) -> None:
    client = etcd.client()
    try:
        ResourceStore(client).create(routed.resources.parse(
            {"apiVersion": "routed.io/v1", "kind": "IPPool", "metadata": {"name": "p"}, "spec": {"cidr": cidr}}))
    finally:
        client.close()


def install_cni(bin_dir: Path, conf_dir: Path, agent: AgentProcess, *, chain: bool) -> Path:
    """`routed install-cni` as the DaemonSet's init container runs it; returns the conflist."""
    args = [ROUTED, "install-cni", "--bin-dir", str(bin_dir), "--conf-dir", str(conf_dir),
            "--cni-socket", agent.socket, "--spool-dir", agent.spool]
    if not chain:
        args.append("--no-chain")
    proc = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return conf_dir / "10-routed.conflist"


def link_debian_plugins(bin_dir: Path, *names: str) -> None:
    for name in names:
        source = DEBIAN_CNI_DIR / name
        require(os.access(source, os.X_OK), f"{source} (Debian package containernetworking-plugins)")
        (bin_dir / name).symlink_to(source)


@dataclass
class Node:
    host: Netns
    agent: AgentProcess
    etcd: object
    bin_dir: Path
    conf_dir: Path
    conflist: Path

    def handles(self) -> list[str]:
        """Every IPAM handle in etcd."""
        client = self.etcd.client()
        try:
            return client.keys(keys.HANDLES)
        finally:
            client.close()

    def held_by(self, handle: str) -> list:
        client = self.etcd.client()
        try:
            return IPAM(client).held_by(handle)
        finally:
            client.close()

    def agent_log(self) -> str:
        """The agent's own lines (not pyroute2's debug chatter), the last few."""
        if not self.agent.log.exists():
            return ""
        lines = [line for line in self.agent.log.read_text().splitlines() if "logger=pyroute2" not in line]
        return "\n".join(lines[-40:])


@contextmanager
def routed_node(etcd, workdir: Path, *, chain: bool, node_ip: str = "192.0.2.10"):
    """A node whose host is a fresh rt-host-* netns, with a running agent and the plugin
    installed into workdir/bin + workdir/net.d. Everything is removed afterwards."""
    require_root()
    create_pool(etcd)
    host = node_host(f"{node_ip}/24")
    agent = None
    try:
        agent = AgentProcess(workdir / "agent", etcd.url, host, "node-1", f"{node_ip}/24").start()
        bin_dir, conf_dir = workdir / "bin", workdir / "net.d"
        conflist = install_cni(bin_dir, conf_dir, agent, chain=chain)
        yield Node(host, agent, etcd, bin_dir, conf_dir, conflist)
    finally:
        if agent is not None:
            agent.stop()
        host.delete()


# --------------------------------------------------------------------------- the real host


def ip_json(*args: str, netns: str | None = None) -> list[dict]:
    out = sh("ip", "-j", *args, netns=netns).stdout
    return json.loads(out) if out.strip() else []


def link_names(netns: str | None = None) -> set[str]:
    return {link["ifname"] for link in ip_json("link", "show", netns=netns)}


def addresses(netns: str | None = None, ifname: str | None = None) -> list[str]:
    args = ["-4", "addr", "show"] + (["dev", ifname] if ifname else [])
    return [a["local"] for link in ip_json(*args, netns=netns) for a in link.get("addr_info", [])]


def iptables_save(netns: str | None = None) -> str:
    return sh("iptables-save", netns=netns).stdout


def host_routes(netns: str) -> str:
    return sh("ip", "-4", "route", "show", netns=netns).stdout


def netns_names() -> set[str]:
    return set(os.listdir("/var/run/netns")) if os.path.isdir("/var/run/netns") else set()


def _rules(text: str) -> list[str]:
    # Comments carry timestamps and chain lines packet counters: compare the rules only.
    return [re.sub(r"\[\d+:\d+\]", "", line) for line in text.splitlines() if not line.startswith("#")]


# Other tests (and the lab) create and remove their own namespaces while these run.
OTHERS_NETNS = (PREFIX, "rl-")


@dataclass
class HostSnapshot:
    """What of the real host a CNI caller must leave alone."""
    links: set[str]
    netns: set[str]
    routes: str
    iptables: list[str]
    ip6tables: list[str]

    @classmethod
    def take(cls) -> HostSnapshot:
        return cls(link_names(), netns_names(), sh("ip", "route", "show", "table", "all").stdout,
                   _rules(sh("iptables-save").stdout), _rules(sh("ip6tables-save").stdout))

    def assert_unchanged(self) -> None:
        later = HostSnapshot.take()
        assert later.links == self.links, (f"real host links changed: added {later.links - self.links}, "
                                           f"removed {self.links - later.links}")
        added = {n for n in later.netns - self.netns if not n.startswith(OTHERS_NETNS)}
        assert not added, f"network namespaces left on the real host: {added}"
        assert later.routes == self.routes, f"real host routes changed:\n{self.routes}\n---\n{later.routes}"
        assert later.iptables == self.iptables, f"real host iptables changed:\n{later.iptables}"
        assert later.ip6tables == self.ip6tables, f"real host ip6tables changed:\n{later.ip6tables}"


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.05):
    """Poll until predicate() is truthy (a readiness wait, not a timed assertion)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


# --------------------------------------------------------------------------- podman

BUSYBOX = "/bin/busybox"
BUSYBOX_APPLETS = ("sh", "ip", "ping", "sleep", "cat", "ls", "hostname", "true")


def busybox_rootfs(directory: Path) -> Path:
    """A container root filesystem that is only a static busybox and its applet links."""
    require(os.path.exists(BUSYBOX), f"{BUSYBOX} (Debian package busybox-static)")
    with open(BUSYBOX, "rb") as f:
        head = f.read(4096)
    require(b"ld-linux" not in head, f"a static {BUSYBOX} (Debian package busybox-static, not busybox)")
    (directory / "bin").mkdir(parents=True)
    shutil.copy2(BUSYBOX, directory / "bin" / "busybox")
    for applet in BUSYBOX_APPLETS:
        (directory / "bin" / applet).symlink_to("busybox")
    for sub in ("proc", "sys", "dev", "etc", "tmp", "run"):
        (directory / sub).mkdir()
    return directory


class Podman:
    """podman with its CNI backend, private storage and state, and only our network:
    the plugin dir and config dir are the node's, named in a containers.conf of ours."""

    def __init__(self, node: Node, workdir: Path):
        require(shutil.which("podman") is not None, "podman (Debian package podman)")
        require(shutil.which("runc") is not None, "runc (Debian package runc)")
        self.workdir = workdir
        self.sandboxes: list[str] = []  # the container netns paths podman made, for cleanup
        workdir.mkdir(parents=True, exist_ok=True)
        conf = workdir / "containers.conf"
        conf.write_text(
            "[network]\n"
            'network_backend = "cni"\n'
            f'cni_plugin_dirs = ["{node.bin_dir}"]\n'
            f'network_config_dir = "{node.conf_dir}"\n'
            f'default_network = "{NETWORK}"\n'
            "[engine]\n"
            'cgroup_manager = "cgroupfs"\n'
            'events_logger = "none"\n'
            'runtime = "runc"\n')
        self.env = {"PATH": "/usr/bin:/usr/sbin", "HOME": str(workdir), "CONTAINERS_CONF": str(conf)}
        # podman refuses a runroot longer than 50 characters: pytest's tmp paths are longer.
        self.state = Path(tempfile.mkdtemp(prefix="rt-podman-"))
        self.base = ["podman", "--root", str(self.state / "root"), "--runroot", str(self.state / "run"),
                     "--tmpdir", str(self.state / "tmp"), "--storage-driver", "vfs",
                     "--cgroup-manager", "cgroupfs", "--runtime", "runc", "--events-backend", "none"]

    def __call__(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        proc = subprocess.run(self.base + list(args), capture_output=True, text=True, env=self.env, timeout=timeout)
        if check:
            assert proc.returncode == 0, f"podman {' '.join(args)}: exit {proc.returncode}\n{proc.stdout}{proc.stderr}"
        return proc

    def run(self, name: str, rootfs: Path, *command: str) -> str:
        """podman run -d on our network; the container's full ID."""
        # The host's hard RLIMIT_NOFILE is below podman's default: runc cannot raise it.
        out = self("run", "-d", "--name", name, "--network", NETWORK, "--ulimit", "nofile=1024:1024",
                   "--ulimit", "nproc=1024:1024", "--rootfs", str(rootfs), *command).stdout
        return out.strip().splitlines()[-1]

    def inspect(self, name: str) -> dict:
        return json.loads(self("inspect", name).stdout)[0]

    def close(self) -> None:
        """Cleanup: every container of this private store, at once (busybox ignores SIGTERM
        as PID 1), then the store itself."""
        self("rm", "-f", "-t", "0", "--all", check=False)
        for path in self.sandboxes:  # only ones podman made for this test, should it leave any
            if os.path.exists(path):
                sh("ip", "netns", "del", os.path.basename(path), check=False)
        shutil.rmtree(self.state, ignore_errors=True)
