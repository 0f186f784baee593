"""The node's dataplane as the agent uses it: netlink in the host netns, from any thread.

pyroute2 0.9 keeps a socket per thread behind each IPRoute and opens it lazily: an
IPRoute created in one thread and used from another talks to the *calling* thread's
netns. CNI requests are served on many threads, so every operation opens its socket
in the thread that uses it, with that thread inside the host netns, and closes it
there (~0.3 ms). No IPRoute ever crosses a thread.
"""

from __future__ import annotations

from contextlib import contextmanager

from pyroute2 import IPRoute

from routed.dataplane import pod as podnet
from routed.dataplane import routes, sysctl
from routed.dataplane.netns import in_netns


class HostDataplane:
    def __init__(self, netns: str | None):
        self.netns = netns

    @contextmanager
    def ipr(self):
        """An IPRoute for this thread, in the host netns, for one operation."""
        with in_netns(self.netns):
            sock = IPRoute()
            try:
                yield sock
            finally:
                sock.close()

    # -- PodNetwork (cni.plugin) ---------------------------------------------------

    def setup(self, netns: str, ifname: str, host_ifname: str, ips: list, mtu: int) -> dict:
        with self.ipr() as ipr:
            pod = podnet.setup_pod(ipr, self.netns, netns, ifname, host_ifname, ips, mtu=mtu)
        return {"mac": pod.mac, "host_mac": pod.host_mac}

    def teardown(self, netns: str | None, ifname: str, host_ifname: str, ips: list | None = None) -> None:
        with self.ipr() as ipr:
            podnet.teardown_pod(ipr, self.netns, netns, ifname, host_ifname, ips)

    def check(self, netns: str, ifname: str, host_ifname: str, ips: list, mtu: int) -> list[str]:
        with self.ipr() as ipr:
            return podnet.check_pod(ipr, self.netns, netns, ifname, host_ifname, ips, mtu=mtu)

    # -- node-level ------------------------------------------------------------------

    def sync_blackholes(self, cidrs: set[str]):
        with self.ipr() as ipr:
            return routes.sync_blackholes(ipr, cidrs)

    def set_sysctls(self, values: dict[str, str]) -> None:
        sysctl.set_sysctls(self.netns, values)

    def close(self) -> None:
        pass  # nothing is held between operations
