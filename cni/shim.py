#!/usr/bin/python3 -IS
"""routed's CNI plugin as kubelet executes it: a thin shim in front of the node agent.

One file, standard library only, no import from the routed package: it is copied to
/opt/cni/bin/routed and runs twice per pod, so start-up time is most of its cost.
It imports only `_socket` (the C module; `socket` and `json` would add ~11 ms) and
leaves every check of the request to the agent, which holds etcd and netlink warm.

Wire format (cni/wire.py is the agent's side): the CNI_* environment as KEY=VALUE
items separated by NUL, two NULs, then the network configuration as given on stdin.
The agent answers the exit code, a newline, and what to print.

When the agent cannot be reached:
- ADD, CHECK and GC answer CNI error 11 (try again later), naming the socket;
- STATUS answers error 50 (plugin not available);
- DEL succeeds: the request is written to a spool directory that the agent replays,
  so a pod being deleted is never stuck and no address is lost.
"""

import _socket
import os
import sys
import time

DEFAULT_SOCKET = "/var/run/routed/cni.sock"
DEFAULT_SPOOL = "/var/lib/routed/cni-spool"
SUPPORTED_VERSIONS = '["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]'
CONNECT_TIMEOUT = 2.0
ANSWER_TIMEOUT = 120.0  # an ADD may wait for etcd; kubelet's own timeout is longer


def conf_string(conf, key):
    """The string value of a top-level key of the JSON configuration, or None.

    A scan instead of json.loads: the agent parses the configuration properly; the
    shim only needs where the agent is (agent_socket, spool_dir) and the version.
    """
    at = conf.find('"%s"' % key)
    if at < 0:
        return None
    colon = conf.find(":", at + len(key) + 2)
    rest = conf[colon + 1:].lstrip() if colon >= 0 else ""
    if not rest.startswith('"'):
        return None
    out, i = [], 1
    while i < len(rest):
        char = rest[i]
        if char == "\\" and i + 1 < len(rest):
            out.append(rest[i + 1])
            i += 2
        elif char == '"':
            return "".join(out)
        else:
            out.append(char)
            i += 1
    return None


def error(version, code, msg):
    msg = msg.replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ")
    return '{"cniVersion": "%s", "code": %d, "msg": "%s"}' % (version, code, msg)


def encode(environ, stdin):
    items = "\0".join("%s=%s" % (k, v) for k, v in sorted(environ.items()) if k.startswith("CNI_"))
    return (items + "\0\0" + stdin).encode("utf-8", "surrogateescape")


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


def ask_agent(path, request):
    """Send one request; returns (exit code, text to print). Raises OSError if unreachable."""
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        _connect(sock, path)
        sock.settimeout(ANSWER_TIMEOUT)
        sock.sendall(request)
        sock.shutdown(_socket.SHUT_WR)
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        sock.close()
    code, _, out = b"".join(chunks).partition(b"\n")
    if not code.isdigit():
        raise OSError("the agent closed the connection without an answer")
    return int(code), out.decode("utf-8", "replace")


def spool(directory, environ, request):
    """Keep a DEL for the agent to replay: written whole (rename), so a crash leaves no half file."""
    os.makedirs(directory, mode=0o700, exist_ok=True)
    name = "%s-%s-%d.req" % (environ.get("CNI_CONTAINERID", "unknown")[:64].replace("/", "_"),
                             environ.get("CNI_IFNAME", "if").replace("/", "_"), time.time_ns())
    tmp = os.path.join(directory, "." + name)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, request)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, os.path.join(directory, name))


def _parses(conf):
    """Only on the error path, where start-up time no longer matters."""
    import json

    try:
        return isinstance(json.loads(conf), dict)
    except ValueError:
        return False


def run(environ, stdin, stdout):
    """The whole plugin; returns the exit code. Arguments instead of globals, for tests."""
    command = environ.get("CNI_COMMAND", "")
    if command == "VERSION":
        stdout.write('{"cniVersion": "1.1.0", "supportedVersions": %s}' % SUPPORTED_VERSIONS)
        return 0
    version = conf_string(stdin, "cniVersion") or "1.1.0"
    if not version.replace(".", "").isdigit():
        version = "1.1.0"
    if not stdin.lstrip().startswith("{"):  # nothing to forward: without a config there is no socket path
        stdout.write(error(version, 6, "network configuration on stdin is not a JSON object"))
        return 1
    path = conf_string(stdin, "agent_socket") or environ.get("ROUTED_CNI_SOCKET") or DEFAULT_SOCKET
    request = encode(environ, stdin)
    try:
        code, answer = ask_agent(path, request)
    except OSError as err:
        reason = err.strerror or str(err)
        if not _parses(stdin):  # "try again later" would never succeed for this one
            stdout.write(error(version, 6, "network configuration on stdin is not valid JSON"))
            return 1
        if command == "DEL":
            try:
                spool(conf_string(stdin, "spool_dir") or DEFAULT_SPOOL, environ, request)
                return 0
            except OSError as spool_err:
                stdout.write(error(version, 5, "routed agent unreachable at %s (%s) and the DEL could not be "
                                               "spooled: %s" % (path, reason, spool_err)))
                return 1
        code = 50 if command == "STATUS" else 11
        stdout.write(error(version, code, "routed agent is not reachable at %s: %s" % (path, reason)))
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
