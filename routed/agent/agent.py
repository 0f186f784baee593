"""The node agent: wires etcd, IPAM, the dataplane, the CNI server and the controllers.

SIGTERM stops serving but leaves every pod's veth and route in place: pods keep their
network while the agent is upgraded or restarted.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

from cni.plugin import Context, dispatch
from ipam.allocator import IPAM, EmptyBlockReaper
from routed import resources as r
from routed.datastore import schema
from routed.datastore.config import EtcdConfig
from routed.datastore.resources import ResourceStore
from routed.errors import DatastoreUnavailable, RoutedError

from . import node as nodeinfo
from .bgp import BGPController
from .cniserver import CNIServer
from .controllers import BlockRoutes, Every, NatOutgoing
from .health import HealthServer
from .metrics import Metrics
from .podnet import HostDataplane
from .spool import PendingReleases, replay_shim_spool

log = logging.getLogger("routed.agent")


@dataclass
class AgentConfig:
    node_name: str
    etcd: EtcdConfig
    node_ip: str | None = None
    node_labels: dict = field(default_factory=dict)
    netns: str | None = None  # the namespace playing this node's host (lab, tests); None: our own
    cni_socket: str = "/var/run/routed/cni.sock"
    spool_dir: str = "/var/lib/routed/cni-spool"
    state_dir: str = "/var/lib/routed"
    health_host: str = "127.0.0.1"
    health_port: int = 9099
    block_grace: float = 300.0
    resync: float = 30.0
    bgp: bool = True
    bgp_dir: str = "/var/run/routed/bgp"
    bgp_socket: str = "/var/run/routed/bgp.sock"
    secrets_dir: str = "/etc/routed/secrets"
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
        self.kube = self.pod_info = None
        self._threads: list[threading.Thread] = []
        self.fatal: str | None = None  # why the agent stopped on its own

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
        self.ipam = IPAM(self.kv)
        self.pending = PendingReleases(Path(c.state_dir) / "pending-releases")
        self.cni_context = Context(self.ipam, c.node_name, self.dataplane, node_labels=lambda: self.labels,
                                   release_later=self.pending.add,
                                   pod_info=self.pod_info)
        # CNI first: a DEL must be served even while etcd is away (ADD then answers "try again").
        self.cni = CNIServer(c.cni_socket, self.handle_cni, self.metrics)
        self.cni.start()
        self.bgp = None
        if c.bgp:
            self.dataplane.use_uplink(self.address)
            self.bgp = BGPController(self.kv, self.store, self.dataplane, c.node_name, self.address, c.bgp_dir,
                                     c.bgp_socket, c.secrets_dir, c.resync)
            self.metrics.collectors.append(self.bgp.metrics)
        documents = {"/bgp/peers": self.bgp.peer_status if self.bgp else list}
        self.health = HealthServer(c.health_host, c.health_port, self.ready, self.metrics.render, documents)
        self.health.start()
        self.metrics.gauges["routed_ipam_transactions_total"] = lambda: self.ipam.stats["txn"]
        self.metrics.gauges["routed_ipam_conflicts_total"] = lambda: self.ipam.stats["conflict"]
        # Records IPAM skips because they do not parse or validate (routedctl ipam check lists them).
        self.metrics.gauges["routed_ipam_unreadable_records"] = lambda: len(self.ipam.unreadable)
        self.metrics.gauges["routed_pending_releases"] = lambda: len(self.pending.handles())
        self._spawn("register", self._register_until_done)
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
        for addr in (node.get("status") or {}).get("addresses") or []:
            if addr.get("type") == "InternalIP" and "." in addr.get("address", ""):
                return addr["address"]
        return None

    def _address_holding(self, ip: str) -> str:
        """ip with the prefix of the host interface that holds it (the subnet decides CrossSubnet)."""
        address = self.dataplane.address_with_prefix(ip)
        if address is not None:
            return address
        raise RoutedError(f"the Kubernetes Node's InternalIP {ip} is on no interface of this host; "
                          "pass --node-ip ADDR/PREFIX")

    def handle_cni(self, env: dict, stdin: str) -> tuple[int, str]:
        return dispatch(env, stdin, self.cni_context)

    def _register_until_done(self, stop: threading.Event) -> None:
        delay = 0.2
        while not stop.is_set():
            try:
                schema.ensure(self.kv, write=True)
                node = nodeinfo.register(self.store, self.config.node_name, self.address, self.own_labels)
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
        replay_shim_spool(self.config.spool_dir, self.handle_cni)
        self.pending.retry(self.ipam.release_handle)
        reaper = EmptyBlockReaper(self.ipam, self.config.node_name, self.config.block_grace)
        nat = NatOutgoing(self.store, self.config.netns)
        try:
            nat.sync()
        except RoutedError as err:
            log.warning("natOutgoing: %s", err)
        self._spawn("block-routes", BlockRoutes(self.kv, self.dataplane, self.config.node_name,
                                                self.config.resync).run)
        if self.bgp is not None:
            self._spawn("bgp", self.bgp.run)
        self._spawn("releases", lambda stop: self.pending.run(self.ipam.release_handle, stop))
        for task in (Every("empty-blocks", min(60.0, max(1.0, self.config.block_grace / 4)), reaper.sweep),
                     Every("cni-spool", 10.0, lambda: replay_shim_spool(self.config.spool_dir, self.handle_cni)),
                     Every("node-labels", self.config.resync, self._refresh_labels),
                     Every("nat-outgoing", 10.0, nat.sync)):
            self._spawn(task.name, task.run)

    def _refresh_labels(self) -> None:
        if self.kube is not None:  # a label changed in Kubernetes: register it again
            kube_node = self.kube.get("nodes", self.config.node_name)
            labels = {**_kube_labels(kube_node), **self.config.node_labels} if kube_node else self.own_labels
            if labels != self.own_labels:
                nodeinfo.register(self.store, self.config.node_name, self.address, labels)
                self.own_labels = labels
        node = self.store.find(r.Node, self.config.node_name)
        if node is not None:
            self.labels = dict(node.metadata.labels or {})

    def _spawn(self, name: str, target) -> None:
        thread = threading.Thread(target=target, args=(self.stop_event,), name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

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
        self.health.stop()
        for thread in self._threads:
            thread.join(timeout=5)
        self.dataplane.close()
        self.kv.close()
        log.info("agent stopped; pod networking left in place")


def _kube_labels(node: dict) -> dict:
    return dict((node.get("metadata") or {}).get("labels") or {})
