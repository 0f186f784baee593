"""Shared helpers and fixtures for the netns tests (root only).

Everything happens inside network namespaces named ``rt-<random>`` that the fixtures
create and always remove; a "host" netns plays the node, others play pods. Nothing here
touches the real host's interfaces, routes or sysctls (every ``ip`` call has ``-n``).
Import the fixtures into a test module: ``from tests.netns.nsutil import host, netns``.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import time
from dataclasses import dataclass

import pytest

# Addresses the host netns gets on lo, for "pod pings the host".
HOST_V4 = "10.99.0.1"
HOST_V6 = "fd00:99::1"


def require_root() -> None:
    if os.geteuid() != 0:
        pytest.fail("netns tests need root (network namespaces)", pytrace=False)


def run(*cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=check, capture_output=True, text=True)


def ip(ns: str, *args: str, check: bool = True) -> str:
    return run("ip", "-n", ns, *args, check=check).stdout


def ip_json(ns: str, *args: str) -> list[dict]:
    out = run("ip", "-j", "-n", ns, *args).stdout.strip()
    return json.loads(out) if out else []


def nsexec(ns: str, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    return run("ip", "netns", "exec", ns, *cmd, check=check)


def read_sysctl(ns: str, key: str) -> str:
    return nsexec(ns, "cat", f"/proc/sys/{key}").stdout.strip()


def ping(ns: str, addr: str, tries: int = 3) -> bool:
    """One echo, retried a little: the first packet may wait for ARP/ND."""
    for _ in range(tries):
        if nsexec(ns, "ping", "-c1", "-W1", addr, check=False).returncode == 0:
            return True
    return False


def links(ns: str) -> dict[str, dict]:
    return {l["ifname"]: l for l in ip_json(ns, "link", "show")}


def routes(ns: str, *args: str) -> list[dict]:
    return ip_json(ns, "route", "show", *args)


def wait_until(predicate, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


class NetnsFactory:
    """Creates ``rt-<role><random>`` namespaces and removes them all in ``cleanup``."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def __call__(self, role: str = "") -> str:
        name = f"rt-{role}{secrets.token_hex(4)}"
        run("ip", "netns", "add", name)
        self.names.append(name)
        return name

    def path(self, name: str) -> str:
        return f"/var/run/netns/{name}"

    def cleanup(self) -> None:
        for name in reversed(self.names):
            if os.path.exists(self.path(name)):
                run("ip", "netns", "del", name, check=False)


@pytest.fixture
def netns():
    """Factory: ``netns("pod")`` -> name of a fresh netns, removed at teardown."""
    require_root()
    factory = NetnsFactory()
    try:
        yield factory
    finally:
        factory.cleanup()


@dataclass
class Host:
    name: str  # the netns playing the node


def make_host(netns, default_route: bool = True) -> str:
    """A "node" netns: lo up with HOST_V4/HOST_V6, an uplink veth pair (carrying the
    default route unless ``default_route`` is False: an air-gapped node), forwarding on."""
    name = netns("host")
    ip(name, "link", "set", "lo", "up")
    ip(name, "addr", "add", f"{HOST_V4}/32", "dev", "lo")
    ip(name, "addr", "add", f"{HOST_V6}/128", "dev", "lo")
    # This kernel has no dummy module: a veth pair with both ends here stands in for a NIC.
    ip(name, "link", "add", "uplink0", "type", "veth", "peer", "name", "uplink1")
    ip(name, "link", "set", "uplink0", "up")
    ip(name, "link", "set", "uplink1", "up")
    if default_route:
        ip(name, "route", "add", "default", "dev", "uplink0")
    nsexec(name, "sysctl", "-qw", "net.ipv4.ip_forward=1")
    nsexec(name, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")
    return name


@pytest.fixture
def host(netns):
    """A "node" netns with a default route, as on most nodes."""
    return Host(name=make_host(netns))


@pytest.fixture
def airgapped_host(netns):
    """A "node" netns without any default route (Calico #3270: proxy ARP answers for
    169.254.1.1 only when the host has a route to it through another interface)."""
    return Host(name=make_host(netns, default_route=False))
