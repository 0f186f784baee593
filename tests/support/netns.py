"""Network namespaces for tests: named with a prefix, always removed."""

from __future__ import annotations

import os
import secrets
import subprocess
import time

PREFIX = "rt-"  # the lab uses rl-; the two never meet


def sh(*args: str, check: bool = True, netns: str | None = None) -> subprocess.CompletedProcess:
    cmd = (["ip", "netns", "exec", netns] if netns else []) + list(args)
    return subprocess.run(cmd, check=check, capture_output=True, text=True)


class Netns:
    def __init__(self, role: str):
        self.name = f"{PREFIX}{role}-{secrets.token_hex(3)}"
        sh("ip", "netns", "add", self.name)
        sh("ip", "link", "set", "lo", "up", netns=self.name)

    @property
    def path(self) -> str:
        return f"/var/run/netns/{self.name}"

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return sh(*args, check=check, netns=self.name)

    def delete(self) -> None:
        """Remove the namespace; a namespace that will not go is an error, never silent."""
        for _ in range(50):
            if not os.path.exists(self.path):
                return
            result = sh("ip", "netns", "del", self.name, check=False)
            if result.returncode == 0:
                return
            time.sleep(0.1)  # a process of ours may still be leaving it
        raise RuntimeError(f"cannot delete netns {self.name}: {result.stderr.strip()}")


def node_host(address: str = "192.0.2.10/24") -> Netns:
    """A namespace playing a node's host: the node address on an uplink that carries the
    default route, as on a real node (proxy ARP answers for the pods' gateway
    169.254.1.1 only when the host has a route to it)."""
    ns = Netns("host")
    try:
        ns.run("ip", "link", "add", "uplink0", "type", "veth", "peer", "name", "uplink1")
        ns.run("ip", "link", "set", "uplink0", "up")
        ns.run("ip", "link", "set", "uplink1", "up")
        ns.run("ip", "addr", "add", address, "dev", "uplink0")
        ns.run("ip", "route", "add", "default", "dev", "uplink0")
    except Exception:
        ns.delete()
        raise
    return ns
