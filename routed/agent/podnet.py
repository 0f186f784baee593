"""The node's dataplane as the agent uses it: netlink in the host netns, from any thread.

CNI requests are served on many threads. Every operation opens its own netlink socket
in the host netns (rtnl.Rtnl: the netns is fixed when the socket is created, with the
opening thread switched into it for that moment) and closes it when done: no socket is
shared between threads, and none can end up in a pod's netns.
"""

from __future__ import annotations

import ipaddress
import logging
import queue
import socket
import threading
from collections import Counter

from routed.dataplane import bulk, encap, sysctl
from routed.dataplane import mtu as mtus
from routed.dataplane import pod as podnet
from routed.dataplane.constants import ROUTE_PROTO, ROUTE_PROTO_BGP
from routed.dataplane.errors import DataplaneError
from routed.dataplane.rtnl import Route, Rtnl
from routed.errors import RoutedError

log = logging.getLogger("routed.dataplane")


class HostDataplane:
    def __init__(self, netns: str | None):
        self.netns = netns
        self.nic = ""
        self.local_ip = ""
        self._vxlan_peers: list[str] = []
        self.nic6: str | None = None  # the interface holding the node's IPv6 address (dual stack)
        self.local_ip6: str | None = None
        self._vxlan6_peers: list[str] = []
        self.mtus = mtus.choose(None, ())  # the agent sets the node's (Agent.refresh_mtu)
        self._doomed: queue.Queue = queue.Queue()
        self._dying: Counter = Counter()  # host veth name -> deletions queued
        self._dying_changed = threading.Condition()
        threading.Thread(target=self._delete_links, name="veth-deleter", daemon=True).start()

    # -- PodNetwork (cni.plugin) ---------------------------------------------------

    def setup(self, netns: str, ifname: str, host_ifname: str, ips: list, mtu: int) -> dict:
        # The pod's DEL may just have queued its old veth: an ADD into the same netns (a
        # runtime retrying) would find that veth's pod end still there. A few ms at most.
        with self._dying_changed:
            self._dying_changed.wait_for(lambda: not self._dying[host_ifname], timeout=10)
        pod = podnet.setup_pod(self.netns, netns, ifname, host_ifname, ips, mtu=mtu)
        return {"mac": pod.mac, "host_mac": pod.host_mac}

    def teardown(self, netns: str | None, ifname: str, host_ifname: str, ips: list | None = None) -> None:
        """Routes go now; the veth, whose deletion takes the kernel 15-20 ms, goes in the
        background. Safe: nothing routes to it any more, and a new sandbox of the same pod
        gets a new veth (delete_link checks the index still names this one)."""
        index = podnet.detach_pod(self.netns, netns, host_ifname, ips)
        if index is not None:
            with self._dying_changed:
                self._dying[host_ifname] += 1
            self._doomed.put((index, host_ifname))

    def _delete_links(self) -> None:
        while True:
            index, name = self._doomed.get()
            try:
                podnet.delete_link(self.netns, index, name)
            except DataplaneError as err:
                log.warning("cannot delete %s: %s", name, err)
            finally:
                with self._dying_changed:
                    self._dying[name] -= 1
                    if self._dying[name] <= 0:
                        del self._dying[name]
                    self._dying_changed.notify_all()
                self._doomed.task_done()

    def wait_idle(self) -> None:
        """Until every queued veth deletion is done (tests, shutdown)."""
        self._doomed.join()

    def check(self, netns: str, ifname: str, host_ifname: str, ips: list, mtu: int) -> list[str]:
        return podnet.check_pod(self.netns, netns, ifname, host_ifname, ips, mtu=mtu)

    # -- node-level ------------------------------------------------------------------

    def sync_blackholes(self, cidrs: set[str]) -> tuple[set[str], set[str]]:
        """Make the node's block blackholes (``blackhole <block> proto ROUTE_PROTO``) equal
        to ``cidrs``: the same bulk sync as learned routes, limited to our blackholes
        (the pods' /32 routes share the proto). Returns (added, removed) CIDRs; a route
        that fails is logged and the rest still go in.

        The blackhole keeps packets for unallocated addresses of our blocks from leaving
        the node by the default route (and looping back to us); pods' /32 routes are
        more specific and win."""
        wanted = [Route(cidr, kind="blackhole", proto=ROUTE_PROTO) for cidr in cidrs]
        result = bulk.sync(self.netns, wanted, proto=ROUTE_PROTO, kind="blackhole")
        for route, reason in result.failed:
            log.warning("blackhole %s not installed: %s", route.dst, reason)
        return {r.dst for r in result.added}, {r.dst for r in result.removed}

    def set_sysctls(self, values: dict[str, str]) -> None:
        sysctl.set_sysctls(self.netns, values)

    # -- routes learned over BGP ---------------------------------------------------------

    def default_route_address(self) -> str:
        """The first IPv4 address (with prefix) of the interface the default route uses."""
        found = self._default_route_address(socket.AF_INET, "0.0.0.0/0")
        if found is None:
            raise RoutedError("cannot autodetect the node address: no IPv4 default route; "
                              "pass --node-ip ADDR/PREFIX")
        return found

    def default_route_address6(self) -> str | None:
        """The first global IPv6 address (with prefix) of the interface the IPv6 default
        route uses; None when there is no such route (the node is IPv4 only)."""
        return self._default_route_address(socket.AF_INET6, "::/0")

    def _default_route_address(self, family: int, default: str) -> str | None:
        with Rtnl(self.netns) as sock:
            names = sock.links()
            index = {name: i for i, name in names.items()}
            for route in sock.routes(family, table=254, ifnames=names):
                if route.dst == default and route.dev in index:
                    for addr in sock.addresses(family, index=index[route.dev]):
                        if family == socket.AF_INET or not ipaddress.ip_address(addr.address).is_link_local:
                            return f"{addr.address}/{addr.prefixlen}"
        return None

    def link_names(self) -> set[str]:
        """The names of the node's interfaces."""
        with Rtnl(self.netns) as sock:
            return set(sock.links().values())

    def address_with_prefix(self, ip: str) -> str | None:
        """``ip`` with the prefix of the interface address that is ``ip`` (the subnet
        decides CrossSubnet), None when no interface holds it."""
        family = socket.AF_INET6 if ipaddress.ip_address(ip).version == 6 else socket.AF_INET
        with Rtnl(self.netns) as sock:
            for addr in sock.addresses(family):
                if addr.address == ip:
                    return f"{ip}/{addr.prefixlen}"
        return None

    def use_uplink(self, address: str, address6: str | None = None) -> str:
        """Find the interface holding the node address: direct routes and VXLAN use it
        (and the one holding the IPv6 address, for VXLAN over IPv6)."""
        ip = str(ipaddress.ip_interface(address).ip)
        ip6 = str(ipaddress.ip_interface(address6).ip) if address6 else None
        found = {}
        with Rtnl(self.netns) as sock:
            for addr in sock.addresses():
                if addr.address in (ip, ip6):
                    link = sock.link(index=addr.index)
                    if link is not None:
                        found.setdefault(addr.address, link.name)
        if ip not in found:
            raise RoutedError(f"no interface holds the node address {ip}")
        if ip6 and ip6 not in found:
            raise RoutedError(f"no interface holds the node's IPv6 address {ip6}")
        self.nic, self.local_ip = found[ip], ip
        self.nic6, self.local_ip6 = found.get(ip6), ip6
        return self.nic

    def uplink_mtu(self, address: str) -> int | None:
        """The MTU of the interface holding the node address (None: no interface holds it)."""
        ip = str(ipaddress.ip_interface(address).ip)
        with Rtnl(self.netns) as sock:
            for addr in sock.addresses():
                if addr.address == ip:
                    link = sock.link(index=addr.index)
                    return link.mtu if link is not None else None
        return None

    def sync_learned(self, routes: list[Route]) -> str:
        """Make the kernel's proto-202 routes equal to routes, with the devices they need."""
        routes = self._sync_vxlan6(routes)
        vxlan_peers = sorted({r.gateway for r in routes if r.encapsulation == "vxlan"})
        if vxlan_peers:
            encap.ensure_vxlan(self.netns, self.local_ip, self.nic, mtu=self.mtus.vxlan)
        if vxlan_peers or self._vxlan_peers:
            encap.sync_vxlan_peers(self.netns, vxlan_peers)
            self._vxlan_peers = vxlan_peers
        if any(r.encapsulation == "ipip" for r in routes):
            try:
                encap.ensure_ipip(self.netns, mtu=self.mtus.ipip)
            except DataplaneError as err:
                log.error("%s: IPIP routes are skipped", err)
                routes = [r for r in routes if r.encapsulation != "ipip"]
        result = bulk.sync(self.netns, routes, proto=ROUTE_PROTO_BGP)
        for route, reason in result.failed:
            log.warning("route %s not installed: %s", route.dst, reason)
        if result.added or result.removed or result.failed:
            return f"+{len(result.added)} -{len(result.removed)} failed {len(result.failed)}"
        return ""

    def _sync_vxlan6(self, routes: list[Route]) -> list[Route]:
        """vxlan-v6.routed and its peers, as routes through it need (returns the routes
        that can go in: without an IPv6 address of our own there is no IPv6 VXLAN)."""
        peers = sorted({r.gateway for r in routes if r.encapsulation == "vxlan6"})
        if peers and self.local_ip6 is None:
            log.error("routes over VXLAN on IPv6 need this node's IPv6 address (--node-ip6): skipped")
            return [r for r in routes if r.encapsulation != "vxlan6"]
        try:
            if peers:
                encap.ensure_vxlan(self.netns, self.local_ip6, self.nic6, name=encap.VXLAN6_DEV,
                                   mtu=self.mtus.vxlan6 or mtus.tunnel_mtu(self.mtus.uplink, "vxlan", 6))
            if peers or self._vxlan6_peers:
                encap.sync_vxlan_peers(self.netns, peers, name=encap.VXLAN6_DEV)
                self._vxlan6_peers = peers
        except DataplaneError as err:  # an IPv6 problem never keeps the IPv4 routes out
            log.error("VXLAN over IPv6: %s; its routes are skipped", err)
            return [r for r in routes if r.encapsulation != "vxlan6"]
        # Through the peer's VTEP link-local address (see encap: IPv6 refuses the peer's
        # own address as an onlink gateway on this device).
        return [Route(r.dst, encap.vtep_gateway6(r.gateway), r.dev, proto=r.proto) if r.encapsulation == "vxlan6"
                else r for r in routes]

    def close(self) -> None:
        self.wait_idle()  # veths queued for deletion go before the agent does
