"""The agent's end of the CNI shim's unix socket: one thread per request.

Wire format (see cni/shim.py): the shim sends {"env": {...}, "stdin": "..."} and
shuts down its write side; the agent answers {"code": N, "stdout": "..."}.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import socketserver
import threading
import time
from pathlib import Path
from typing import Callable

from .metrics import Metrics

log = logging.getLogger("routed.cni")

MAX_REQUEST = 1 << 20  # a network config larger than 1 MiB is not one


class CNIServer:
    def __init__(self, path: str, handle: Callable[[dict, str], tuple[int, str]], metrics: Metrics):
        self.path = Path(path)
        self.handle = handle
        self.metrics = metrics
        self._server: socketserver.ThreadingUnixStreamServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.unlink(missing_ok=True)  # a stale socket from a previous run
        outer = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self):
                outer._serve(self.rfile, self.wfile)

        class Server(socketserver.ThreadingUnixStreamServer):
            # A burst of pods (kubelet starts many at once) must queue, not be turned away:
            # the default backlog of 5 made the shim's connect fail with EAGAIN.
            request_queue_size = socket.SOMAXCONN
            daemon_threads = True

        self._server = Server(str(self.path), Handler)
        os.chmod(self.path, 0o600)
        self._thread = threading.Thread(target=self._server.serve_forever, name="cni-server", daemon=True)
        self._thread.start()
        log.info("CNI server listening on %s", self.path)

    def _serve(self, rfile, wfile) -> None:
        started = time.monotonic()
        raw = rfile.read(MAX_REQUEST + 1)
        command = "?"
        try:
            if len(raw) > MAX_REQUEST:
                raise ValueError("request larger than 1 MiB")
            request = json.loads(raw)
            env, stdin = request["env"], request["stdin"]
            if not isinstance(env, dict) or not isinstance(stdin, str):
                raise ValueError("env must be an object and stdin a string")
            command = env.get("CNI_COMMAND", "?")
            code, out = self.handle({str(k): str(v) for k, v in env.items()}, stdin)
        except (ValueError, KeyError, TypeError) as err:
            code, out = 1, json.dumps({"cniVersion": "1.1.0", "code": 6, "msg": f"bad request from the shim: {err}"})
        self.metrics.observe_cni(command, code, time.monotonic() - started)
        try:
            wfile.write(json.dumps({"code": code, "stdout": out}).encode())
        except OSError:
            log.warning("CNI %s: the shim went away before the answer", command)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        self.path.unlink(missing_ok=True)
