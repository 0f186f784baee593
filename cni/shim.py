#!/usr/bin/python3 -IS
"""routed's CNI plugin as kubelet executes it: a thin shim in front of the node agent.

Standard library only, and no import from the routed package: this one file is copied
to /opt/cni/bin/routed and must start in ~20 ms. It forwards the request (the CNI_*
environment and the network configuration on stdin) over a unix socket to the agent,
which holds the etcd and netlink clients warm, and prints the agent's answer.

When the agent cannot be reached:
- ADD, CHECK and GC answer CNI error 11 (try again later), naming the socket;
- STATUS answers error 50 (plugin not available);
- DEL succeeds: the request is written to a spool directory that the agent replays
  when it starts, so a pod being deleted is never stuck and no address is lost.
"""

import json
import os
import socket
import sys
import time

DEFAULT_SOCKET = "/var/run/routed/cni.sock"
DEFAULT_SPOOL = "/var/lib/routed/cni-spool"
SUPPORTED_VERSIONS = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]
CONNECT_TIMEOUT = 2.0
ANSWER_TIMEOUT = 120.0  # an ADD may wait for etcd; kubelet's own timeout is longer


def _config(stdin):
    """The network configuration, or None when stdin is not a JSON object."""
    try:
        doc = json.loads(stdin)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def _error(version, code, msg):
    return json.dumps({"cniVersion": version, "code": code, "msg": msg})


def _connect(sock, path):
    """Connect, waiting while the agent's accept queue is full (EAGAIN on a unix socket
    with a timeout) instead of mistaking a busy agent for a missing one."""
    deadline = time.monotonic() + CONNECT_TIMEOUT
    while True:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            sock.connect(path)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.005)


def ask_agent(path, env, stdin):
    """Send one request; returns (exit code, stdout text). Raises OSError if unreachable."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        _connect(sock, path)
        sock.settimeout(ANSWER_TIMEOUT)
        sock.sendall(json.dumps({"env": env, "stdin": stdin}).encode())
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    answer = json.loads(b"".join(chunks) or b"{}")
    return int(answer.get("code", 1)), answer.get("stdout", "")


def spool(directory, env, stdin):
    """Keep a DEL for the agent to replay: written whole (rename), so a crash leaves no half file."""
    os.makedirs(directory, mode=0o700, exist_ok=True)
    name = "%s-%s-%d.json" % (env.get("CNI_CONTAINERID", "unknown")[:64].replace("/", "_"),
                              env.get("CNI_IFNAME", "if").replace("/", "_"), time.time_ns())
    tmp = os.path.join(directory, "." + name)
    with open(tmp, "w") as f:
        json.dump({"env": env, "stdin": stdin}, f)
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, os.path.join(directory, name))


def run(environ, stdin, stdout):
    """The whole plugin; returns the exit code. Arguments instead of globals, for tests."""
    command = environ.get("CNI_COMMAND", "")
    if command == "VERSION":
        stdout.write(json.dumps({"cniVersion": "1.1.0", "supportedVersions": SUPPORTED_VERSIONS}))
        return 0
    conf = _config(stdin)
    if conf is None:  # nothing to forward: without a config there is not even a socket path
        stdout.write(_error("1.1.0", 6, "network configuration on stdin is not a JSON object"))
        return 1
    version = conf.get("cniVersion") if isinstance(conf.get("cniVersion"), str) else "1.1.0"
    path = conf.get("agent_socket") or environ.get("ROUTED_CNI_SOCKET") or DEFAULT_SOCKET
    env = {k: v for k, v in environ.items() if k.startswith("CNI_")}
    try:
        code, answer = ask_agent(path, env, stdin)
    except (OSError, ValueError) as err:
        reason = getattr(err, "strerror", None) or str(err)
        if command == "DEL":
            try:
                spool(conf.get("spool_dir") or DEFAULT_SPOOL, env, stdin)
                return 0
            except OSError as spool_err:
                stdout.write(_error(version, 5, "routed agent unreachable at %s (%s) and the DEL could not be "
                                                "spooled: %s" % (path, reason, spool_err)))
                return 1
        code = 50 if command == "STATUS" else 11
        stdout.write(_error(version, code, "routed agent is not reachable at %s: %s" % (path, reason)))
        return 1
    stdout.write(answer)
    return code


def main():
    stdin = sys.stdin.read()
    code = run(os.environ, stdin, sys.stdout)
    sys.stdout.flush()
    return code


if __name__ == "__main__":
    sys.exit(main())
