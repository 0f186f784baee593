"""Run inside a pod's netns: serve TCP, UDP and (when the kernel has it) SCTP on 80 and
81 (or the ports given as arguments), answering "ok", and probe other pods on request.
One line in, one line out:

    probe TCP 80 1.0 10.66.0.2 10.66.0.3   ->   10.66.0.2=1 10.66.0.3=0

The listening sockets are made before "ready" is printed, so a server that cannot bind
stops the prober instead of failing quietly in its thread.
"""

import socket
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

PORTS = tuple(int(p) for p in sys.argv[1:]) or (80, 81)


def has_sctp():
    try:
        socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_SCTP).close()
        return True
    except OSError:  # EPROTONOSUPPORT: this kernel has no SCTP (the caller drops SCTP probes)
        return False


def listener(port, proto=0):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM, proto)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port))
    s.listen(64)
    return s


def serve_stream(s):
    """TCP or SCTP (one-to-one style): the same accept, answer, close."""
    while True:
        conn, _ = s.accept()
        try:
            conn.sendall(b"ok")
        except OSError:
            pass  # the client gave up first
        finally:
            conn.close()


def serve_udp(s):
    while True:
        data, peer = s.recvfrom(64)
        s.sendto(b"ok", peer)


def probe_stream(addr, port, timeout, proto=0):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM, proto) as s:
        s.settimeout(timeout)
        s.connect((addr, port))
        return s.recv(2) == b"ok"


def probe_udp(addr, port, timeout):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        for _ in range(2):  # one retry: a datagram may be lost for other reasons
            s.sendto(b"hi", (addr, port))
            try:
                return s.recvfrom(64)[0] == b"ok"
            except socket.timeout:
                continue
        return False


PROBES = {
    "TCP": probe_stream,
    "UDP": probe_udp,
    "SCTP": lambda addr, port, timeout: probe_stream(addr, port, timeout, socket.IPPROTO_SCTP),
}


def probe(proto, port, timeout, addr):
    check = PROBES[proto]  # an unknown protocol stops the prober: never a quiet "closed"
    try:
        return check(addr, port, timeout)
    except OSError:
        return False


def main():
    servers = []
    for port in PORTS:
        servers.append((serve_stream, listener(port)))
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.bind(("0.0.0.0", port))
        servers.append((serve_udp, udp))
        if has_sctp():
            servers.append((serve_stream, listener(port, socket.IPPROTO_SCTP)))
    for serve, s in servers:
        threading.Thread(target=serve, args=(s,), daemon=True).start()
    print("ready", flush=True)
    pool = ThreadPoolExecutor(16)
    for line in sys.stdin:
        _, proto, port, timeout, *addrs = line.split()
        results = pool.map(lambda a: probe(proto, int(port), float(timeout), a), addrs)
        print(" ".join(f"{a}={int(ok)}" for a, ok in zip(addrs, results)), flush=True)


main()
