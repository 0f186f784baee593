"""A real `routed agent` process for tests, serving one "node" played by a namespace."""

from __future__ import annotations

import atexit
import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from tests.support.etcd import free_port
from tests.support.netns import Netns

ROUTED = str(Path(sys.executable).with_name("routed"))


@functools.cache
def installed_plugin() -> str:
    """The CNI plugin as `routed install-cni` puts it on a node, installed once per test
    process into a temp dir (removed at exit): tests exec what kubelet would."""
    workdir = tempfile.mkdtemp(prefix="rt-cni-")
    atexit.register(shutil.rmtree, workdir, ignore_errors=True)
    proc = subprocess.run([ROUTED, "install-cni", "--bin-dir", f"{workdir}/bin", "--conf-dir", f"{workdir}/net.d"],
                          capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise RuntimeError(f"routed install-cni failed (run scripts/setup.sh):\n{proc.stdout}{proc.stderr}")
    return f"{workdir}/bin/routed"


class AgentProcess:
    """`routed agent --netns HOST`: the agent stays in the real host netns (it must reach
    etcd on loopback) and drives the namespace that plays the node's host."""

    def __init__(self, workdir: Path, etcd_url: str, host: Netns, node: str, node_ip: str, labels: str = "",
                 block_grace: float = 300, bgp: bool = False, secrets_dir: str | None = None,
                 extra_args: list[str] | None = None, env: dict | None = None):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.etcd_url, self.host, self.node, self.node_ip = etcd_url, host, node, node_ip
        self.labels, self.block_grace, self.bgp = labels, block_grace, bgp
        self.secrets_dir = secrets_dir  # <dir>/<secret name>/<key>: BGP passwords
        self.extra_args = list(extra_args or [])  # more `routed agent` flags, e.g. --kubeconfig FILE
        self.env = env  # the agent's environment (None: the test's own)
        self.socket = str(self.workdir / "cni.sock")
        self.spool = str(self.workdir / "spool")
        self.health_port = free_port()
        self.proc: subprocess.Popen | None = None
        self.log = self.workdir / "agent.log"

    def start(self, wait: bool = True, timeout: float = 20.0) -> AgentProcess:
        args = [ROUTED, "agent", "--node-name", self.node, "--node-ip", self.node_ip, "--netns", self.host.name,
                "--no-bgp" if not self.bgp else "--bgp", "--bgp-dir", str(self.workdir / "bgp"),
                "--bgp-socket", str(self.workdir / "bgp.sock"),
                "--cni-socket", self.socket, "--spool-dir", self.spool, "--state-dir", str(self.workdir / "state"),
                "--health-port", str(self.health_port), "--etcd-endpoints", self.etcd_url,
                "--block-grace", str(self.block_grace), "--log-level", "info"]
        if self.labels:
            args += ["--node-labels", self.labels]
        if self.secrets_dir:
            args += ["--secrets-dir", str(self.secrets_dir)]
        args += self.extra_args
        self.proc = subprocess.Popen(args, stdout=open(self.log, "ab"), stderr=subprocess.STDOUT, env=self.env)
        if wait:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"agent exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/readyz", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"agent not ready within {timeout}s:\n{self.log.read_text()[-3000:]}")

    def healthz(self) -> tuple[int, str]:
        """/healthz: (HTTP status, body)."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/healthz", timeout=2) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode()

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/metrics", timeout=2) as r:
            return r.read().decode()

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    def conf(self, version: str = "1.0.0", **extra) -> dict:
        """One plugin's network configuration, as a runtime builds it from the conflist."""
        return {"cniVersion": version, "name": "k8s-pod-network", "type": "routed", "mtu": 1450,
                "agent_socket": self.socket, "spool_dir": self.spool, **extra}


def cni(command: str, conf: dict | str, *, container: str = "c1", netns: str = "", ifname: str = "eth0",
        pod: tuple[str, str] | None = ("default", "pod-1"), extra_env: dict | None = None):
    """Call the installed plugin exactly as kubelet/containerd would: env + config on stdin.

    Returns (exit code, parsed stdout or None, raw stdout)."""
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": container, "CNI_NETNS": netns, "CNI_IFNAME": ifname,
           "CNI_PATH": "/usr/lib/cni:/opt/cni/bin"}
    if pod:
        env["CNI_ARGS"] = (f"IgnoreUnknown=1;K8S_POD_NAMESPACE={pod[0]};K8S_POD_NAME={pod[1]};"
                           f"K8S_POD_INFRA_CONTAINER_ID={container}")
    env.update(extra_env or {})
    stdin = conf if isinstance(conf, str) else json.dumps(conf)
    proc = subprocess.run([installed_plugin()], input=stdin, env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.stderr == "", proc.stderr  # errors go to stdout as JSON; a Go panic would land here
    try:
        parsed = json.loads(proc.stdout) if proc.stdout else None
    except ValueError:
        parsed = None
    return proc.returncode, parsed, proc.stdout
