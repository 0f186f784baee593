"""The agent's side of policy: workload endpoints in etcd, and this node's table in the kernel.

CNI ADD records the pod (``added``) and programs the table before it answers, so a pod is
never reachable before its policy is in place: until then its cali interface is not in
``@pods`` and the table drops its forwarded traffic. DEL removes the record and programs
the table before the addresses are released, so they leave every set of this node first;
other nodes see the deletion before the address can be handed out again (etcd orders the
two), and re-render on it.

Every change re-renders the whole table and applies it with one ``nft -f`` transaction
(nothing else's rules are touched); an unchanged rendering is not applied. The records come
from one listing and the watches after it (``Workloads``, resources read again only when a
resource changes): another node's pod ADD or DEL costs no etcd read.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import subprocess
import threading
import time

from routed import resources as r
from routed.datastore import keys
from routed.datastore.kv import Compare, KeyValue, Op
from routed.errors import RoutedError
from routed.policy import model, nft

log = logging.getLogger("routed.policy")

_POLICY_KINDS = (r.NetworkPolicy, r.GlobalNetworkPolicy, r.KubeNetworkPolicy)


class PolicyError(RoutedError):
    pass


def endpoint_json(ep: model.Endpoint, container: str = "") -> str:
    return json.dumps({"namespace": ep.namespace, "name": ep.name, "node": ep.node, "interface": ep.interface,
                       "labels": dict(ep.labels), "addresses": list(ep.addresses), "container": container,
                       "ports": [[p.name, p.protocol, p.port] for p in ep.ports]}, sort_keys=True)


def endpoint_from_json(text: bytes | str) -> model.Endpoint:
    d = json.loads(text)
    return model.Endpoint(d["namespace"], d["name"], d.get("labels") or {}, tuple(d.get("addresses") or ()),
                          d.get("interface", ""), d.get("node", ""),
                          tuple(model.NamedPort(*p) for p in d.get("ports") or ()))


def named_ports(pod: dict | None) -> tuple[model.NamedPort, ...]:
    """The named container ports of a Kubernetes pod object."""
    protocols = {"TCP": 6, "UDP": 17, "SCTP": 132}
    out = []
    for container in ((pod or {}).get("spec") or {}).get("containers") or []:
        for port in container.get("ports") or []:
            if port.get("name") and port.get("containerPort"):
                out.append(model.NamedPort(port["name"], protocols.get(port.get("protocol", "TCP"), 6),
                                           int(port["containerPort"])))
    return tuple(out)


def apply_ruleset(netns: str | None, text: str) -> None:
    cmd = (["ip", "netns", "exec", netns] if netns else []) + ["nft", "-f", "-"]
    try:
        result = subprocess.run(cmd, input=text, capture_output=True, text=True)
    except OSError as err:  # no nft on this host: pods stay closed, and the error says why
        raise PolicyError(f"cannot run nft: {err.strerror} (install nftables, or run the agent with --no-policy)") from None
    if result.returncode != 0:
        raise PolicyError(f"nft -f: {result.stderr.strip().splitlines()[0] if result.stderr.strip() else 'failed'}")


def remove_table(netns: str | None) -> None:
    apply_ruleset(netns, f"table {nft.FAMILY} {nft.TABLE}\ndelete table {nft.FAMILY} {nft.TABLE}\n")


class Workloads:
    """Workload records from one listing, then kept from the watch (not thread-safe).

    Each key keeps the revision of what is known of it, so an older watch event never
    undoes a newer write of this agent's own (CNI must see its pod in the table before it
    answers); a deletion of ours stays as a tombstone until the watch brings it."""

    def __init__(self, items: list[KeyValue] = ()):
        self._items: dict[str, tuple[int, bytes | None]] = {i.key: (i.mod_revision, i.value) for i in items}

    def set(self, key: str, revision: int, value: bytes | None) -> None:
        known = self._items.get(key)
        if known is not None and known[0] > revision:
            return  # we already know something newer
        self._items[key] = (revision, value)

    def apply(self, event) -> None:
        if event.type == "resync":
            self._items = Workloads(event.items or ())._items
        elif event.type == "put":
            self.set(event.kv.key, event.kv.mod_revision, event.kv.value)
        else:
            known = self._items.get(event.kv.key)
            if known is None or known[0] <= event.kv.mod_revision:
                self._items.pop(event.kv.key, None)

    def items(self) -> list[tuple[str, bytes]]:
        return [(key, value) for key, (_, value) in self._items.items() if value is not None]


class PolicyEnforcer:
    """Also one of the agent's controllers (routed.agent.controllers.Controller)."""

    name = "policy"

    def __init__(self, kv, store, node: str, netns: str | None, resync: float = 30.0, pod_info=None):
        self.kv, self.store, self.node, self.netns, self.resync = kv, store, node, netns, resync
        self.interval = resync
        self.failures = 0
        self.pod_info = pod_info  # routed.k8s.podinfo.PodInfo: labels and named ports of our pods
        self._lock = threading.Lock()
        self._applied = ""
        self.rule_count = 0
        # Kept between renders while run() watches (None: read at the next render).
        self._workloads: Workloads | None = None
        self._resources: tuple[list, dict] | None = None  # (policy documents, namespace labels)
        self._watching = False

    # -- CNI ----------------------------------------------------------------------------

    def added(self, namespace: str, pod: str, container: str, interface: str, ips: list,
              labels: dict | None = None, ports: tuple = ()) -> None:
        """Record the pod and program the table; labels and named ports come from the pod
        cache when not given."""
        if labels is None:
            obj = self.pod_info.pods.wait_for(pod, namespace, timeout=self.pod_info.wait) if self.pod_info else None
            labels = dict(((obj or {}).get("metadata") or {}).get("labels") or {})
            ports = named_ports(obj)
        addresses = tuple(str(ipaddress.ip_interface(str(ip)).ip) for ip in ips)
        ep = model.Endpoint(namespace, pod, labels, addresses, interface, self.node, tuple(ports))
        key, value = keys.workload(namespace, pod), endpoint_json(ep, container).encode()
        revision = self.kv.txn([], [Op.put(key, value)]).revision
        with self._lock:
            if self._workloads is not None:
                self._workloads.set(key, revision, value)
        self.sync()

    def removed(self, namespace: str, pod: str, container: str) -> None:
        """Forget the pod, unless its record is already a newer sandbox's."""
        key = keys.workload(namespace, pod)
        item = self.kv.get(key)
        if item is not None and json.loads(item.value).get("container", "") in ("", container):
            done = self.kv.txn([Compare.mod(key, item.mod_revision)], [Op.delete(key)])
            with self._lock:
                if done.succeeded and self._workloads is not None:
                    self._workloads.set(key, done.revision, None)
        self.sync()

    # -- the table ----------------------------------------------------------------------

    def desired(self) -> nft.Ruleset:
        """Called with the lock held."""
        if self._resources is None:
            self._resources = ([p for cls in _POLICY_KINDS for p in self.store.list(cls)],
                               {n.name: dict(n.metadata.labels) for n in self.store.list(r.Namespace)})
        docs, namespaces = self._resources
        if self._workloads is not None:
            records = self._workloads.items()
        else:
            records = [(item.key, item.value) for item in self.kv.list(keys.WORKLOADS).items]
        if not self._watching:
            self._resources = None  # nothing tells us when they change: read them every time
        endpoints = []
        for key, value in records:
            try:
                endpoints.append(endpoint_from_json(value))
            except (ValueError, KeyError, TypeError) as err:  # one bad record never stops the rest
                log.warning("%s: not a workload endpoint (%s); skipped", key, err)
        local = [ep for ep in endpoints if ep.node == self.node and ep.interface]
        return nft.compile_node(model.convert(docs), endpoints, namespaces, local)

    def sync(self) -> bool:
        """Render and, if it changed, apply; True if applied."""
        with self._lock:
            ruleset = self.desired()
            text = ruleset.render()
            if text == self._applied:
                return False
            apply_ruleset(self.netns, text)
            self._applied, self.rule_count = text, ruleset.rule_count
            return True

    def cleanup(self) -> None:
        remove_table(self.netns)

    def run(self, stop: threading.Event, beat=lambda: None) -> None:
        """Re-render on every change of resources or workloads, and every ``resync``."""
        while not stop.is_set():
            beat()
            try:
                listing = self.kv.list(keys.WORKLOADS)
                with self._lock:
                    self._workloads, self._resources = Workloads(listing.items), None
                    self._watching = True
                start = listing.revision + 1
                watches = [self.kv.watch(keys.RESOURCES, start), self.kv.watch(keys.WORKLOADS, start)]
            except RoutedError as err:
                self.failures += 1
                log.warning("policy: %s; retrying", err)
                stop.wait(2)
                continue
            try:
                self.sync()
                next_sync = time.monotonic() + self.resync
                resources, workloads = watches
                while not stop.is_set():
                    beat()
                    changed = False
                    while resources.get(timeout=0.25) is not None:
                        changed = True
                        with self._lock:
                            self._resources = None
                    while (event := workloads.get(timeout=0.01 if changed else 0.25)) is not None:
                        changed = True
                        with self._lock:
                            self._workloads.apply(event)
                    if time.monotonic() >= next_sync:  # the periodic pass reads everything again
                        with self._lock:
                            self._resources = None
                    if changed or time.monotonic() >= next_sync:
                        self.sync()
                        next_sync = time.monotonic() + self.resync
            except RoutedError as err:
                self.failures += 1
                log.warning("policy: %s; resyncing", err)
            finally:
                with self._lock:
                    self._workloads, self._resources, self._watching = None, None, False
                for w in watches:
                    w.cancel()
