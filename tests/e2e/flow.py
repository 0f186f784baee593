"""A long-lived TCP flow between two pods, standard library only (run with the system
python3 inside a pod's namespace).

    flow.py serve PORT               echo every line back, one connection at a time
    flow.py send IP PORT REPORT      one connection; a numbered line every 0.1 s; on SIGTERM
                                     (or when the connection breaks) write REPORT (JSON)

The report says whether the one connection lived throughout (no reset, no reconnect),
how many lines were echoed back, and the longest time without an echo: what a pod's
established connection felt while the network under it was restarted."""

from __future__ import annotations

import json
import signal
import socket
import sys
import threading
import time


def serve(port: int) -> None:
    server = socket.create_server(("0.0.0.0", port), reuse_port=False)
    while True:
        conn, _ = server.accept()
        with conn:
            while True:
                data = conn.recv(65536)
                if not data:
                    break
                conn.sendall(data)


def send(ip: str, port: int, report: str) -> None:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    result = {"connected": False, "broken": None, "sent": 0, "echoed": 0, "longest_gap": 0.0}
    try:
        conn = socket.create_connection((ip, port), timeout=10)
        conn.settimeout(None)
        result["connected"] = True
        last = [time.monotonic()]
        reader_done = threading.Event()

        def read():
            buf = b""
            try:
                while True:
                    data = conn.recv(65536)
                    if not data:
                        result["broken"] = result["broken"] or "closed by the peer"
                        break
                    buf += data
                    lines = buf.count(b"\n")
                    if lines:
                        now = time.monotonic()
                        result["longest_gap"] = max(result["longest_gap"], now - last[0])
                        last[0] = now
                        result["echoed"] += lines
                        buf = buf.rsplit(b"\n", 1)[1]
            except OSError as err:
                result["broken"] = result["broken"] or f"read: {err}"
            reader_done.set()

        threading.Thread(target=read, daemon=True).start()
        while not stop.wait(0.1) and not reader_done.is_set():
            try:
                conn.sendall(f"{result['sent']}\n".encode())
                result["sent"] += 1
            except OSError as err:
                result["broken"] = f"send: {err}"
                break
        # the echoes of the last lines sent are on their way: wait for them, a little
        deadline = time.monotonic() + 10
        while result["echoed"] < result["sent"] and not reader_done.is_set() and time.monotonic() < deadline:
            time.sleep(0.05)
        result["longest_gap"] = max(result["longest_gap"], time.monotonic() - last[0]) \
            if result["echoed"] < result["sent"] else result["longest_gap"]
    except OSError as err:
        result["broken"] = f"connect: {err}"
    with open(report, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(int(sys.argv[2]))
    else:
        send(sys.argv[2], int(sys.argv[3]), sys.argv[4])
