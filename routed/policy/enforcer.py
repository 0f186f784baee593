"""The agent's side of policy: workload endpoints in etcd, and this node's table in the kernel.

CNI ADD records the pod (``added``) and programs the table before it answers, so a pod is
never reachable before its policy is in place: until then its cali interface is not in
``@pods`` and the table drops its forwarded traffic. DEL removes the record and programs
the table before the addresses are released, so they leave every set of this node first;
other nodes see the deletion before the address can be handed out again (etcd orders the
two), and re-render on it.

Every change re-renders the whole table from etcd and applies it with one ``nft -f``
transaction (nothing else's rules are touched); an unchanged rendering is not applied.
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
        self.kv.put(keys.workload(self.node, namespace, pod), endpoint_json(ep, container).encode())
        self.sync()

    def removed(self, namespace: str, pod: str, container: str) -> None:
        """Forget the pod, unless its record is already a newer sandbox's."""
        key = keys.workload(self.node, namespace, pod)
        item = self.kv.get(key)
        if item is not None and json.loads(item.value).get("container", "") in ("", container):
            self.kv.delete(key, mod_revision=item.mod_revision)
        self.sync()

    # -- the table ----------------------------------------------------------------------

    def desired(self) -> nft.Ruleset:
        docs = [p for cls in _POLICY_KINDS for p in self.store.list(cls)]
        namespaces = {n.name: dict(n.metadata.labels) for n in self.store.list(r.Namespace)}
        endpoints = []
        for item in self.kv.list(keys.WORKLOADS).items:
            try:
                endpoints.append(endpoint_from_json(item.value))
            except (ValueError, KeyError, TypeError) as err:  # one bad record never stops the rest
                log.warning("%s: not a workload endpoint (%s); skipped", item.key, err)
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
                start = self.kv.revision() + 1
                self.sync()
                watches = [self.kv.watch(keys.RESOURCES, start), self.kv.watch(keys.WORKLOADS, start)]
            except RoutedError as err:
                self.failures += 1
                log.warning("policy: %s; retrying", err)
                stop.wait(2)
                continue
            try:
                next_sync = time.monotonic() + self.resync
                while not stop.is_set():
                    beat()
                    changed = False
                    for w in watches:
                        while w.get(timeout=0.25) is not None:
                            changed = True
                    if changed or time.monotonic() >= next_sync:
                        self.sync()
                        next_sync = time.monotonic() + self.resync
            except RoutedError as err:
                self.failures += 1
                log.warning("policy: %s; resyncing", err)
            finally:
                for w in watches:
                    w.cancel()
