"""/healthz, /readyz and /metrics on a local HTTP port."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable


class HealthServer:
    def __init__(self, host: str, port: int, ready: Callable[[], tuple[bool, str]], metrics: Callable[[], str],
                 documents: dict[str, Callable[[], object]] | None = None,
                 live: Callable[[], tuple[bool, str]] = lambda: (True, "ok")):
        self.ready, self.metrics, self.live = ready, metrics, live
        self.documents = documents or {}  # path -> function returning JSON-able data
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                if self.path == "/healthz":
                    ok, why = outer.live()
                    outer._answer(self, 200 if ok else 503, why + "\n")
                elif self.path == "/readyz":
                    ok, why = outer.ready()
                    outer._answer(self, 200 if ok else 503, why + "\n")
                elif self.path == "/metrics":
                    outer._answer(self, 200, outer.metrics(), "text/plain; version=0.0.4")
                elif self.path in outer.documents:
                    outer._answer(self, 200, json.dumps(outer.documents[self.path]()), "application/json")
                else:
                    outer._answer(self, 404, "not found\n")

            def log_message(self, *args):  # requests are not worth a log line each
                pass

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]

    @staticmethod
    def _answer(handler, status: int, body: str, ctype: str = "text/plain") -> None:
        data = body.encode()
        handler.send_response(status)
        handler.send_header("Content-Type", ctype)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    def start(self) -> None:
        threading.Thread(target=self._server.serve_forever, name="health", daemon=True).start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
