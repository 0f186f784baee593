"""Network namespaces wired as a small data centre: racks (a bridge each), nodes on
them, routers between them. Used by `routed lab` (prefix rl-) and the tests (rt-).

Everything is named with the caller's prefix and lives only inside namespaces it
creates, so removing those namespaces removes everything.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import subprocess
import time

from routed.dataplane.constants import WIREGUARD_DEV
from routed.errors import RoutedError

NETNS_DIR = "/var/run/netns"


def ip(*args: str, netns: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    cmd = ["ip", *(["-n", netns] if netns else []), *args]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise RoutedError(f"{' '.join(cmd)}: {result.stderr.strip()}")
    return result


def run_in(netns: str, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(["ip", "netns", "exec", netns, *cmd], capture_output=True, text=True)
    if check and result.returncode != 0:
        raise RoutedError(f"{netns}: {' '.join(cmd)}: {(result.stderr or result.stdout).strip()}")
    return result


def add_netns(name: str, forward: bool = True) -> str:
    if not os.path.exists(f"{NETNS_DIR}/{name}"):
        ip("netns", "add", name)
    ip("link", "set", "lo", "up", netns=name)
    if forward:
        # Routers and nodes forward (pods do not); proxy ARP answers are per interface (set by the agent).
        run_in(name, "sysctl", "-qw", "net.ipv4.ip_forward=1")
    return name


def del_netns(name: str) -> None:
    # wireguard-go keeps a namespace alive (its sockets are in it) until its device goes.
    if os.path.exists(f"{NETNS_DIR}/{name}"):
        ip("-n", name, "link", "del", WIREGUARD_DEV, check=False)
    for _ in range(50):
        if not os.path.exists(f"{NETNS_DIR}/{name}"):
            return
        if ip("netns", "del", name, check=False).returncode == 0:
            return
        time.sleep(0.1)
    raise RoutedError(f"cannot delete netns {name}")


def list_netns(prefix: str) -> list[str]:
    try:
        return sorted(n for n in os.listdir(NETNS_DIR) if n.startswith(prefix))
    except FileNotFoundError:
        return []


def add_bridge(netns: str, name: str = "br0") -> None:
    ip("link", "add", name, "type", "bridge", netns=netns)
    ip("link", "set", name, "up", netns=netns)


def plug(netns: str, ifname: str, switch: str, address: str | None = None, bridge: str = "br0",
         mtu: int = 1500) -> None:
    """A veth from netns (named ifname, with address) to the bridge in the switch namespace."""
    peer = "v" + hashlib.sha1(f"{netns}/{ifname}".encode()).hexdigest()[:12]
    ip("link", "add", ifname, "netns", netns, "mtu", str(mtu), "type", "veth", "peer", "name", peer,
       "netns", switch, "mtu", str(mtu))
    ip("link", "set", peer, "master", bridge, "up", netns=switch)
    ip("link", "set", ifname, "up", netns=netns)
    if address:
        ip("addr", "add", address, "dev", ifname, netns=netns)


def add_address6(netns: str, ifname: str, address: str) -> None:
    """An IPv6 address (dual stack), usable at once: nodad (a lab address is ours alone;
    DAD would keep it tentative for a second, failing the first session attempts)."""
    ip("-6", "addr", "add", address, "dev", ifname, "nodad", netns=netns)
    run_in(netns, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")


def default_route(netns: str, gateway: str | None, dev: str) -> None:
    args = ["route", "replace", "default", *(["via", gateway] if gateway else []), "dev", dev]
    ip(*args, netns=netns)


def host_address(subnet: str, index: int) -> str:
    net = ipaddress.ip_network(subnet)
    return f"{net.network_address + index}/{net.prefixlen}"
