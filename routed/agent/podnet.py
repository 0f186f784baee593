"""The node's dataplane as the agent uses it: netlink sockets into the host netns, kept warm.

A pyroute2 socket must not serve two threads at once, and CNI requests arrive in
parallel, so the agent keeps a small pool of them.
"""

from __future__ import annotations

import queue
from contextlib import contextmanager

from routed.dataplane import pod as podnet
from routed.dataplane import routes, sysctl
from routed.dataplane.pod import open_host


class HostDataplane:
    def __init__(self, netns: str | None, sockets: int = 4):
        self.netns = netns
        self._pool: queue.Queue = queue.Queue()
        for _ in range(sockets):
            self._pool.put(open_host(netns))

    @contextmanager
    def ipr(self):
        sock = self._pool.get()
        try:
            yield sock
        finally:
            self._pool.put(sock)

    # -- PodNetwork (cni.plugin) ---------------------------------------------------

    def setup(self, netns: str, ifname: str, host_ifname: str, ips: list, mtu: int) -> dict:
        with self.ipr() as ipr:
            pod = podnet.setup_pod(ipr, self.netns, netns, ifname, host_ifname, ips, mtu=mtu)
        return {"mac": pod.pod_mac, "host_mac": pod.host_mac}

    def teardown(self, netns: str | None, ifname: str, host_ifname: str) -> None:
        with self.ipr() as ipr:
            podnet.teardown_pod(ipr, self.netns, netns, ifname, host_ifname)

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
        while not self._pool.empty():
            self._pool.get().close()
