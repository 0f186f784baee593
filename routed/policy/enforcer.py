"""The agent's side of policy: workload endpoints in etcd, and this node's table in the kernel.

CNI ADD records the pod (``added``) and programs the table before it answers, so a pod is
never reachable before its policy is in place: until then its cali interface is not in
``@pods`` and the table drops its forwarded traffic. DEL removes the record and programs
the table before the addresses are released, so they leave every set of this node first;
other nodes see the deletion before the address can be handed out again (etcd orders the
two), and re-render on it.

The desired state (policies, namespaces, every workload endpoint) lives in memory, kept
by the watch. A pod that comes or goes is one small ``nft -f`` transaction of its own
elements (and a group chain if its combination of policies is new): no etcd read, and a
cost that does not grow with pods. Concurrent ADDs share one transaction (group commit:
whoever holds the nft lock applies everything queued). A policy or namespace change, a
changed record, and the periodic resync re-render the whole table and apply it in one
transaction (nothing else's rules are touched); an unchanged rendering is not applied
unless pods were added or removed since the last full one.
"""

from __future__ import annotations

import ctypes
import ipaddress
import json
import logging
import queue
import subprocess
import threading
import time
from dataclasses import dataclass, field

from routed import resources as r
from routed.datastore import keys
from routed.datastore.kv import Compare, Op
from routed.errors import RoutedError
from routed.policy import model, nft

log = logging.getLogger("routed.policy")

_POLICY_KINDS = (r.NetworkPolicy, r.GlobalNetworkPolicy, r.KubeNetworkPolicy)
_KINDS = (*_POLICY_KINDS, r.Namespace)  # the resources policy is made of


def _kind_of(key: str):
    """The policy kind (or Namespace) a resource key is of; None for any other kind."""
    return next((cls for cls in _KINDS if key.startswith(keys.resource(cls.plural))), None)


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


@dataclass
class _Change:
    """A pod to add (ep) or remove (ep None), queued for the next group commit."""

    key: str
    ep: model.Endpoint | None
    done: threading.Event = field(default_factory=threading.Event)
    error: Exception | None = None


class LibNft:
    """``nft -f`` in-process through libnftables (what the nft command wraps): ~0.01 ms
    for a pod's few elements against ~3 ms to start nft. Its netlink socket is opened
    when the context is made, in ``netns``, and stays there whatever thread calls."""

    def __init__(self, netns: str | None):
        from routed.dataplane.netns import in_netns

        lib = ctypes.CDLL("libnftables.so.1")  # OSError when missing: the caller falls back to nft
        lib.nft_ctx_new.restype, lib.nft_ctx_new.argtypes = ctypes.c_void_p, [ctypes.c_uint32]
        lib.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_error_buffer.restype, lib.nft_ctx_get_error_buffer.argtypes = ctypes.c_char_p, [ctypes.c_void_p]
        lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        with in_netns(netns):
            self._ctx = lib.nft_ctx_new(0)
        lib.nft_ctx_buffer_error(self._ctx)
        self._lib, self._lock = lib, threading.Lock()  # a context is not for two threads at once

    def __call__(self, text: str) -> None:
        with self._lock:
            if self._lib.nft_run_cmd_from_buffer(self._ctx, text.encode()) != 0:
                error = (self._lib.nft_ctx_get_error_buffer(self._ctx) or b"").decode().strip()
                raise PolicyError(f"nft -f: {error.splitlines()[0] if error else 'failed'}")


def _runner(netns: str | None):
    try:
        return LibNft(netns)
    except OSError:  # no libnftables: the nft command (or its clear error)
        return lambda text: apply_ruleset(netns, text)


def remove_table(netns: str | None) -> None:
    apply_ruleset(netns, f"table {nft.FAMILY} {nft.TABLE}\ndelete table {nft.FAMILY} {nft.TABLE}\n")


class PolicyEnforcer:
    """Also one of the agent's controllers (routed.agent.controllers.Controller)."""

    name = "policy"

    def __init__(self, kv, store, node: str, netns: str | None, resync: float = 30.0, pod_info=None, apply=None):
        self.kv, self.store, self.node, self.netns, self.resync = kv, store, node, netns, resync
        self.interval = resync
        self.failures = 0
        self.pod_info = pod_info  # routed.k8s.podinfo.PodInfo: labels and named ports of our pods
        self.apply = apply or _runner(netns)
        self._lock = threading.Lock()  # the state below
        self._nft = threading.Lock()  # one nft transaction at a time; its holder commits what is queued
        self._policies: list[model.Policy] = []
        self._namespaces: dict[str, dict] = {}
        # etcd key -> policy or Namespace document, from a listing at _docs_revision and the
        # watch after it: an applied policy is rendered from its watch event, no etcd read.
        self._docs: dict[str, r.Resource] = {}
        self._docs_revision = 0
        self._endpoints: dict[str, model.Endpoint] = {}  # workload key -> endpoint: the desired state
        # workload key -> etcd revision of the newest write known for it (our own ADD/DEL as
        # soon as it is made, others' from the watch): an older event never undoes a newer
        # write; a deletion stays as a tombstone until the watch brings it back.
        self._revisions: dict[str, int] = {}
        self._pending: list[_Change] = []
        self._table: nft.NodeTable | None = None  # what the kernel holds, None when unknown
        self._programmed: dict[str, model.Endpoint] = {}  # the endpoints in _table
        self._applied = ""  # the last full rendering applied
        self._drift = False  # pods added or removed since then
        self.rule_count = 0

    # -- CNI ----------------------------------------------------------------------------

    def added(self, namespace: str, pod: str, container: str, interface: str, ips: list,
              labels: dict | None = None, ports: tuple = ()) -> None:
        """Record the pod and program its elements; labels and named ports come from the
        pod cache when not given."""
        if labels is None:
            obj = self.pod_info.pods.wait_for(pod, namespace, timeout=self.pod_info.wait) if self.pod_info else None
            labels = dict(((obj or {}).get("metadata") or {}).get("labels") or {})
            ports = named_ports(obj)
        addresses = tuple(str(ipaddress.ip_interface(str(ip)).ip) for ip in ips)
        ep = model.Endpoint(namespace, pod, labels, addresses, interface, self.node, tuple(ports))
        key = keys.workload(self.node, namespace, pod)
        revision = self.kv.txn([], [Op.put(key, endpoint_json(ep, container).encode())]).revision
        self._change(key, ep, revision)

    def removed(self, namespace: str, pod: str, container: str) -> None:
        """Forget the pod, unless its record is already a newer sandbox's."""
        key = keys.workload(self.node, namespace, pod)
        item = self.kv.get(key)
        if item is not None and json.loads(item.value).get("container", "") in ("", container):
            done = self.kv.txn([Compare.mod(key, item.mod_revision)], [Op.delete(key)])
            if done.succeeded:
                self._change(key, None, done.revision)

    # -- the state ----------------------------------------------------------------------

    def _load_resources(self, listing=None) -> None:
        """Policies and namespaces from a listing of every resource (etcd's now if not given)."""
        listing = listing or self.kv.list(keys.RESOURCES)
        docs = {}
        for item in listing.items:
            if (doc := _decoded(item)) is not None:
                docs[item.key] = doc
        with self._lock:
            self._docs, self._docs_revision = docs, listing.revision
            self._derive()

    def _resources_changed(self, events) -> bool:
        """Fold resource watch events in; True if a policy or namespace changed."""
        changed = False
        for event in events:
            if event.type == "resync":
                self._load_resources(event)  # a resync event has items and revision, as a listing
                changed = True
                continue
            key = event.kv.key
            if _kind_of(key) is None or event.kv.mod_revision <= self._docs_revision:
                continue  # not policy's, or already in the listing
            doc = _decoded(event.kv) if event.type == "put" else None
            with self._lock:
                if doc is None:
                    self._docs.pop(key, None)
                else:
                    self._docs[key] = doc
            changed = True
        if changed:
            with self._lock:
                self._derive()
        return changed

    def _derive(self) -> None:
        """Holding the lock: the model of the documents."""
        docs = self._docs.values()
        self._policies = model.convert([d for d in docs if not isinstance(d, r.Namespace)])
        self._namespaces = {d.name: dict(d.metadata.labels) for d in docs if isinstance(d, r.Namespace)}

    def _load_endpoints(self, items, revision: int) -> None:
        """Replace the endpoints with a listing at ``revision``, keeping what is known of
        writes newer than it (an ADD or DEL that raced the listing)."""
        endpoints = {}
        for item in items:
            try:
                endpoints[item.key] = endpoint_from_json(item.value)
            except (ValueError, KeyError, TypeError) as err:  # one bad record never stops the rest
                log.warning("%s: not a workload endpoint (%s); skipped", item.key, err)
        with self._lock:
            newer = {key: rev for key, rev in self._revisions.items() if rev > revision}
            for key in newer:
                endpoints.pop(key, None)
                if key in self._endpoints:
                    endpoints[key] = self._endpoints[key]
            self._endpoints = endpoints
            self._revisions = {**{item.key: item.mod_revision for item in items}, **newer}

    def load(self) -> None:
        """Everything from etcd (at start and on the periodic resync)."""
        self._load_resources()
        listing = self.kv.list(keys.WORKLOADS)
        self._load_endpoints(listing.items, listing.revision)

    def _local(self, ep: model.Endpoint) -> bool:
        return ep.node == self.node and bool(ep.interface)

    def _compile(self) -> nft.NodeTable:
        endpoints = list(self._endpoints.values())
        return nft.NodeTable(self._policies, endpoints, self._namespaces, [ep for ep in endpoints if self._local(ep)])

    def desired(self) -> nft.Ruleset:
        """The full table for what etcd holds now."""
        self.load()
        with self._lock:
            return self._compile().ruleset

    # -- the table ----------------------------------------------------------------------

    def sync(self, reload: bool = True) -> bool:
        """Render the whole table (from etcd, or from memory) and, if it differs from
        the kernel's, apply it; True if applied."""
        if reload:
            self.load()
        with self._nft:
            return self._full()

    def _full(self) -> bool:
        """Holding the nft lock: apply the full rendering of the desired state; every
        queued change is in it."""
        with self._lock:
            table, programmed, pending = self._compile(), dict(self._endpoints), self._pending
            self._pending = []
        text = table.ruleset.render()
        changed = text != self._applied or self._drift
        try:
            if changed:
                self.apply(text)
        except Exception as err:
            self._table, self._drift = None, True  # the kernel's table is whatever it was before
            _finish(pending, err)
            raise
        self._table, self._programmed, self._applied, self._drift = table, programmed, text, False
        self.rule_count = table.ruleset.rule_count
        _finish(pending, None)
        return changed

    def _change(self, key: str, ep: model.Endpoint | None, revision: int) -> None:
        """Queue a pod's arrival (or departure, ep None), written at ``revision``, and wait
        until the kernel has it; nothing to do if a newer write of the key is known."""
        change = _Change(key, ep)
        with self._lock:
            if revision < self._revisions.get(key, 0):
                return
            self._revisions[key] = revision
            if ep is None:
                self._endpoints.pop(key, None)
            else:
                self._endpoints[key] = ep
            self._pending.append(change)
        with self._nft:
            if not change.done.is_set():
                self._commit()
        if change.error is not None:
            raise change.error

    def _commit(self) -> None:
        """Holding the nft lock: everything queued, as one transaction."""
        with self._lock:
            pending, self._pending = self._pending, []
        table, cmds = self._table, []
        for change in pending:
            was = self._programmed.get(change.key)
            if was == change.ep:
                continue
            if table is None or was is not None and change.ep is not None or \
                    change.ep is not None and not table.covers(change.ep):
                # A changed record (labels, a new sandbox) or an unknown table: render it all.
                with self._lock:
                    self._pending = pending + self._pending
                self._full()
                return
            if change.ep is None:
                cmds += table.remove(was, self._local(was))
                del self._programmed[change.key]
            else:
                cmds += table.add(change.ep, self._local(change.ep))
                self._programmed[change.key] = change.ep
        try:
            if cmds:
                self.apply("\n".join(cmds) + "\n")
                self._drift = True
        except Exception as err:
            # The kernel did not take it: forget what it holds, so the next change renders it all.
            self._table, self._programmed, self._drift = None, {}, True
            _finish(pending, err)
            raise
        self.rule_count = table.ruleset.rule_count if table else self.rule_count
        _finish(pending, None)

    def _watched(self, event) -> bool:
        """Fold one workload event into the state; True if the whole table must be
        re-rendered (a resync, a changed record)."""
        if event.type == "resync":
            self._load_endpoints(event.items or [], event.revision)
            return True
        key, revision = event.kv.key, event.kv.mod_revision
        with self._lock:
            known = self._revisions.get(key, 0)
            if revision <= known:  # our own write coming back, or older than what we know
                if event.type == "delete" and revision == known:
                    del self._revisions[key]  # the tombstone's work is done: the watch has the DEL
                return False
        if event.type == "delete":
            self._change(key, None, revision)
            return False
        try:
            ep = endpoint_from_json(event.kv.value)
        except (ValueError, KeyError, TypeError) as err:
            log.warning("%s: not a workload endpoint (%s); skipped", key, err)
            return False
        with self._lock:
            known_ep = self._endpoints.get(key)
            if known_ep is not None and known_ep != ep:  # a changed record: render it all
                self._endpoints[key], self._revisions[key] = ep, revision
                return True
        self._change(key, ep, revision)
        return False

    def cleanup(self) -> None:
        remove_table(self.netns)

    def run(self, stop: threading.Event, beat=lambda: None) -> None:
        """Follow resources and workloads, and re-render everything every ``resync``."""
        while not stop.is_set():
            beat()
            try:
                start = self.kv.revision() + 1
                self.sync()
                resources, workloads = self.kv.watch(keys.RESOURCES, start), self.kv.watch(keys.WORKLOADS, start)
            except RoutedError as err:
                self.failures += 1
                log.warning("policy: %s; retrying", err)
                stop.wait(2)
                continue
            events = _merged(resources, workloads)
            try:
                next_sync = time.monotonic() + self.resync
                while not stop.is_set():
                    beat()
                    # Wake on the first event of either watch (a policy applied is a
                    # resources event: no polling interval between it and the table).
                    batch = [] if (first := _get(events, 0.25)) is None else [first]
                    while (more := _get(events, 0)) is not None:
                        batch.append(more)
                    full = self._resources_changed([e for w, e in batch if w is resources])
                    for _, event in ((w, e) for w, e in batch if w is workloads):
                        full = self._watched(event) or full
                    if time.monotonic() >= next_sync:
                        self.sync()
                        next_sync = time.monotonic() + self.resync
                    elif full:
                        self.sync(reload=False)
            except RoutedError as err:
                self.failures += 1
                log.warning("policy: %s; resyncing", err)
            finally:
                resources.cancel()
                workloads.cancel()


def _decoded(item):
    """The policy or Namespace document a resource record holds; None for another kind
    or an unreadable record (logged: one bad record never stops the rest)."""
    if _kind_of(item.key) is None:
        return None
    try:
        return r.parse(json.loads(item.value))
    except (ValueError, RoutedError) as err:
        log.warning("%s: not a readable policy or namespace (%s); skipped", item.key, err)
        return None


def _merged(*watches) -> queue.Queue:
    """(watch, event) from several watches on one queue, in the order they arrive; each
    forwarding thread ends when its watch is cancelled."""
    out: queue.Queue = queue.Queue()

    def forward(watch):
        for event in watch:
            out.put((watch, event))

    for watch in watches:
        threading.Thread(target=forward, args=(watch,), name="policy-watch", daemon=True).start()
    return out


def _get(q: queue.Queue, timeout: float):
    try:
        return q.get(timeout=timeout) if timeout else q.get_nowait()
    except queue.Empty:
        return None


def _finish(changes: list[_Change], error: Exception | None) -> None:
    for change in changes:
        change.error = error
        change.done.set()
