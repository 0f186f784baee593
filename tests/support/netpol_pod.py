"""Run inside a pod's netns: serve TCP and UDP on 80 and 81 (or the ports given as
arguments; answering "ok"), and probe other pods on request. One line in, one line out:

    probe TCP 80 1.0 10.66.0.2 10.66.0.3   ->   10.66.0.2=1 10.66.0.3=0
"""

import socket
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

PORTS = tuple(int(p) for p in sys.argv[1:]) or (80, 81)


def serve_tcp(port):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port))
    s.listen(64)
    while True:
        conn, _ = s.accept()
        try:
            conn.sendall(b"ok")
        finally:
            conn.close()


def serve_udp(port):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", port))
    while True:
        data, peer = s.recvfrom(64)
        s.sendto(b"ok", peer)


def probe(proto, port, timeout, addr):
    try:
        if proto == "TCP":
            with socket.create_connection((addr, port), timeout=timeout) as s:
                return s.recv(2) == b"ok"
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(timeout)
            for _ in range(2):  # one retry: a datagram may be lost for other reasons
                s.sendto(b"hi", (addr, port))
                try:
                    return s.recvfrom(64)[0] == b"ok"
                except socket.timeout:
                    continue
            return False
    except OSError:
        return False


def main():
    for port in PORTS:
        threading.Thread(target=serve_tcp, args=(port,), daemon=True).start()
        threading.Thread(target=serve_udp, args=(port,), daemon=True).start()
    print("ready", flush=True)
    pool = ThreadPoolExecutor(16)
    for line in sys.stdin:
        _, proto, port, timeout, *addrs = line.split()
        results = pool.map(lambda a: probe(proto, int(port), float(timeout), a), addrs)
        print(" ".join(f"{a}={int(ok)}" for a, ok in zip(addrs, results)), flush=True)


main()
