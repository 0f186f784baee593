"""Sysctls of a given netns, written through /proc/sys.

/proc/sys/net shows the netns of the thread that opens the file, so for another netns
the thread switches into it (``in_netns``) for the duration of the reads/writes.
Keys are written with slashes ("net/ipv4/conf/cali1234/proxy_arp") because interface
names may contain dots; a key without any slash is taken as the dotted form.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from routed.dataplane.errors import DataplaneError
from routed.dataplane.netns import NetnsTarget, in_netns


def _path(key: str) -> str:
    if "/" not in key:
        key = key.replace(".", "/")
    return "/proc/sys/" + key.lstrip("/")


def set_sysctls(netns: NetnsTarget, values: Mapping[str, str]) -> None:
    """Write every key in ``netns`` (None = the current netns). Stops at the first
    failure with a DataplaneError naming the key."""
    with in_netns(netns):
        for key, value in values.items():
            try:
                with open(_path(key), "w") as f:
                    f.write(str(value))
            except OSError as err:
                raise DataplaneError(
                    f"sysctl {key}={value}: {err.strerror}", errno=err.errno
                ) from err


def get_sysctls(netns: NetnsTarget, keys: Iterable[str]) -> dict[str, str | None]:
    """Current values (stripped); None for a key that does not exist."""
    out: dict[str, str | None] = {}
    with in_netns(netns):
        for key in keys:
            try:
                with open(_path(key)) as f:
                    out[key] = f.read().strip()
            except FileNotFoundError:
                out[key] = None
    return out


def node_sysctls(ipv4: bool = True, ipv6: bool = False) -> dict[str, str]:
    """What the node itself needs to route pod traffic (the agent sets them at start)."""
    out = {}
    if ipv4:
        out["net/ipv4/ip_forward"] = "1"
    if ipv6:
        # IPv6 forwarding is decided by conf/all, not per interface.
        out["net/ipv6/conf/all/forwarding"] = "1"
    return out


def host_veth_sysctls(ifname: str, ipv4: bool = True, ipv6: bool = False) -> dict[str, str]:
    """Per-interface settings of a host-side veth, Calico's set plus accept_dad=0."""
    out = {}
    if ipv4:
        # The pod ARPs for 169.254.1.1, which exists nowhere: proxy_arp makes the host
        # veth answer with its own MAC, and proxy_delay=0 answers at once instead of
        # after a random delay of up to 0.8 s.
        out[f"net/ipv4/conf/{ifname}/proxy_arp"] = "1"
        out[f"net/ipv4/neigh/{ifname}/proxy_delay"] = "0"
        out[f"net/ipv4/conf/{ifname}/forwarding"] = "1"
    if ipv6:
        out[f"net/ipv6/conf/{ifname}/proxy_ndp"] = "1"
        out[f"net/ipv6/conf/{ifname}/forwarding"] = "1"
        # The pod's gateway is this veth's link-local address. With DAD it stays
        # tentative (unanswerable) for ~1 s after the link comes up; on a point-to-point
        # link whose only neighbour is the pod there is nothing to detect. Written
        # before the pod end comes up, i.e. before the address is generated.
        out[f"net/ipv6/conf/{ifname}/accept_dad"] = "0"
    return out
