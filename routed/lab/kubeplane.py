"""A real Kubernetes control plane on loopback, the way controller-runtime's envtest
starts one: kube-apiserver on its own etcd, certificates made here with openssl, the
secure port only, clients authenticated by certificates signed by our CA.

The binaries come from scripts/build-kube.sh (tools/kube/go.mod pins the release) and
live in a cache outside the repository; `binary()` says how to build one that is missing.

Used by the tests (tests/support/kubeapi.py) and by `routed lab up --kubernetes`.
"""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from routed.errors import RoutedError

REPO = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO / "scripts" / "build-kube.sh"
SERVICE_CIDR = "10.96.0.0/24"


def bin_dir() -> Path:
    """The cache directory the build script fills (it alone knows the layout)."""
    if not BUILD_SCRIPT.exists():
        raise RoutedError(f"{BUILD_SCRIPT} not found: the Kubernetes components are built from the repository")
    out = subprocess.run(["bash", str(BUILD_SCRIPT), "--print-dir"], capture_output=True, text=True, check=True)
    return Path(out.stdout.strip())


def binary(name: str, directory: Path | None = None) -> str:
    path = (directory or bin_dir()) / name
    if not os.access(path, os.X_OK):
        raise RoutedError(f"{name} is not built: run scripts/build-kube.sh (expected {path})")
    return str(path)


def release() -> str:
    """The pinned Kubernetes release, e.g. v1.37.2 (from tools/kube/go.mod)."""
    for line in (REPO / "tools" / "kube" / "go.mod").read_text().splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "k8s.io/kubernetes":
            return parts[1]
    raise RoutedError("tools/kube/go.mod does not pin k8s.io/kubernetes")


# -- certificates ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Identity:
    """A client certificate: user name (CN) and groups (O)."""
    name: str  # file stem
    user: str
    groups: tuple[str, ...] = ()


ADMIN = Identity("admin", "routed-admin", ("system:masters",))
# The API server's identity towards kubelets (logs, exec, port-forward).
KUBELET_CLIENT = Identity("apiserver-kubelet-client", "kube-apiserver-kubelet-client", ("system:masters",))
CONTROLLER_MANAGER = Identity("kube-controller-manager", "system:kube-controller-manager")
SCHEDULER = Identity("kube-scheduler", "system:kube-scheduler")


def node_identity(node: str) -> Identity:
    """What the Node authorizer expects of a kubelet."""
    return Identity(f"kubelet-{node}", f"system:node:{node}", ("system:nodes",))


class PKI:
    """A CA, the API server's serving certificate (loopback and the service IP), the
    service-account signing key pair, and client certificates on demand. EC keys: made
    in milliseconds, unlike RSA."""

    def __init__(self, directory: Path):
        self.dir = Path(directory)
        self.ca, self.ca_key = self.dir / "ca.crt", self.dir / "ca.key"

    def create(self, server_ips: tuple[str, ...] = ("127.0.0.1",)) -> PKI:
        self.dir.mkdir(parents=True, exist_ok=True)
        if not self.ca.exists():
            self._openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                          "-keyout", self.ca_key.name, "-out", self.ca.name, "-days", "3650",
                          "-subj", "/CN=routed-kube-ca")
        sans = ",".join([f"IP:{ip}" for ip in (*server_ips, _first_service_ip())]
                        + [f"DNS:{n}" for n in ("localhost", "kubernetes", "kubernetes.default",
                                               "kubernetes.default.svc", "kubernetes.default.svc.cluster.local")])
        self._leaf("apiserver", "/CN=kube-apiserver", f"subjectAltName={sans}\nextendedKeyUsage=serverAuth")
        if not (self.dir / "sa.key").exists():
            self._openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "sa.key")
            self._openssl("ec", "-in", "sa.key", "-pubout", "-out", "sa.pub")
        self.client(KUBELET_CLIENT)
        return self

    def client(self, who: Identity) -> tuple[Path, Path]:
        """(cert, key) for who, made once."""
        subject = "".join(f"/O={g}" for g in who.groups) + f"/CN={who.user}"
        return self._leaf(who.name, subject, "extendedKeyUsage=clientAuth")

    def serving(self, name: str, hosts: tuple[str, ...]) -> tuple[Path, Path]:
        """A serving certificate (a kubelet's), for IP addresses and names."""
        sans = ",".join(f"IP:{h}" if h.replace(".", "").isdigit() else f"DNS:{h}" for h in hosts)
        return self._leaf(name, f"/CN={name}", f"subjectAltName={sans}\nextendedKeyUsage=serverAuth")

    def _leaf(self, name: str, subject: str, ext: str) -> tuple[Path, Path]:
        cert, key = self.dir / f"{name}.crt", self.dir / f"{name}.key"
        if not cert.exists():
            (self.dir / f"{name}.ext").write_text(f"keyUsage=critical,digitalSignature,keyEncipherment\n{ext}\n")
            self._openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                          "-keyout", key.name, "-out", f"{name}.csr", "-subj", subject)
            self._openssl("x509", "-req", "-in", f"{name}.csr", "-CA", self.ca.name, "-CAkey", self.ca_key.name,
                          "-CAcreateserial", "-out", cert.name, "-days", "3650", "-extfile", f"{name}.ext")
        return cert, key

    def _openssl(self, *args: str) -> None:
        done = subprocess.run(["openssl", *args], cwd=self.dir, capture_output=True, text=True)
        if done.returncode != 0:
            raise RoutedError(f"openssl {args[0]} failed: {done.stderr.strip().splitlines()[-1:]}")


def _first_service_ip() -> str:
    import ipaddress

    return str(ipaddress.ip_network(SERVICE_CIDR)[1])


def write_kubeconfig(path: Path, server: str, pki: PKI, who: Identity) -> Path:
    """A kubeconfig (JSON is YAML) for who: kubectl, the Python client, kubelet."""
    cert, key = pki.client(who)
    config = {
        "apiVersion": "v1", "kind": "Config", "current-context": "routed",
        "clusters": [{"name": "routed", "cluster": {"server": server, "certificate-authority": str(pki.ca)}}],
        "users": [{"name": who.user, "user": {"client-certificate": str(cert), "client-key": str(key)}}],
        "contexts": [{"name": "routed", "context": {"cluster": "routed", "user": who.user}}],
    }
    path.write_text(json.dumps(config, indent=2) + "\n")
    return path


# -- kube-apiserver ----------------------------------------------------------------------------

class APIServer:
    """kube-apiserver on 127.0.0.1:port (or another address), data in etcd_url. client_url:
    where clients reach it when that is not address:port (through a forwarder)."""

    def __init__(self, directory: Path, etcd_url: str, port: int, address: str = "127.0.0.1",
                 client_url: str | None = None, extra_args: tuple[str, ...] = ()):
        self.dir = Path(directory)
        self.etcd_url, self.port, self.address = etcd_url, port, address
        self.extra_args = extra_args
        self.url = self.client_url = client_url or f"https://{address}:{port}"
        self.pki = PKI(self.dir / "pki")
        self.log = self.dir / "kube-apiserver.log"
        self.proc: subprocess.Popen | None = None
        self.admin_kubeconfig = self.dir / "admin.kubeconfig"

    def argv(self) -> list[str]:
        p = self.pki.dir
        return [
            binary("kube-apiserver"),
            f"--bind-address={self.address}", f"--advertise-address={self.address}", f"--secure-port={self.port}",
            f"--etcd-servers={self.etcd_url}",
            f"--tls-cert-file={p / 'apiserver.crt'}", f"--tls-private-key-file={p / 'apiserver.key'}",
            f"--client-ca-file={p / 'ca.crt'}",
            f"--kubelet-client-certificate={p / (KUBELET_CLIENT.name + '.crt')}",
            f"--kubelet-client-key={p / (KUBELET_CLIENT.name + '.key')}",
            f"--kubelet-certificate-authority={p / 'ca.crt'}",
            # Reach kubelets by address: node names resolve nowhere here.
            "--kubelet-preferred-address-types=InternalIP",
            f"--service-account-issuer=https://kubernetes.default.svc",
            f"--service-account-key-file={p / 'sa.pub'}", f"--service-account-signing-key-file={p / 'sa.key'}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--authorization-mode=Node,RBAC", "--allow-privileged=true",
            # The tests compact etcd themselves, when they want a 410 Gone.
            "--etcd-compaction-interval=0",
            "--profiling=false", "--v=1",
            # A loopback server cannot publish itself as the `kubernetes` Service's endpoint.
            *(["--endpoint-reconciler-type=none"] if self.address.startswith("127.") else []),
            *self.extra_args,
        ]

    def start(self, timeout: float = 180.0) -> APIServer:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.pki.create(server_ips=tuple(dict.fromkeys(("127.0.0.1", self.address))))
        write_kubeconfig(self.admin_kubeconfig, self.url, self.pki, ADMIN)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self.argv(), stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ready(self, timeout: float, pid: int | None = None) -> None:
        """Until /readyz says ok; fails at once when the process (ours, or pid) exited."""
        deadline = time.monotonic() + timeout
        while True:
            if self.proc is not None and self.proc.poll() is not None:
                raise RoutedError(f"kube-apiserver exited with {self.proc.returncode}:\n{self.tail()}")
            if pid is not None and not Path(f"/proc/{pid}").exists():
                raise RoutedError(f"kube-apiserver exited:\n{self.tail()}")
            if self.ready():
                return
            if time.monotonic() > deadline:
                raise RoutedError(f"kube-apiserver not ready within {timeout:.0f}s:\n{self.tail()}")
            time.sleep(0.2)

    def ready(self) -> bool:
        try:
            return self.get("/readyz").strip() == "ok"
        except (OSError, urllib.error.URLError):
            return False

    def get(self, path: str) -> str:
        """GET path as the admin (for health checks; clients use the kubeconfig)."""
        cert, key = self.pki.client(ADMIN)
        ctx = ssl.create_default_context(cafile=str(self.pki.ca))
        ctx.load_cert_chain(str(cert), str(key))
        with urllib.request.urlopen(self.url + path, context=ctx, timeout=5) as resp:
            return resp.read().decode()

    def tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self) -> None:
        """SIGTERM by PID, SIGKILL if it lingers; also when start failed half-way."""
        if self.proc is None or self.proc.poll() is not None:
            return
        os.kill(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
