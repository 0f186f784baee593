"""The node's dataplane as the agent uses it: netlink in the host netns, from any thread.

pyroute2 0.9 keeps a socket per thread behind each IPRoute and opens it lazily: an
IPRoute created in one thread and used from another talks to the *calling* thread's
netns. CNI requests are served on many threads, so every operation opens its socket
in the thread that uses it, with that thread inside the host netns, and closes it
there (~0.3 ms). No IPRoute ever crosses a thread.
"""

from __future__ import annotations

import ipaddress
import logging
import queue
import threading
from contextlib import contextmanager

from pyroute2 import IPRoute

from routed.dataplane.constants import ROUTE_PROTO_BGP
from routed.dataplane.errors import DataplaneError
from routed.errors import RoutedError

from routed.dataplane import bulk, encap
from routed.dataplane import pod as podnet
from routed.dataplane import routes, sysctl
from routed.dataplane.netns import in_netns

log = logging.getLogger("routed.dataplane")


class HostDataplane:
    def __init__(self, netns: str | None):
        self.netns = netns
        self.nic = ""
        self.local_ip = ""
        self._vxlan_peers: list[str] = []
        self._doomed: queue.Queue = queue.Queue()
        threading.Thread(target=self._delete_links, name="veth-deleter", daemon=True).start()

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

    # The pod operations speak rtnetlink themselves (routed.dataplane.rtnl): no pyroute2
    # socket is needed for them, only the host netns.

    def setup(self, netns: str, ifname: str, host_ifname: str, ips: list, mtu: int) -> dict:
        pod = podnet.setup_pod(None, self.netns, netns, ifname, host_ifname, ips, mtu=mtu)
        return {"mac": pod.mac, "host_mac": pod.host_mac}

    def teardown(self, netns: str | None, ifname: str, host_ifname: str, ips: list | None = None) -> None:
        """Routes go now; the veth, whose deletion takes the kernel 15-20 ms, goes in the
        background. Safe: nothing routes to it any more, and a new sandbox of the same pod
        gets a new veth (delete_link checks the index still names this one)."""
        index = podnet.detach_pod(None, self.netns, netns, ifname, host_ifname, ips)
        if index is not None:
            self._doomed.put((index, host_ifname))

    def _delete_links(self) -> None:
        while True:
            index, name = self._doomed.get()
            try:
                with in_netns(self.netns):
                    podnet.delete_link(None, index, name)
            except DataplaneError as err:
                log.warning("cannot delete %s: %s", name, err)
            finally:
                self._doomed.task_done()

    def wait_idle(self) -> None:
        """Until every queued veth deletion is done (tests, shutdown)."""
        self._doomed.join()

    def check(self, netns: str, ifname: str, host_ifname: str, ips: list, mtu: int) -> list[str]:
        return podnet.check_pod(None, self.netns, netns, ifname, host_ifname, ips, mtu=mtu)

    # -- node-level ------------------------------------------------------------------

    def sync_blackholes(self, cidrs: set[str]):
        with self.ipr() as ipr:
            return routes.sync_blackholes(ipr, cidrs)

    def set_sysctls(self, values: dict[str, str]) -> None:
        sysctl.set_sysctls(self.netns, values)

    # -- routes learned over BGP ---------------------------------------------------------

    def use_uplink(self, address: str) -> str:
        """Find the interface holding the node address: direct routes and VXLAN use it."""
        ip = str(ipaddress.ip_interface(address).ip)
        with self.ipr() as ipr:
            for addr in ipr.get_addr(address=ip):
                self.nic = ipr.get_links(addr["index"])[0].get_attr("IFLA_IFNAME")
                self.local_ip = ip
                return self.nic
        raise RoutedError(f"no interface holds the node address {ip}")

    def sync_learned(self, routes: list) -> str:
        """Make the kernel's proto-202 routes equal to routes, with the devices they need."""
        vxlan_peers = sorted({r.gateway for r in routes if r.encapsulation == "vxlan"})
        if vxlan_peers:
            encap.ensure_vxlan(self.netns, self.local_ip, self.nic)
        if vxlan_peers or self._vxlan_peers:
            encap.sync_vxlan_peers(self.netns, vxlan_peers)
            self._vxlan_peers = vxlan_peers
        if any(r.encapsulation == "ipip" for r in routes):
            try:
                encap.ensure_ipip(self.netns)
            except DataplaneError as err:
                log.error("%s: IPIP routes are skipped", err)
                routes = [r for r in routes if r.encapsulation != "ipip"]
        wanted = [bulk.Route(r.dst, gateway=r.gateway, dev=r.dev, onlink=r.onlink, proto=r.proto) for r in routes]
        result = bulk.sync(self.netns, wanted, proto=ROUTE_PROTO_BGP)
        for route, reason in result.failed:
            log.warning("route %s not installed: %s", route.dst, reason)
        if result.added or result.removed or result.failed:
            return f"+{len(result.added)} -{len(result.removed)} failed {len(result.failed)}"
        return ""

    def close(self) -> None:
        self.wait_idle()  # veths queued for deletion go before the agent does
