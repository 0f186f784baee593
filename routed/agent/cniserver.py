"""The agent's end of the CNI shim's unix socket: one thread per request.

Wire format: cni/wire.py. The shim shuts down its write side after the request.
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

from cni import wire

from .metrics import Metrics

log = logging.getLogger("routed.cni")


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
        command = "?"
        try:
            env, stdin = wire.parse_request(rfile.read(wire.MAX_REQUEST + 1))
            command = env.get("CNI_COMMAND", "?")
            code, out = self.handle(env, stdin)
        except wire.BadRequest as err:
            code, out = 1, json.dumps({"cniVersion": "1.1.0", "code": 6, "msg": f"bad request from the shim: {err}"})
        self.metrics.observe_cni(command, code, time.monotonic() - started)
        try:
            wfile.write(wire.encode_answer(code, out))
        except OSError:
            log.warning("CNI %s: the shim went away before the answer", command)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        self.path.unlink(missing_ok=True)
