"""The agent's end of the CNI shim's unix socket: a bounded pool of workers.

Wire format: cni/wire.py. The shim shuts down its write side after the request.

A connection is accepted only when a worker is free to serve it; the rest wait in the
kernel's listen backlog (the shim's connect waits for room), so a burst or a misbehaving
client costs queue space, not a thread each. A client gets read_timeout seconds to send
its whole request. Every request in flight is tracked, so the agent's liveness can say
which one is stuck (see liveness.InFlight).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

from prometheus_client import Counter, Histogram

from cni import wire
from routed.runtime.metrics import LATENCY_BUCKETS, Metrics

from .liveness import InFlight

log = logging.getLogger("routed.cni")

# The command label takes these; anything else a client sends is "other" (no label per string).
COMMANDS = {"ADD", "DEL", "CHECK", "GC", "STATUS", "VERSION"}


class CNIServer:
    def __init__(self, path: str, handle: Callable[[dict, str], tuple[int, str]], metrics: Metrics,
                 workers: int = 16, read_timeout: float = 10.0):
        self.path = Path(path)
        self.handle = handle
        labels = ("command", "result")
        self.requests = Counter("routed_cni_requests_total", "CNI requests served, by command and result.",
                                labels, registry=metrics.registry)
        self.latency = Histogram("routed_cni_request_seconds", "Time to serve a CNI request, by command and "
                                 "result.", labels, buckets=LATENCY_BUCKETS, registry=metrics.registry)
        self.workers, self.read_timeout = workers, read_timeout
        self.in_flight = InFlight()
        self._sock: socket.socket | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._free = threading.Semaphore(workers)
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.unlink(missing_ok=True)  # a stale socket from a previous run
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.bind(str(self.path))
        os.chmod(self.path, 0o600)
        # A burst of pods (kubelet starts many at once) must queue, not be turned away:
        # the default backlog of 5 made the shim's connect fail with EAGAIN.
        self._sock.listen(socket.SOMAXCONN)
        self._sock.settimeout(0.5)  # the accept loop looks at _stopping this often
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="cni")
        self._thread = threading.Thread(target=self._accept, name="cni-server", daemon=True)
        self._thread.start()
        log.info("CNI server listening on %s (%d workers)", self.path, self.workers)

    def _accept(self) -> None:
        while not self._stopping.is_set():
            if not self._free.acquire(timeout=0.5):
                continue
            try:
                conn, _ = self._sock.accept()
            except OSError:
                self._free.release()
                if self._stopping.is_set():
                    return
                continue
            self._pool.submit(self._serve, conn)

    def _serve(self, conn: socket.socket) -> None:
        try:
            data = self._read(conn)
            if data is not None:
                self._answer(conn, data)
        except Exception:  # a worker never dies on one request
            log.exception("CNI request failed")
        finally:
            conn.close()
            self._free.release()

    def _read(self, conn: socket.socket) -> bytes | None:
        """The whole request within read_timeout, or None (the client is hung up on)."""
        deadline = time.monotonic() + self.read_timeout
        chunks, size = [], 0
        while size <= wire.MAX_REQUEST:
            left = deadline - time.monotonic()
            try:
                if left <= 0:
                    raise TimeoutError
                conn.settimeout(left)
                chunk = conn.recv(65536)
            except TimeoutError:
                log.warning("CNI client sent no complete request within %gs; hung up", self.read_timeout)
                return None
            except OSError as err:
                log.warning("CNI client went away while sending its request: %s", err)
                return None
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)

    def _answer(self, conn: socket.socket, data: bytes) -> None:
        started = time.monotonic()
        command = "?"
        try:
            env, stdin = wire.parse_request(data)
            command = env.get("CNI_COMMAND", "?")
            with self.in_flight.track(f"CNI {command} for container {env.get('CNI_CONTAINERID', '?')}"):
                code, out = self.handle(env, stdin)
        except wire.BadRequest as err:
            code, out = 1, json.dumps({"cniVersion": "1.1.0", "code": 6, "msg": f"bad request from the shim: {err}"})
        self._observe(command, code, time.monotonic() - started)
        try:
            conn.settimeout(self.read_timeout)
            conn.sendall(wire.encode_answer(code, out))
        except OSError:
            log.warning("CNI %s: the shim went away before the answer", command)

    def _observe(self, command: str, code: int, seconds: float) -> None:
        labels = (command if command in COMMANDS else "other", "ok" if code == 0 else "error")
        self.requests.labels(*labels).inc()
        self.latency.labels(*labels).observe(seconds)

    def stop(self) -> None:
        self._stopping.set()
        if self._sock is not None:
            if self._thread is not None:
                self._thread.join(timeout=5)
            self._sock.close()
            self._sock = None
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
        self.path.unlink(missing_ok=True)
