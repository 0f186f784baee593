"""The node agent: wires etcd, IPAM, the dataplane, the CNI server and the controllers.

SIGTERM stops serving but leaves every pod's veth and route in place: pods keep their
network while the agent is upgraded or restarted.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from cni.plugin import Context, dispatch
from ipam.allocator import IPAM, EmptyBlockReaper
from routed import resources as r
from routed.dataplane import cleanup, mtu
from routed.datastore import schema, uninstall
from routed.datastore.config import EtcdConfig
from routed.datastore.resources import ResourceStore
from routed.errors import DatastoreUnavailable, RoutedError
from routed.runtime.health import HealthServer
from routed.runtime.metrics import Family, Metrics, Server, etcd_families
from routed.version import version

from . import node as nodeinfo
from .bgp import BGPController
from .cniserver import CNIServer
from .controllers import BlockRoutes, Controllers, Every, Loop, NatOutgoing
from .liveness import Heartbeats, verdict
from .locks import KeyedLocks
from .podnet import HostDataplane
from .presence import NodePresence
from .services import KubeServices, ServiceAnnouncer, StoredServices
from .spool import LastAdds, PendingReleases, replay_shim_spool
from .workloads import WorkloadCollector
from .wireguard import WireGuard

log = logging.getLogger("routed.agent")


@dataclass
class AgentConfig:
    node_name: str
    etcd: EtcdConfig
    node_ip: str | None = None
    # IPv6 address/prefix; None: the Kubernetes Node's IPv6 InternalIP, else autodetected
    # (the IPv6 default route's interface), else none; "none": IPv4 only.
    node_ip6: str | None = None
    node_labels: dict = field(default_factory=dict)
    netns: str | None = None  # the namespace playing this node's host (lab, tests); None: our own
    cni_socket: str = "/var/run/routed/cni.sock"
    spool_dir: str = "/var/lib/routed/cni-spool"
    state_dir: str = "/var/lib/routed"
    health_host: str = "127.0.0.1"
    health_port: int = 9099
    metrics_host: str = "0.0.0.0"
    metrics_port: int = 0  # a listener for /metrics alone (Prometheus); 0: none
    liveness_ttl: int = 30  # seconds the controller waits after the agent stops before it may GC the node
    block_grace: float = 300.0
    resync: float = 30.0
    bgp: bool = True
    bgp_dir: str = "/var/run/routed/bgp"
    bgp_socket: str = "/var/run/routed/bgp.sock"
    secrets_dir: str = "/etc/routed/secrets"
    cni_workers: int = 16
    cni_read_timeout: float = 10.0  # seconds a client has to send its whole request
    # A CNI request or a controller pass running this much longer than it should fails
    # /healthz. The shim waits 120 s for an answer: past that nobody is waiting.
    stuck_after: float = 150.0
    # Undo what the controllers installed (block blackholes, natOutgoing) when stopping:
    # for taking routed off a node. Off by default: a restart leaves the dataplane alone.
    cleanup_on_stop: bool = False
    # Where install-cni put the conflist and the plugin: removed when routed is uninstalled.
    cni_conf_dir: str = "/etc/cni/net.d"
    cni_bin_dir: str = "/opt/cni/bin"
    uninstall_poll: float = 2.0  # seconds between looks for the uninstall marker
    mtu: int = 0  # the pods' MTU; 0: the uplink's less the pools' encapsulation overhead
    policy: bool = True  # enforce network policy (routed/policy) in this node's nftables
    # Where the Kubernetes API is (routed.k8s.api_source); None: run without Kubernetes.
    kube: dict | None = None


class Agent:
    def __init__(self, config: AgentConfig):
        self.config = config
        self.stop_event = threading.Event()
        self.metrics = Metrics()
        self.registered = threading.Event()
        self.labels: dict = dict(config.node_labels)
        self.own_labels: dict = dict(config.node_labels)  # what we register: Kubernetes' + --node-labels
        self.kube = self.pod_info = self.service_informers = None
        self.kube_ip6: str | None = None  # the Kubernetes Node's IPv6 InternalIP
        self._threads: list[threading.Thread] = []
        self.heartbeats = Heartbeats(grace=config.stuck_after)
        self.controllers = Controllers(self.stop_event, self.heartbeats)
        self.containers = KeyedLocks()  # one CNI request per container at a time
        self.spool_stats: Counter = Counter()
        self.fatal: str | None = None  # why the agent stopped on its own
        self.leaving = threading.Event()  # routed is being uninstalled: stopped, but not exiting

    def start(self) -> None:
        c = self.config
        self.kv = c.etcd.connect()
        try:
            schema.ensure(self.kv, write=True)  # a layout we do not know: refuse before touching anything
        except DatastoreUnavailable:
            pass  # checked again before the node registers
        self.store = ResourceStore(self.kv)
        self.dataplane = HostDataplane(c.netns)
        self.dataplane.set_sysctls({"net/ipv4/ip_forward": "1", "net/ipv6/conf/all/forwarding": "1"})
        kube_ip = self._start_kubernetes() if c.kube is not None else None
        if c.node_ip:
            self.address = nodeinfo.parse_node_ip(c.node_ip)
        elif kube_ip:
            self.address = self._address_holding(kube_ip)
        else:
            self.address = self.dataplane.default_route_address()
        self.address6 = self._ipv6_address()
        self.ipam = IPAM(self.kv)
        # Until the pools are read (once registered: etcd may be away now, and DEL must be
        # served meanwhile), assume the largest overhead in use.
        self._encapsulations = {"vxlan"}
        self._vxlan6 = bool(self.address6)
        self.wireguard = WireGuard(self.kv, self.store, c.netns, c.node_name, self.address, c.state_dir,
                                   mtu=lambda: self.dataplane.mtus.wireguard)
        self.refresh_mtu(read_pools=False)
        self.presence = NodePresence(self.kv, self.store, c.node_name, self.address, self._register_again,
                                     c.liveness_ttl, after=self.registered)
        self.pending = PendingReleases(Path(c.state_dir) / "pending-releases")
        self.last_adds = LastAdds(Path(c.state_dir) / "last-add")
        self.policy = self._start_policy() if c.policy else None
        self.cni_context = Context(self.ipam, c.node_name, self.dataplane, node_labels=lambda: self.labels,
                                   release_later=self.pending.add,
                                   settle_release=lambda handle: self.pending.settle(handle, self.ipam.release_handle),
                                   pod_info=self.pod_info, pod_mtu=lambda: self.dataplane.mtus.pod,
                                   endpoints=self.policy)
        # CNI first: a DEL must be served even while etcd is away (ADD then answers "try again").
        self.cni = CNIServer(c.cni_socket, self.handle_cni, self.metrics, c.cni_workers, c.cni_read_timeout)
        self.cni.start()
        self.bgp = None
        if c.bgp:
            self.dataplane.use_uplink(self.address, self.address6)
            self.bgp = BGPController(self.kv, self.store, self.dataplane, c.node_name, self.address, c.bgp_dir,
                                     c.bgp_socket, c.secrets_dir, c.resync, node_address6=self.address6,
                                     services=ServiceAnnouncer(self._service_source(), c.node_name))
            self.metrics.collectors.append(self.bgp.metrics)
            if self.service_informers is not None:
                self.service_informers.start()
        documents = {"/bgp/peers": self.bgp.peer_status if self.bgp else list}
        documents["/wireguard"] = self.wireguard.status
        documents["/version"] = lambda: {"version": version(), "node": c.node_name}
        documents["/node"] = lambda: {"name": c.node_name, "address": self.address,
                                      "addresses": {"ipv4": self.address, "ipv6": self.address6},
                                      "mtu": self.dataplane.mtus.as_dict()}
        self.health = HealthServer(c.health_host, c.health_port, self.ready, self.metrics.render, documents,
                                   live=self.alive)
        self.health.start()
        self._define_metrics()
        self.metrics_server = Server(self.metrics, c.metrics_host, c.metrics_port) if c.metrics_port else None
        self._spawn("register", self._register_until_done)
        self._spawn("uninstall", self._watch_uninstall)
        self._spawn("node-presence", self.presence.run)  # once registered
        log.info("agent for node %s (%s) started%s", c.node_name, self.address,
                 f" in netns {c.netns}" if c.netns else "")

    def _start_kubernetes(self) -> str | None:
        """Labels from this node's Kubernetes Node, and the pod cache that CNI ADD reads pool
        and address annotations from. Returns the Node's InternalIP (IPv4), if any."""
        from routed.k8s.client import KubeClient
        from routed.k8s.podinfo import PodInfo

        name = self.config.node_name
        self.kube = KubeClient.connect(**self.config.kube)
        node = self.kube.get("nodes", name)
        if node is None:
            raise RoutedError(f"Kubernetes has no Node {name!r}: --node-name must be the Kubernetes node name")
        self.own_labels = self.labels = {**_kube_labels(node), **self.config.node_labels}
        self.pod_info = PodInfo(self.kube, name).start()
        internal = [a.get("address", "") for a in (node.get("status") or {}).get("addresses") or []
                    if a.get("type") == "InternalIP"]
        self.kube_ip6 = next((a for a in internal if ":" in a), None)
        return next((a for a in internal if "." in a), None)

    def _service_source(self):
        """Services and EndpointSlices: Kubernetes' (informers) when the agent has it, else
        what `routedctl apply` stored in etcd (a resource change there resyncs BGP anyway)."""
        if self.kube is None:
            return StoredServices(self.store)
        self.service_informers = KubeServices(self.kube, lambda: self.bgp.services_changed())
        return self.service_informers  # started once self.bgp exists

    def _start_policy(self):
        """The policy table goes in before the CNI server serves: no pod is ever
        reachable without its policy (the table stays when the agent stops, like pods,
        unless it cleans up on stop)."""
        from routed.policy.enforcer import PolicyEnforcer

        c = self.config
        enforcer = PolicyEnforcer(self.kv, self.store, c.node_name, c.netns, c.resync, self.pod_info)
        try:
            enforcer.sync()
        except RoutedError as err:
            log.warning("network policy not programmed yet: %s", err)
        self.controllers.start(enforcer)
        self.metrics.gauge("routed_policy_rules", "Rules in the network policy table.", lambda: enforcer.rule_count)
        return enforcer

    def _ipv6_address(self) -> str | None:
        """Like the IPv4 address: the flag, else the Kubernetes Node's, else autodetected."""
        given = self.config.node_ip6
        if given and given.lower() == "none":
            return None
        if given:
            return nodeinfo.parse_node_ip6(given)
        if self.kube_ip6:
            # Checked before use: the Node's status is not ours to trust.
            nodeinfo.parse_node_ip6(f"{self.kube_ip6}/128", "the Kubernetes Node's IPv6 InternalIP")
            return self._address_holding(self.kube_ip6)
        found = self.dataplane.default_route_address6()
        return nodeinfo.parse_node_ip6(found, "the autodetected IPv6 address") if found else None

    def _address_holding(self, ip: str) -> str:
        """ip with the prefix of the host interface that holds it (the subnet decides CrossSubnet)."""
        address = self.dataplane.address_with_prefix(ip)
        if address is not None:
            return address
        raise RoutedError(f"the Kubernetes Node's InternalIP {ip} is on no interface of this host; "
                          f"pass --node-ip{'6' if ':' in ip else ''} ADDR/PREFIX")

    def _define_metrics(self) -> None:
        m = self.metrics
        m.counter("routed_ipam_transactions_total", "IPAM etcd transactions.", lambda: self.ipam.stats["txn"])
        m.counter("routed_ipam_conflicts_total", "IPAM transactions that lost a race and were retried.",
                  lambda: self.ipam.stats["conflict"])
        m.gauge("routed_pending_releases", "Address releases queued, waiting for etcd.",
                lambda: len(self.pending.handles()))
        m.gauge("routed_ipam_unreadable_records", "Records IPAM skips because they do not parse or validate "
                "(routedctl ipam check lists them).", lambda: len(self.ipam.unreadable))
        m.gauge("routed_datastore_unreadable_records", "Resources (BGPPeer, Node, ...) skipped because they do not "
                "parse or validate (routedctl get names them).", lambda: len(self.store.unreadable))
        m.counter("routed_releases_failed_total", "Queued releases that failed for good (moved to failed/).",
                  lambda: self.pending.stats["failed"])
        m.counter("routed_cni_spool_failed_total", "Spooled DELs that can never succeed (moved to failed/).",
                  lambda: self.spool_stats["failed"])
        m.counter("routed_cni_spool_superseded_total", "Spooled DELs dropped: the container was added again since.",
                  lambda: self.spool_stats["superseded"])
        m.collectors.append(lambda: [Family(
            "routed_controller_errors_total", "counter", "Controller passes that failed, by controller.",
            [({"controller": name}, n) for name, n in sorted(self.controllers.errors().items())])])
        m.gauge("routed_cni_requests_in_flight", "CNI requests being served.", self.cni.in_flight.count)
        m.gauge("routed_cni_spool_depth", "DELs the CNI shim spooled while the agent was away, waiting for "
                "their replay.", lambda: sum(1 for _ in Path(self.config.spool_dir).glob("*.req")))
        m.collectors.append(lambda: etcd_families(self.kv))

    def handle_cni(self, env: dict, stdin: str) -> tuple[int, str]:
        """One CNI request; requests for one container never interleave (a DEL waits for
        the ADD it follows), different containers run in parallel."""
        received = time.time_ns()  # before any wait: an ADD is as old as its request
        with self.containers.hold(env.get("CNI_CONTAINERID", "")):
            return self._dispatch(env, stdin, received)

    def replay_spooled_del(self, env: dict, stdin: str, spooled_ns: int) -> tuple[int, str] | None:
        """A DEL the plugin spooled at spooled_ns; None (dropped) if the container was added
        again since: that DEL belongs to an earlier life of it."""
        container, ifname = env.get("CNI_CONTAINERID", ""), env.get("CNI_IFNAME", "")
        with self.containers.hold(container):
            if self.last_adds.since(container, ifname) > spooled_ns:
                return None
            return self._dispatch(env, stdin, time.time_ns())

    def _dispatch(self, env: dict, stdin: str, received: int) -> tuple[int, str]:
        code, out = dispatch(env, stdin, self.cni_context)
        command, container, ifname = (env.get(k, "") for k in ("CNI_COMMAND", "CNI_CONTAINERID", "CNI_IFNAME"))
        if code == 0 and command in ("ADD", "DEL"):
            try:
                if command == "ADD":
                    self.last_adds.record(container, ifname, received)
                else:
                    self.last_adds.forget(container, ifname)
            except (OSError, RoutedError) as err:  # the request itself is done: answer it
                log.warning("CNI %s %s: cannot note it for the spool replay: %s", command, container, err)
        return code, out

    def _replay_spool(self) -> None:
        replay_shim_spool(self.config.spool_dir, self.replay_spooled_del, self.spool_stats)

    def _register_until_done(self, stop: threading.Event) -> None:
        delay = 0.2
        while not stop.is_set():
            try:
                schema.ensure(self.kv, write=True)
                node = nodeinfo.register(self.store, self.config.node_name, self.address, self.own_labels,
                                         address6=self.address6)
                self.labels = dict(node.metadata.labels or {})
                break
            except schema.SchemaMismatch as err:
                self.fatal = str(err)  # the agent exits with it (agent/cli.py)
                log.error("%s", err)
                stop.set()
                return
            except RoutedError as err:
                log.warning("cannot register node yet: %s", err)
                stop.wait(delay)
                delay = min(delay * 2, 5.0)
        if stop.is_set():
            return
        self.registered.set()
        c = self.config
        reaper = EmptyBlockReaper(self.ipam, c.node_name, c.block_grace)
        # natOutgoing runs iptables, which can hang on the xtables lock: in its own
        # thread, where a hang shows in /healthz instead of holding up the rest.
        nat = NatOutgoing(self.store, c.netns)
        if self.bgp is not None:
            self._spawn("bgp", self.bgp.run)
        for controller in (
                Every("cni-spool", 10.0, self._replay_spool),
                Every("workloads", c.resync, WorkloadCollector(self.kv, c.node_name, self.dataplane.link_names).sweep),
                Loop("releases", 5.0, lambda stop, beat: self.pending.run(self.ipam.release_handle, stop, beat)),
                BlockRoutes(self.kv, self.dataplane, c.node_name, c.resync),
                Every("nat-outgoing", 10.0, nat.sync, cleanup=nat.cleanup),
                Every("empty-blocks", min(60.0, max(1.0, c.block_grace / 4)), reaper.sweep),
                Every("node-labels", c.resync, self._refresh_labels),
                Every("mtu", c.resync, self.refresh_mtu),
                Every("wireguard", 3.0, self.wireguard.sync, cleanup=self.wireguard.cleanup)):
            self.controllers.start(controller)

    def refresh_mtu(self, read_pools: bool = True) -> None:
        """Follow the uplink's MTU and the pools' encapsulations (etcd away: the last known).
        New pods and the tunnel devices (at the next route sync) get the result."""
        if read_pools:
            try:
                pools = self.store.list(r.IPPool)
                self._encapsulations = mtu.pool_encapsulations(pools)
                self._vxlan6 = bool(self.address6) and mtu.vxlan_over_ipv6(pools)
            except RoutedError as err:
                log.warning("MTU: pools not readable (%s); keeping %s", err, sorted(self._encapsulations))
        uplink = self.dataplane.uplink_mtu(self.address)
        if uplink is None:
            log.warning("MTU: no interface holds %s; assuming %d", self.address, mtu.DEFAULT_UPLINK_MTU)
        family = ipaddress.ip_interface(self.address).version  # the underlay's: outer headers
        try:
            used = self._encapsulations | ({"wireguard"} if self.wireguard.active else set())
            chosen = mtu.choose(uplink, used, family, explicit=self.config.mtu, dual_stack=bool(self.address6),
                                vxlan_over_ipv6=self._vxlan6)
        except ValueError as err:
            raise RoutedError(f"MTU: {err}") from None
        if chosen != self.dataplane.mtus:
            log.info("MTU: uplink %d, pods %d (%s)", chosen.uplink, chosen.pod, chosen.source)
        self.dataplane.mtus = chosen

    def _refresh_labels(self) -> None:
        if self.kube is not None:  # a label changed in Kubernetes: register it again
            kube_node = self.kube.get("nodes", self.config.node_name)
            labels = {**_kube_labels(kube_node), **self.config.node_labels} if kube_node else self.own_labels
            if labels != self.own_labels:
                nodeinfo.register(self.store, self.config.node_name, self.address, labels, address6=self.address6)
                self.own_labels = labels
        node = self.store.find(r.Node, self.config.node_name)
        if node is not None:
            self.labels = dict(node.metadata.labels or {})

    def _register_again(self, remembered: r.Node | None) -> r.Node:
        return nodeinfo.register(self.store, self.config.node_name, self.address, self.own_labels, remembered,
                                 address6=self.address6)

    def _spawn(self, name: str, target) -> None:
        thread = threading.Thread(target=target, args=(self.stop_event,), name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _watch_uninstall(self, stop: threading.Event) -> None:
        while not stop.wait(self.config.uninstall_poll):
            try:
                if uninstall.requested(self.kv):
                    self.leave()
                    return
            except RoutedError as err:
                log.debug("uninstall marker not readable: %s", err)

    def leave(self) -> None:
        """routed is being uninstalled (routed.datastore.uninstall): take it off this node
        and report it done. The process stays (and healthy) until it is terminated: an
        agent restarted now would install it all again."""
        c = self.config
        log.info("uninstall requested: taking routed off node %s", c.node_name)
        self.leaving.set()
        report = cleanup.remove_cni_files(c.cni_conf_dir, c.cni_bin_dir)  # first: no new ADDs
        self.stop_event.set()
        self.pending.wake.set()
        self.cni.stop()
        self.controllers.stop(cleanup=True)
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(timeout=5)
        self.dataplane.wait_idle()
        for line in cleanup.describe(cleanup.clean_dataplane(c.netns, report)):
            log.info("uninstall: %s", line)
        delay = 0.2
        while True:  # the hook waits for this key; etcd may be away for a moment
            try:
                uninstall.mark_done(self.kv, c.node_name)
                break
            except RoutedError as err:
                log.warning("uninstall: cannot report done yet: %s", err)
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
        log.info("uninstall: routed is off node %s; waiting to be terminated", c.node_name)

    def alive(self) -> tuple[bool, str]:
        """/healthz: every controller beating, no CNI request stuck."""
        return verdict(self.heartbeats.stale() + self.cni.in_flight.stuck(self.config.stuck_after))

    def ready(self) -> tuple[bool, str]:
        if not self.registered.is_set():
            return False, "node not registered yet (is etcd reachable?)"
        try:
            self.kv.revision()
        except RoutedError as err:
            return False, str(err)
        return True, "ready"

    def stop(self) -> None:
        self.stop_event.set()
        self.pending.wake.set()  # its worker waits on this, not on stop_event
        self.cni.stop()
        if self.pod_info is not None:
            self.pod_info.stop()
        if self.service_informers is not None:
            self.service_informers.stop()
        self.health.stop()
        if self.metrics_server is not None:
            self.metrics_server.stop()
        self.controllers.stop(cleanup=self.config.cleanup_on_stop)
        for thread in self._threads:
            thread.join(timeout=5)
        self.dataplane.close()
        self.kv.close()
        log.info("agent stopped; pod networking left in place")


def _kube_labels(node: dict) -> dict:
    return dict((node.get("metadata") or {}).get("labels") or {})
