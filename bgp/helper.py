"""The process ExaBGP starts: a relay between ExaBGP's API and the routed agent.

Standard library only (it starts with every ExaBGP start). ExaBGP writes JSON lines
(state, updates) and "done"/"error" acks on our stdin; we write commands on stdout.
The agent holds all state and logic; it talks to us over a unix socket, newline-
delimited JSON both ways:

- to the agent: {"type": "snapshot", "peers": {...}, "routes": {...}} on every
  (re)connect, then every ExaBGP message as it comes ({"type": "ack", "ok": bool}
  for acks);
- from the agent: {"command": "<ExaBGP API command>"} lines, written to ExaBGP, and
  {"limits": {peer: max prefixes}}: what the view keeps of each peer (the agent's
  maxPrefixes; a peer must not grow our memory without limit either).

ExaBGP blocks when our stdin pipe fills and then drops its sessions, so stdin is
read by its own thread that never waits for anything else. The snapshot (peer
states and received routes, kept from that stream) lets an agent that restarts
learn everything again without resetting a BGP session. Exits on stdin EOF:
ExaBGP is gone or restarting.
"""

import argparse
import json
import os
import socket
import sys
import threading
import time

from bgp.order import link_local_first


class View:
    """Peer states and received routes, as ExaBGP reported them."""

    def __init__(self):
        self.lock = threading.Lock()
        self.peers = {}   # peer address -> last state message
        self.routes = {}  # peer address -> {prefix: next hop + attributes}
        self.limits = {}  # peer address -> most prefixes kept (none: no limit)

    def apply(self, msg):
        neighbor = msg.get("neighbor") or {}
        peer = (neighbor.get("address") or {}).get("peer")
        if not peer:
            return
        with self.lock:
            if msg.get("type") == "state":
                self.peers[peer] = msg  # routes stay on "down": the agent applies graceful restart
            elif msg.get("type") == "update":
                update = (neighbor.get("message") or {}).get("update") or {}
                table = self.routes.setdefault(peer, {})
                attrs = update.get("attribute", {})
                limit = self.limits.get(peer)
                for family, entries in (update.get("withdraw") or {}).items():  # first, as in an UPDATE
                    for entry in entries:
                        table.pop(entry["nlri"], None)
                for family, by_hop in (update.get("announce") or {}).items():
                    for next_hop, entries in link_local_first(by_hop):
                        for entry in entries:
                            if limit and entry["nlri"] not in table and len(table) >= limit:
                                continue
                            table[entry["nlri"]] = {"next-hop": next_hop, "family": family, "attribute": attrs}

    def snapshot(self):
        with self.lock:
            return {"type": "snapshot", "peers": dict(self.peers),
                    "routes": {p: dict(r) for p, r in self.routes.items()}}


class Relay:
    def __init__(self, path, stdin, stdout):
        self.path, self.stdin, self.stdout = path, stdin, stdout
        self.view = View()
        self.sock = None
        self.send_lock = threading.Lock()
        self.out_lock = threading.Lock()
        self.done = threading.Event()

    def run(self):
        threading.Thread(target=self.connect_loop, daemon=True).start()
        for line in self.stdin:  # our only job on this thread: never stop reading
            line = line.strip()
            if not line:
                continue
            if line in ("done", "error", "shutdown"):
                msg = {"type": "ack", "ok": line == "done", "line": line}
            else:
                try:
                    msg = json.loads(line)
                except ValueError:
                    msg = {"type": "text", "line": line}
                self.view.apply(msg)
            self.send(msg)
        self.done.set()

    def send(self, msg):
        """To the agent, if connected; what is lost while it is away the snapshot brings back."""
        with self.send_lock:
            if self.sock is None:
                return
            try:
                self.sock.sendall(json.dumps(msg).encode() + b"\n")
            except OSError:
                self._drop()

    def _drop(self):
        try:
            self.sock.close()
        except (OSError, AttributeError):
            pass
        self.sock = None

    def connect_loop(self):
        while not self.done.is_set():
            try:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.connect(self.path)
            except OSError:
                time.sleep(0.2)
                continue
            with self.send_lock:
                self.sock = sock
                try:
                    sock.sendall(json.dumps(self.view.snapshot()).encode() + b"\n")
                except OSError:
                    self._drop()
                    continue
            self.read_commands(sock)
            with self.send_lock:
                if self.sock is sock:
                    self._drop()

    def read_commands(self, sock):
        buf = b""
        while not self.done.is_set():
            try:
                chunk = sock.recv(65536)
            except OSError:
                return
            if not chunk:
                return
            buf += chunk
            while b"\n" in buf:
                raw, buf = buf.split(b"\n", 1)
                try:
                    msg = json.loads(raw)
                    if "limits" in msg:
                        with self.view.lock:
                            self.view.limits = {str(p): int(n) for p, n in msg["limits"].items()}
                        continue
                    command = msg["command"]
                except (ValueError, KeyError, TypeError, AttributeError):
                    continue
                with self.out_lock:
                    self.stdout.write(command + "\n")
                    self.stdout.flush()


def main(argv=None):
    parser = argparse.ArgumentParser(description="routed's ExaBGP API process")
    parser.add_argument("--socket", default=os.environ.get("ROUTED_BGP_SOCKET", "/var/run/routed/bgp.sock"))
    args = parser.parse_args(argv)
    Relay(args.socket, sys.stdin, sys.stdout).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
