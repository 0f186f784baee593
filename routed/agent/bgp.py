"""The agent's BGP controller: what the node announces, what it learned, what the kernel gets.

Desired state comes from etcd (Nodes, BGPPeers, BGPConfiguration, IPPools, this node's
blocks and borrowed addresses); learned routes come from ExaBGP through bgp.helper.
Every change recomputes and applies: the ExaBGP configuration (written for the
bgp-speaker sidecar, which reloads it), announcements (batched), and the kernel's
proto-202 routes (one bulk sync, never one netlink call per route).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import queue
import re
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from bgp import communities, decide, exabgp, peers as peering
from bgp.order import address_key, link_local_first, network_key
from bgp.services import Advertisement
from bgp.speaker import group_shared, write_config
from ipam.origins import Origins
from routed import resources as r
from routed.datastore import keys
from routed.errors import RoutedError
from routed.resources.bgp import secret_ref_ok

from routed.runtime.metrics import Family

log = logging.getLogger("routed.bgp")

BATCH = 200  # prefixes per ExaBGP command: ~1,500/s batched against ~800/s one by one
PROGRAM_EVERY = 0.25  # seconds: the longest received routes wait for the kernel while UPDATEs keep coming


# What ExaBGP reports of a session, and ours: "idle" (configured, nothing heard yet) and
# "skipped" (left out of ExaBGP's configuration: peer_status's info says why).
SESSION_STATES = frozenset({"idle", "connected", "up", "down", "skipped"})


@dataclass
class PeerStatus:
    address: str
    kind: str
    name: str
    state: str = "idle"
    since: float = field(default_factory=time.time)
    info: str = ""
    accepted: int = 0
    rejected: int = 0
    error: str = ""  # why the peer is left out of ExaBGP's configuration ("": it is not)
    max_prefixes: int = 0
    dropped: int = 0  # routes not kept since the session came up: over max_prefixes
    rejected_by: dict = field(default_factory=dict)  # reason -> routes


class HelperLink:
    """The unix socket bgp.helper connects to; the newest connection wins."""

    def __init__(self, path: str, events: queue.Queue):
        self.path, self.events = Path(path), events
        self._conn: socket.socket | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.unlink(missing_ok=True)
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(str(self.path))
        os.chmod(self.path, 0o660 if group_shared(self.path.parent) else 0o600)
        self._server.listen(4)
        threading.Thread(target=self._accept, name="bgp-helper-accept", daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            with self._lock:
                if self._conn is not None:
                    self._conn.close()
                self._conn = conn
            threading.Thread(target=self._read, args=(conn,), name="bgp-helper-read", daemon=True).start()

    def _read(self, conn: socket.socket) -> None:
        buf = b""
        while True:
            try:
                chunk = conn.recv(1 << 20)
            except OSError:
                break
            if not chunk:
                break
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                try:
                    self.events.put(("helper", json.loads(line)))
                except ValueError:
                    log.warning("unreadable line from bgp.helper: %.200r", line)
        self.events.put(("helper-gone", None))

    def send(self, commands: list[str]) -> bool:
        return self._send([{"command": c} for c in commands])

    def send_limits(self, limits: dict[str, int]) -> bool:
        """What bgp.helper keeps of each peer for its snapshots: the peers' maxPrefixes."""
        return self._send([{"limits": limits}])

    def _send(self, messages: list[dict]) -> bool:
        with self._lock:
            if self._conn is None:
                return False
            try:
                self._conn.sendall(b"".join(json.dumps(m).encode() + b"\n" for m in messages))
                return True
            except OSError:
                self._conn = None
                return False

    @property
    def connected(self) -> bool:
        return self._conn is not None

    def stop(self) -> None:
        self._server.close()
        self.path.unlink(missing_ok=True)


def announce_commands(verb: str, prefixes: list[str], attributes: dict[str, str] | None = None) -> list[str]:
    """`announce|withdraw attributes next-hop self nlri p1 p2 ...`, BATCH prefixes a line,
    one family a line: ExaBGP reads a mixed nlri list as one family (the IPv4 prefixes of a
    line with IPv6 ones never reached an IPv4 peer). attributes (prefix -> " community
    [..]"...): prefixes with the same ones share lines."""
    groups: dict[tuple[int, str], list[str]] = {}
    for prefix in prefixes:
        groups.setdefault((network_key(prefix)[0], (attributes or {}).get(prefix, "")), []).append(prefix)
    out = []
    for version, extra in sorted(groups):
        ordered = sorted(groups[version, extra], key=network_key)
        out += [f"{verb} attributes next-hop self{extra} nlri {' '.join(ordered[i:i + BATCH])}"
                for i in range(0, len(ordered), BATCH)]
    return out


class BGPController:
    name = "bgp"

    def __init__(self, kv, store, dataplane, node: str, node_address: str, bgp_dir: str, socket_path: str,
                 secrets_dir: str = "/etc/routed/secrets", resync: float = 30.0, node_address6: str | None = None,
                 services=None):
        self.kv, self.store, self.dataplane = kv, store, dataplane
        # Service addresses announced beside the blocks (routed/agent/services.py), if any.
        self.services = services
        self.advertisement = Advertisement()
        self.service_prefixes: set[str] = set()
        self.node, self.interface = node, ipaddress.ip_interface(node_address)
        # This node's subnets, one per family: a next hop on one of them is reached directly.
        self.subnets = tuple(ipaddress.ip_interface(a).network for a in (node_address, node_address6) if a)
        self.bgp_dir, self.secrets_dir, self.resync = bgp_dir, secrets_dir, resync
        self.events: queue.Queue = queue.Queue()
        self._services_queued = False  # a "services" event is queued and not taken yet
        self._services_lock = threading.Lock()
        self.link = HelperLink(socket_path, self.events)
        self.helper_command = f"{sys.executable} -m bgp.helper --socket {socket_path}"
        self.status: dict[str, PeerStatus] = {}
        # What peers sent, unfiltered but bounded by each peer's maxPrefixes: the filters
        # run when routes are programmed, so a policy or IPAM change applies to what is here.
        self.received: dict[str, dict[str, decide.Learned]] = {}  # peer -> prefix -> route
        self._rejected: set[tuple[str, str]] = set()  # logged once each
        self.stale_until: dict[str, float] = {}  # peer -> when its kept routes go (graceful restart)
        self.announced: set[str] = set()
        # BGPConfiguration's prefixAdvertisements: (cidr, community values), and what each
        # announced prefix carries by them (a change re-announces the prefix).
        self.advertisements: list[tuple[str, tuple[str, ...]]] = []
        self.announced_attributes: dict[str, str] = {}
        self.peers: dict[str, peering.Peer] = {}
        self.my_as = peering.DEFAULT_AS
        self.pools: list[decide.PoolView] = []
        self.node_addresses: dict[str, str] = {}  # node name -> BGP address
        self.node_addresses6: dict[str, str] = {}  # node name -> IPv6 address (dual-stack nodes)
        # IPAM's answer to "who originates this prefix", kept from the block watch one
        # event at a time; None until the first listing arrived (nothing is announced or
        # judged before: an empty IPAM would withdraw every route).
        self.origins: Origins | None = None
        self._bad_blocks: set[str] = set()  # unreadable block keys, logged once each
        self.own_prefixes: set[str] = set()
        self.programmed: list[decide.Route] = []
        self.dropped_total: dict[str, int] = {}  # peer -> routes over maxPrefixes, ever (a counter)
        self._limits_sent: dict[str, int] | None = None  # what bgp.helper was told last
        # What bgp.helper said before the first sync, replayed in order after it: an agent
        # restarting under a running ExaBGP gets the helper's snapshot (sessions up, their
        # routes) at once, and before its peers are known every state and route in it
        # would be dropped as from no peer of ours. None once synced.
        self._before_sync: list[dict] | None = []
        self.judged_total = 0  # passes over every received route (program()): a counter
        # Received routes changed since the last program(): a burst of UPDATEs (a reflector
        # sends one per next hop, so 1,000 nodes are 1,000 UPDATEs) is judged once, not once each.
        self._routes_changed = False
        self._programmed_at = 0.0
        self._lock = threading.Lock()

    # -- loop -------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        self.link.start()
        watcher = threading.Thread(target=self._watch, args=(stop,), name="bgp-watch", daemon=True)
        watcher.start()
        self.events.put(("resync", None))
        next_resync = time.monotonic() + self.resync
        while not stop.is_set():
            try:
                kind, payload = self.events.get(timeout=0.5)
            except queue.Empty:
                kind, payload = "tick", None
            try:
                if kind in ("resync", "etcd", "origins"):
                    resync, ipam_changed = self._drain_etcd((kind, payload))
                    if resync or time.monotonic() >= next_resync:
                        self.sync()
                        next_resync = time.monotonic() + self.resync
                    elif ipam_changed:
                        self.refresh()
                elif time.monotonic() >= next_resync:
                    self.sync()
                    next_resync = time.monotonic() + self.resync
                if kind == "helper":
                    self.on_helper(payload)
                elif kind == "services":  # Kubernetes changed a Service or EndpointSlice
                    self._took_services_event()
                    self._update_services()
                    self.refresh(program=False)
                elif kind == "helper-gone":
                    log.warning("bgp.helper disconnected (ExaBGP restarting?)")
                elif kind == "tick":
                    self._expire_stale()
                if self._routes_changed and (self.events.empty() or
                                             time.monotonic() - self._programmed_at >= PROGRAM_EVERY):
                    self.program()
            except RoutedError as err:
                log.warning("bgp: %s", err)
            except Exception:
                log.exception("bgp: unexpected error")
        self.link.stop()

    def services_changed(self) -> None:
        """A Service or EndpointSlice changed (the informers' threads call this): one event
        queued however many changes arrive before the loop takes it, so a rollout's burst of
        EndpointSlice updates recomputes the service plan once, not once per update."""
        with self._services_lock:
            if self._services_queued:
                return
            self._services_queued = True
        self.events.put(("services", None))

    def _took_services_event(self) -> None:
        with self._services_lock:
            self._services_queued = False  # a change from now on queues a new event

    def _drain_etcd(self, first: tuple[str, object]) -> tuple[bool, bool]:
        """Apply the etcd change just taken (first), then every one queued after it, in
        order (a block change queued behind IPAM's listing applies to that listing, not to
        nothing): block changes go to IPAM's index one by one; resource changes make one
        resync. Helper messages stay queued in order. Returns (resources changed, IPAM changed)."""
        resync = ipam_changed = False
        keep = []
        item = first
        while item is not None:
            kind, payload = item
            if kind == "resync":
                resync = True
            elif kind == "origins":  # IPAM read whole (start-up, or a new watch)
                with self._lock:
                    self.origins = payload
                ipam_changed = True
            elif kind == "etcd":
                with self._lock:
                    changed = self.origins is not None and self.origins.apply(payload)
                ipam_changed |= changed
                resync |= payload.type == "resync" or payload.kv.key.startswith(keys.RESOURCES)
            else:
                keep.append(item)
            try:
                item = self.events.get_nowait()
            except queue.Empty:
                item = None
        for item in keep:
            self.events.put(item)
        if ipam_changed:
            self._report_unreadable()
        return resync, ipam_changed

    def _report_unreadable(self) -> None:
        with self._lock:
            unreadable = dict(self.origins.unreadable) if self.origins else {}
        for key in unreadable.keys() - self._bad_blocks:
            log.error("IPAM block %s is unreadable, no route inside it is accepted: %s", key, unreadable[key])
        self._bad_blocks = set(unreadable)

    def _watch(self, stop: threading.Event) -> None:
        """IPAM's blocks read once, then every change under routed's keys: block changes
        update IPAM's index one by one, resource changes resync peers and pools."""
        while not stop.is_set():
            try:
                origins, revision = Origins.read(self.kv)
                watch = self.kv.watch(keys.ROOT, revision + 1)
            except RoutedError:
                stop.wait(1)
                continue
            self.events.put(("origins", origins))
            try:
                while not stop.is_set():
                    event = watch.get(timeout=1.0)
                    if event is not None:
                        self.events.put(("etcd", event))
            except RoutedError as err:
                log.warning("bgp: watch: %s; reading IPAM again", err)
            finally:
                watch.cancel()

    # -- desired state from etcd ----------------------------------------------------------

    def sync(self) -> None:
        me = self.store.find(r.Node, self.node)
        if me is None:
            return  # not registered yet
        nodes = self.store.list(r.Node)
        configs = self.store.list(r.BGPConfiguration)
        bgp_peers = self.store.list(r.BGPPeer)
        pools = self.store.list(r.IPPool)
        speaker = peering.local_speaker(me, configs)
        wanted = peering.desired_peers(me, nodes, configs, bgp_peers)
        # A peer whose password cannot be had or written is left out, alone: the others
        # and the announcements go on.
        passwords, errors = {}, {}
        for p in wanted:
            if p.password_ref:
                try:
                    passwords[p.address] = read_secret(self.secrets_dir, *p.password_ref)
                except RoutedError as err:
                    errors[p.address] = str(err)
        rendered = exabgp.render(speaker, [p for p in wanted if p.address not in errors], self.helper_command,
                                 passwords)
        errors.update(rendered.skipped)
        usable = [p for p in wanted if p.address not in errors]
        if write_config(self.bgp_dir, rendered.text, exabgp.environment(speaker)):
            log.info("ExaBGP configuration written: %d peer(s)", len(usable))
        with self._lock:
            self.my_as = speaker.as_number
            self.advertisements = peering.config_for(configs, self.node).community_values()
            self.peers = {p.address: p for p in usable}
            for p in wanted:
                status = self.status.get(p.address)
                if status is None or (status.kind, status.name) != (p.kind, p.name):
                    status = self.status[p.address] = PeerStatus(p.address, p.kind, p.name)
                error = errors.get(p.address, "")
                if error and error != status.error:
                    log.error("BGP peer %s (%s %s) left out: %s", p.address, p.kind, p.name, error)
                elif status.error and not error:
                    log.info("BGP peer %s (%s %s) configured again", p.address, p.kind, p.name)
                status.error, status.max_prefixes = error, p.max_prefixes
                if error:
                    status.state, status.accepted, status.rejected, status.rejected_by = "skipped", 0, 0, {}
                    self.received.pop(p.address, None)
                elif status.state == "skipped":
                    status.state, status.since = "idle", time.time()
                self._trim(p.address, p.max_prefixes)
            for gone in set(self.status) - {p.address for p in wanted}:
                del self.status[gone]
                self.received.pop(gone, None)
            # Disabled pools count too: their blocks still hold pods that must stay reachable.
            self.pools = [decide.PoolView(p.network, p.spec.ipip_mode, p.spec.vxlan_mode) for p in pools]
            self.node_addresses = {n.metadata.name: a for n in nodes if (a := peering.node_address(n))}
            self.node_addresses6 = {n.metadata.name: a for n in nodes if (a := peering.node_address6(n))}
            default = next((c.spec for c in configs if c.name == "default"), None)
            self.advertisement = Advertisement.from_spec(default) if default else Advertisement()
        self._update_services()
        self._send_limits()
        self.refresh()
        early, self._before_sync = self._before_sync, None
        for msg in early or ():
            self.on_helper(msg)

    def _send_limits(self) -> None:
        with self._lock:
            limits = {p.address: p.max_prefixes for p in self.peers.values() if p.max_prefixes}
        if limits != self._limits_sent and self.link.send_limits(limits):
            self._limits_sent = limits

    def refresh(self, program: bool = True) -> None:
        """Announce what IPAM says is ours (and the service prefixes); judge every received route again."""
        own = self._own_prefixes()
        if own is None:
            return  # IPAM not read yet
        self._announce(own)
        if program:
            self.program()

    def _update_services(self) -> None:
        """The service prefixes to announce, from the source's current view. Only the
        families this node's sessions carry: its own address's, and its usable peers'."""
        if self.services is None:
            return
        with self._lock:
            adv, pools = self.advertisement, [p.network for p in self.pools]
            families = {self.interface.version} | {ipaddress.ip_address(a).version for a in self.peers}
        wanted = self.services.prefixes(adv, pools)
        with self._lock:
            self.service_prefixes = {p for p in wanted if ipaddress.ip_network(p).version in families}

    def _own_prefixes(self) -> set[str] | None:
        """This node's blocks, and /32s of addresses it holds in other nodes' blocks (IPAM's rule)."""
        with self._lock:
            return None if self.origins is None else self.origins.prefixes_of(self.node)

    # -- announcements ----------------------------------------------------------------------

    def _announce(self, own: set[str], full: bool = False) -> None:
        with self._lock:
            self.own_prefixes = own
            wanted = own | self.service_prefixes
            attributes = communities.attributes(wanted, self.advertisements)
            # A prefix whose communities changed is announced again: the new route replaces it.
            add = wanted if full else {p for p in wanted if p not in self.announced
                                       or self.announced_attributes.get(p) != attributes[p]}
            remove = set() if full else self.announced - wanted
        commands = (announce_commands("withdraw", sorted(remove))
                    + announce_commands("announce", sorted(add), attributes))
        if not commands:
            return
        if self.link.send(commands):
            with self._lock:
                self.announced, self.announced_attributes = set(wanted), attributes
            log.info("announced %d, withdrew %d prefix(es)", len(add), len(remove))

    # -- what ExaBGP tells us ---------------------------------------------------------------

    def on_helper(self, msg: dict) -> None:
        if self._before_sync is not None:
            self._before_sync.append(msg)
            return
        kind = msg.get("type")
        if kind == "snapshot":
            # A new helper: ExaBGP (re)started or we did. It knows nothing we announced.
            with self._lock:
                self.announced = set()
            self._limits_sent = None
            self._send_limits()
            own = self._own_prefixes()
            if own is not None:
                self._announce(own, full=True)
            for state in msg.get("peers", {}).values():
                self._on_state(state)
            with self._lock:
                for peer, routes in msg.get("routes", {}).items():
                    self.received[peer] = {}
                    for prefix, info in routes.items():
                        self._learn(peer, prefix, info.get("next-hop", ""), info.get("attribute", {}))
            self._routes_changed = True
        elif kind == "state":
            self._on_state(msg)
            self._routes_changed = True
        elif kind == "update":
            self._on_update(msg)
            self._routes_changed = True
        elif kind == "notification":
            peer = _peer_of(msg)
            if peer in self.status:
                note = (msg.get("neighbor", {}).get("message") or {}).get("notification", {})
                self.status[peer].info = describe_notification(note.get("code"), note.get("subcode"),
                                                               str(note.get("data", "")).strip())

    def _on_state(self, msg: dict) -> None:
        neighbor = msg.get("neighbor", {})
        peer, state = _peer_of(msg), neighbor.get("state", "")
        status = self.status.get(peer)
        if status is None or status.error:
            return  # not ours, or left out of the configuration (ExaBGP's last word on it)
        if state != status.state:
            status.state, status.since = state, time.time()
        if state == "up":
            status.info, status.dropped = "", 0
            with self._lock:
                self.stale_until.pop(peer, None)
                # A session carries one family, the peer's (an IPv6 session IPv6 blocks).
                version = ipaddress.ip_address(peer).version
                prefixes = sorted(p for p in self.own_prefixes | self.service_prefixes
                                  if ipaddress.ip_network(p).version == version)
                attributes = communities.attributes(prefixes, self.advertisements)
            # ExaBGP gives a neighbour added by a reload none of what was announced before
            # it existed: announce everything to this one, then End-of-RIB, which tells a
            # peer in graceful restart that our routes are all there.
            self.link.send([f"neighbor {peer} {c}" for c in announce_commands("announce", prefixes, attributes)]
                           + [f"neighbor {peer} announce eor ipv{version} unicast"])
        elif state == "down":
            reason = neighbor.get("reason", "")
            # ExaBGP's reasons name the notification only as numbers, "(2,2)": say what it
            # means, and keep it over the generic "closing connection" of the next attempt.
            found = re.search(r"\((\d+),(\d+)\)", reason)
            if found:
                status.info = describe_notification(*found.groups())
            elif reason and not status.info.startswith("BGP notification"):
                status.info = reason
            keep = self.peers.get(peer).graceful_restart if peer in self.peers else 0
            with self._lock:
                if keep:
                    self.stale_until.setdefault(peer, time.monotonic() + keep)
                else:
                    self.received.pop(peer, None)

    def _on_update(self, msg: dict) -> None:
        peer = _peer_of(msg)
        message = msg.get("neighbor", {}).get("message", {})
        if "eor" in message:
            with self._lock:
                if self.stale_until.pop(peer, None) is not None:
                    log.info("peer %s: End-of-RIB after restart", peer)
            return
        update = message.get("update", {})
        attrs = update.get("attribute", {})
        with self._lock:
            table = self.received.setdefault(peer, {})
            for entries in (update.get("withdraw") or {}).values():
                for entry in entries:
                    table.pop(entry["nlri"], None)
            for by_hop in (update.get("announce") or {}).values():
                for next_hop, entries in link_local_first(by_hop):
                    for entry in entries:
                        self._learn(peer, entry["nlri"], next_hop, attrs)

    def _learn(self, peer: str, prefix: str, next_hop: str, attrs: dict) -> None:
        """Keep one received route (called with the lock held); program() filters.

        Like BIRD's `receive limit N action block`: past the peer's maxPrefixes a new
        prefix is not kept at all (memory stays bounded whatever the peer sends), and
        node status says so."""
        config = self.peers.get(peer)
        if config is None:
            return
        table = self.received.setdefault(peer, {})
        if prefix not in table and config.max_prefixes and len(table) >= config.max_prefixes:
            status = self.status.get(peer)
            if status is not None:
                if not status.dropped:
                    log.warning("peer %s: max-prefixes %d reached; further routes are dropped",
                                peer, config.max_prefixes)
                status.dropped += 1
            self.dropped_total[peer] = self.dropped_total.get(peer, 0) + 1
            return
        table[prefix] = decide.Learned(prefix, next_hop, peer, tuple(_as_path(attrs)))

    def _trim(self, peer: str, limit: int) -> None:
        """A lowered maxPrefixes applies to what is already kept (called with the lock held)."""
        table = self.received.get(peer)
        if not limit or table is None or len(table) <= limit:
            return
        extra = sorted(table)[limit:]
        for prefix in extra:
            del table[prefix]
        self.status[peer].dropped += len(extra)
        self.dropped_total[peer] = self.dropped_total.get(peer, 0) + len(extra)

    def _accepted(self) -> dict[str, list[decide.Learned]]:
        """The routes that pass every filter, by prefix (called with the lock held)."""
        policy = decide.Policy(self.my_as, self.pools, self.own_prefixes, self.origins, self.node_addresses,
                               self.node_addresses6, service_cidrs=self.advertisement.cidrs)
        by_prefix: dict[str, list[decide.Learned]] = {}
        rejected = set()
        for peer, table in self.received.items():
            config, status = self.peers.get(peer), self.status.get(peer)
            if config is None or status is None:
                continue
            accepted, services, by_reason = 0, 0, {}
            for prefix in sorted(table):
                route = table[prefix]
                why = decide.rejection(route, policy, config.allowed_prefixes)
                if why is not None and why.reason == decide.SERVICE:
                    services += 1  # another node's service address: for external routers, not us
                    continue
                if why is not None:
                    by_reason[why.reason] = by_reason.get(why.reason, 0) + 1
                    rejected.add((peer, prefix))
                    if (peer, prefix) not in self._rejected:
                        log.info("peer %s: rejected %s: %s", peer, prefix, why)
                    continue
                accepted += 1
                by_prefix.setdefault(prefix, []).append(route)
            status.accepted, status.rejected = accepted, len(table) - accepted - services
            status.rejected_by = by_reason
        self._rejected = rejected
        return by_prefix

    def _expire_stale(self) -> None:
        now = time.monotonic()
        with self._lock:
            expired = [p for p, until in self.stale_until.items() if until <= now]
            for peer in expired:
                del self.stale_until[peer]
                if self.status.get(peer) is None or self.status[peer].state != "up":
                    self.received.pop(peer, None)
        if expired:
            log.info("graceful restart time over for %s: their routes are removed", ", ".join(expired))
            self.program()

    # -- the kernel -----------------------------------------------------------------------

    def program(self) -> None:
        with self._lock:
            if self.origins is None:
                return  # judged against an empty IPAM, every pool route would go
            by_prefix = self._accepted()
            pools = list(self.pools)
            self.judged_total += 1
            self._routes_changed, self._programmed_at = False, time.monotonic()
        routes = decide.kernel_routes(by_prefix, pools, self.subnets, self.dataplane.nic)
        result = self.dataplane.sync_learned(routes)
        self.programmed = routes
        if result:
            log.info("learned routes: %s", result)

    def peer_status(self) -> list[dict]:
        with self._lock:
            return [{"address": s.address, "family": f"IPv{ipaddress.ip_address(s.address).version}",
                     "type": s.kind, "name": s.name, "state": s.state,
                     "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(s.since)), "info": _info(s),
                     "accepted": s.accepted, "rejected": s.rejected, "rejectedBy": dict(s.rejected_by),
                     "maxPrefixes": s.max_prefixes, "dropped": s.dropped, "error": s.error}
                    for s in sorted(self.status.values(), key=lambda s: address_key(s.address))]

    def metrics(self) -> list[Family]:
        now = time.time()
        with self._lock:
            statuses = sorted(self.status.values(), key=lambda s: s.address)
            rejected = [({"peer": s.address, "reason": reason}, n)
                        for s in statuses for reason, n in sorted(s.rejected_by.items())]
            dropped = [({"peer": peer}, n) for peer, n in sorted(self.dropped_total.items())]
            skipped = sum(1 for s in statuses if s.error)
            received = [({"peer": s.address}, len(self.received.get(s.address, {}))) for s in statuses]
            services = len(self.service_prefixes)
        # Every state a session can be in, 1 for the one it is in: alerts need no absent() tricks.
        states = [({"peer": s.address, "state": state}, int(s.state == state))
                  for s in statuses for state in sorted(SESSION_STATES | {s.state})]
        return [Family("routed_bgp_session_up", "gauge", "1 while the BGP session with the peer is established, by "
                       "peer, its type (mesh, global, node, ...) and name.",
                       [({"peer": s.address, "type": s.kind, "name": s.name}, int(s.state == "up"))
                        for s in statuses]),
                Family("routed_bgp_session_state", "gauge", "The BGP session's state, one series per state (1: the "
                       "state it is in).", states),
                Family("routed_bgp_session_uptime_seconds", "gauge", "Seconds since the session was established "
                       "(0 while it is not).",
                       [({"peer": s.address}, now - s.since if s.state == "up" else 0) for s in statuses]),
                Family("routed_bgp_received_routes", "gauge", "Routes the peer sent that are kept, by peer.",
                       received),
                Family("routed_bgp_accepted_routes", "gauge", "Received routes judged fit to install, by peer.",
                       [({"peer": s.address}, s.accepted) for s in statuses]),
                Family("routed_bgp_rejected_routes", "gauge",
                       "Received routes not installed, by peer and reason.", rejected),
                Family("routed_bgp_dropped_routes_total", "counter",
                       "Routes not kept because the peer was at its maxPrefixes.", dropped),
                Family("routed_bgp_route_judgements_total", "counter",
                       "Passes that judged every received route again and synced the kernel's.",
                       [({}, self.judged_total)]),
                Family("routed_bgp_peers_skipped", "gauge",
                       "BGP peers left out of the configuration (missing secret, bad password, ...).",
                       [({}, skipped)]),
                Family("routed_bgp_service_prefixes", "gauge", "Service prefixes this node announces "
                       "(serviceClusterIPs CIDRs, external and LoadBalancer IPs).", [({}, services)])]


def _info(s: PeerStatus) -> str:
    """What node status says beside the state: a configuration error first, then a full
    receive table, then what ExaBGP last reported."""
    if s.error:
        return s.error
    if s.dropped:
        limit = f"max-prefixes {s.max_prefixes} reached: {s.dropped} route(s) dropped"
        return f"{limit}; {s.info}" if s.info else limit
    return s.info


def read_secret(secrets_dir: str, name: str, key: str) -> str:
    """The BGP password <secrets_dir>/<name>/<key>, never a file outside secrets_dir."""
    if not secret_ref_ok(name, key):
        raise RoutedError(f"BGP password secret {name!r}/{key!r} is not a Secret name and key")
    base = Path(secrets_dir).resolve()
    path = (base / name / key).resolve()  # Kubernetes mounts keys as symlinks into ..data/
    if not path.is_relative_to(base):
        raise RoutedError(f"BGP password secret {name}/{key} points outside {secrets_dir}")
    try:
        return path.read_text().strip()
    except OSError:
        raise RoutedError(f"BGP password secret {name}/{key} not found under {secrets_dir}") from None


def _peer_of(msg: dict) -> str:
    return ((msg.get("neighbor") or {}).get("address") or {}).get("peer", "")


def _as_path(attrs: dict) -> list[int]:
    """Every AS of the path. ExaBGP 5 sends {"0": {"element": "as-sequence", "value": [..]}, ...};
    a plain list (older releases) is read too."""
    path = attrs.get("as-path") or []
    segments = [path[k] for k in sorted(path, key=int)] if isinstance(path, dict) else path
    out = []
    for segment in segments:
        if isinstance(segment, int):
            out.append(segment)
        elif isinstance(segment, dict):
            out += [a for a in segment.get("value", []) if isinstance(a, int)]
        elif isinstance(segment, list):  # an AS_SET in the old form
            out += [a for a in segment if isinstance(a, int)]
    return out


# RFC 4271 (and 4486 for Cease) notification codes, as a user can read them.
NOTIFICATIONS = {
    (1, 0): "message header error", (2, 1): "unsupported BGP version", (2, 2): "bad peer AS",
    (2, 3): "bad BGP identifier", (2, 4): "unsupported optional parameter", (2, 6): "unacceptable hold time",
    (2, 7): "unsupported capability", (3, 0): "UPDATE message error", (4, 0): "hold timer expired",
    (5, 0): "finite state machine error", (6, 1): "maximum number of prefixes reached",
    (6, 2): "administrative shutdown", (6, 3): "peer de-configured", (6, 4): "administrative reset",
    (6, 5): "connection rejected", (6, 6): "other configuration change", (6, 7): "connection collision",
    (6, 8): "out of resources",
}


def describe_notification(code, subcode, data: str = "") -> str:
    try:
        code, subcode = int(code), int(subcode)
    except (TypeError, ValueError):
        return f"notification {code}/{subcode}"
    text = NOTIFICATIONS.get((code, subcode)) or NOTIFICATIONS.get((code, 0)) or "unknown error"
    return f"BGP notification {code}/{subcode}: {text}" + (f" ({data})" if data else "")
