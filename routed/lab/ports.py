"""Free loopback ports for the servers the lab (and the tests) start."""

from __future__ import annotations

import random
import socket

# Below the kernel's ephemeral range (32768-60999 here): a port taken from that range can
# be handed to an outgoing connection as its source port between our check and the
# server's bind, and the server then fails with "address already in use".
LOW, HIGH = 20000, 32000


def free_port() -> int:
    for _ in range(200):
        port = random.randint(LOW, HIGH)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port between {LOW} and {HIGH} on 127.0.0.1")
