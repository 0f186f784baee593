"""A real etcd server (Debian's etcd-server) for tests, on loopback, in a temp dir."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from routed.lab.ports import free_port  # re-exported: the tests import it from here

ETCD = shutil.which("etcd") or "/usr/bin/etcd"


class EtcdServer:
    """One etcd member. ``kill()``/``start()`` keep the data dir, so a restart resumes."""

    # A lone member elects itself at once; members of a cluster on a busy machine need
    # more slack, or they keep electing (a test would then measure elections).
    TIMING = {"--heartbeat-interval": "10", "--election-timeout": "100"}

    def __init__(self, data_dir: Path, tls: dict | None = None, name: str = "t"):
        if not os.access(ETCD, os.X_OK):
            raise RuntimeError(f"etcd not found at {ETCD}: run scripts/setup.sh (Debian package etcd-server)")
        self.data_dir = Path(data_dir)
        self.tls = tls
        self.name = name
        self.initial_cluster: str | None = None  # "name=peer-url,..." for a member of a cluster
        self.timing = dict(self.TIMING)
        self.client_port = free_port()
        self.peer_port = free_port()
        scheme = "https" if tls else "http"
        self.url = f"{scheme}://127.0.0.1:{self.client_port}"
        self.proc: subprocess.Popen | None = None
        self.log = self.data_dir.parent / f"etcd-{self.client_port}.log"

    def start(self, timeout: float = 15.0) -> EtcdServer:
        """Start, trying other ports if a chosen one was taken before etcd could bind it."""
        for attempt in range(3):
            try:
                return self._start(timeout)
            except RuntimeError as err:
                if "address already in use" not in str(err) or attempt == 2:
                    raise
                self.client_port, self.peer_port = free_port(), free_port()
                self.url = f"{'https' if self.tls else 'http'}://127.0.0.1:{self.client_port}"
        raise AssertionError("unreachable")

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    def _start(self, timeout: float) -> EtcdServer:
        self.launch()
        return self.wait_serving(timeout)

    def launch(self) -> None:
        """Start the process without waiting: a cluster's members only serve once a quorum runs."""
        peer = self.peer_url
        args = [ETCD, "--name", self.name, "--data-dir", str(self.data_dir),
                "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
                "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                "--initial-cluster", self.initial_cluster or f"{self.name}={peer}",
                "--logger", "zap", "--log-level", "warn"]
        for flag, value in self.timing.items():
            args += [flag, value]
        if self.tls:
            args += ["--cert-file", self.tls["server_cert"], "--key-file", self.tls["server_key"],
                     "--trusted-ca-file", self.tls["ca"], "--client-cert-auth"]
        self.proc = subprocess.Popen(args, stdout=open(self.log, "ab"), stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def wait_serving(self, timeout: float) -> EtcdServer:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"etcd exited with {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.client_port), timeout=0.2):
                    pass
                if self._healthy():
                    return self
            except OSError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"etcd did not start within {timeout}s: {self.log.read_text()[-2000:]}")

    def _healthy(self) -> bool:
        # etcd accepts connections before it has a leader; a read proves it serves.
        from routed.datastore.etcd import EtcdKV
        from routed.errors import DatastoreUnavailable

        kv = self.client(timeout=1.0)
        try:
            kv.revision()
            return True
        except DatastoreUnavailable:
            return False
        finally:
            kv.close()

    def client(self, timeout: float = 5.0, with_client_cert: bool = True):
        from routed.datastore.etcd import EtcdKV

        if not self.tls:
            return EtcdKV([self.url], timeout=timeout)
        read = lambda k: Path(self.tls[k]).read_bytes()  # noqa: E731
        return EtcdKV([self.url], ca=read("ca"), timeout=timeout,
                      cert=read("client_cert") if with_client_cert else None,
                      key=read("client_key") if with_client_cert else None)

    def env(self) -> dict:
        env = {"ROUTED_ETCD_ENDPOINTS": self.url}
        if self.tls:
            env.update(ROUTED_ETCD_CA=self.tls["ca"], ROUTED_ETCD_CERT=self.tls["client_cert"],
                       ROUTED_ETCD_KEY=self.tls["client_key"])
        return env

    def pause(self) -> None:
        """SIGSTOP: the member keeps its sockets but answers nothing, as a black-holed host
        (no RST) or a wedged process would. Always resume() in a finally."""
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.kill()


class EtcdCluster:
    """Three members on loopback, each with its own client and peer port."""

    def __init__(self, directory: Path, size: int = 3):
        self.members = [EtcdServer(Path(directory) / f"m{i}" / "data", name=f"m{i}") for i in range(size)]
        initial = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        for m in self.members:
            m.data_dir.parent.mkdir(parents=True, exist_ok=True)
            m.initial_cluster = initial
            m.timing = {"--heartbeat-interval": "50", "--election-timeout": "500"}

    @property
    def urls(self) -> list[str]:
        return [m.url for m in self.members]

    def start(self, timeout: float = 30.0) -> EtcdCluster:
        for m in self.members:
            m.launch()
        for m in self.members:
            m.wait_serving(timeout)
        return self

    def member(self, url: str) -> EtcdServer:
        return next(m for m in self.members if m.url == url)

    def stop(self) -> None:
        for m in self.members:
            m.resume()  # a stopped process does not act on SIGTERM
            m.stop()


def make_tls(directory: Path) -> dict:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, with openssl."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)

    def run(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=d)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
        "-days", "2", "-subj", "/CN=routed-test-ca")
    for name, ext in (("server", "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth"),
                      ("client", "extendedKeyUsage=clientAuth")):
        (d / f"{name}.ext").write_text(ext + "\n")
        run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
            "-subj", f"/CN=routed-{name}")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext")
    return {"ca": str(d / "ca.crt"), "server_cert": str(d / "server.crt"), "server_key": str(d / "server.key"),
            "client_cert": str(d / "client.crt"), "client_key": str(d / "client.key")}
