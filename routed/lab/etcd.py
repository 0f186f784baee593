"""The lab's etcd: Debian's etcd-server on loopback, its PID and data kept on disk."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from routed.datastore.etcd import EtcdKV, wait_ready
from routed.errors import RoutedError

CLIENT_PORT = 23790  # not 2379, so a lab never answers for (or to) a real etcd on this host
PEER_PORT = 23800


def endpoint(port: int = CLIENT_PORT) -> str:
    return f"http://127.0.0.1:{port}"


def start(state_dir: Path, port: int = CLIENT_PORT, peer_port: int = PEER_PORT) -> int:
    """Start etcd unless the lab's own one is already running; returns its PID.

    The ports are parameters so that a second lab (the e2e tests' own, in another state
    directory) never collides with one a user left running."""
    pid = running_pid(state_dir)
    if pid:
        return pid
    etcd = shutil.which("etcd")
    if not etcd:
        raise RoutedError("etcd not found: run `make lab` (it installs Debian's etcd-server)")
    for p in (port, peer_port):
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", p)) == 0:
                raise RoutedError(f"127.0.0.1:{p} is in use (another lab?): set ROUTED_LAB_ETCD_PORT to another "
                                  "port (the peer port is that + 10)")
    peer = f"http://127.0.0.1:{peer_port}"
    log = open(state_dir / "etcd.log", "ab")
    proc = subprocess.Popen(
        [etcd, "--name", "lab", "--data-dir", str(state_dir / "etcd"),
         "--listen-client-urls", endpoint(port), "--advertise-client-urls", endpoint(port),
         "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
         "--initial-cluster", f"lab={peer}", "--heartbeat-interval", "50", "--election-timeout", "500",
         "--logger", "zap", "--log-level", "warn"],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    log.close()
    (state_dir / "etcd.pid").write_text(str(proc.pid))
    # Wait for the port before the first client: a gRPC channel that finds nothing
    # listening backs off for seconds (this alone made the lab's start 10 s slower).
    deadline = time.monotonic() + 20
    while True:
        if proc.poll() is not None:
            raise RoutedError(f"the lab's etcd exited with {proc.returncode}; see {state_dir / 'etcd.log'}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
        except OSError:
            if time.monotonic() > deadline:
                raise RoutedError(f"the lab's etcd did not listen on {port}; see {state_dir / 'etcd.log'}") from None
            time.sleep(0.05)
    kv = EtcdKV([endpoint(port)], timeout=2.0)
    try:
        wait_ready(kv, timeout=20)
    except RoutedError:
        raise RoutedError(f"the lab's etcd did not start; see {state_dir / 'etcd.log'}") from None
    finally:
        kv.close()
    return proc.pid


def running_pid(state_dir: Path) -> int | None:
    """The PID we recorded, if that process is still our etcd."""
    try:
        pid = int((state_dir / "etcd.pid").read_text())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return None
    return pid if cmdline and cmdline[0].endswith(b"etcd") and str(state_dir).encode() in b" ".join(cmdline) else None


def stop(state_dir: Path) -> None:
    pid = running_pid(state_dir)
    if pid:
        os.kill(pid, signal.SIGTERM)
        for _ in range(50):
            if not Path(f"/proc/{pid}").exists():
                break
            time.sleep(0.1)
        else:
            os.kill(pid, signal.SIGKILL)
    (state_dir / "etcd.pid").unlink(missing_ok=True)
