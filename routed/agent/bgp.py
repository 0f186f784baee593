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

from bgp import decide, exabgp, peers as peering
from bgp.speaker import write_config
from ipam.allocator import affinity_of
from ipam.block import Block
from routed import resources as r
from routed.datastore import keys
from routed.errors import RoutedError

log = logging.getLogger("routed.bgp")

BATCH = 200  # prefixes per ExaBGP command: ~1,500/s batched against ~800/s one by one


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
        os.chmod(self.path, 0o600)
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
        with self._lock:
            if self._conn is None:
                return False
            try:
                self._conn.sendall(b"".join(json.dumps({"command": c}).encode() + b"\n" for c in commands))
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


def announce_commands(verb: str, prefixes: list[str]) -> list[str]:
    """`announce|withdraw attributes next-hop self nlri p1 p2 ...`, BATCH prefixes a line."""
    ordered = sorted(prefixes, key=lambda p: ipaddress.ip_network(p))
    return [f"{verb} attributes next-hop self nlri {' '.join(ordered[i:i + BATCH])}"
            for i in range(0, len(ordered), BATCH)]


class BGPController:
    name = "bgp"

    def __init__(self, kv, store, dataplane, node: str, node_address: str, bgp_dir: str, socket_path: str,
                 secrets_dir: str = "/etc/routed/secrets", resync: float = 30.0):
        self.kv, self.store, self.dataplane = kv, store, dataplane
        self.node, self.interface = node, ipaddress.ip_interface(node_address)
        self.bgp_dir, self.secrets_dir, self.resync = bgp_dir, secrets_dir, resync
        self.events: queue.Queue = queue.Queue()
        self.link = HelperLink(socket_path, self.events)
        self.helper_command = f"{sys.executable} -m bgp.helper --socket {socket_path}"
        self.status: dict[str, PeerStatus] = {}
        # Everything peers sent, unfiltered: the filters run when routes are programmed, so
        # a policy change (allowedPrefixes, pools, max-prefixes) applies to what is here.
        self.received: dict[str, dict[str, decide.Learned]] = {}  # peer -> prefix -> route
        self._rejected: set[tuple[str, str]] = set()  # logged once each
        self.stale_until: dict[str, float] = {}  # peer -> when its kept routes go (graceful restart)
        self.announced: set[str] = set()
        self.peers: dict[str, peering.Peer] = {}
        self.my_as = peering.DEFAULT_AS
        self.pools: list[decide.PoolView] = []
        self.own_prefixes: set[str] = set()
        self.programmed: list[decide.Route] = []
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
                if kind == "resync" or time.monotonic() >= next_resync:
                    self._drain_resyncs()
                    self.sync()
                    next_resync = time.monotonic() + self.resync
                if kind == "helper":
                    self.on_helper(payload)
                elif kind == "helper-gone":
                    log.warning("bgp.helper disconnected (ExaBGP restarting?)")
                elif kind == "tick":
                    self._expire_stale()
            except RoutedError as err:
                log.warning("bgp: %s", err)
            except Exception:
                log.exception("bgp: unexpected error")
        self.link.stop()

    def _drain_resyncs(self) -> None:
        """Many etcd changes in a row are one resync; helper messages stay queued in order."""
        keep = []
        while True:
            try:
                item = self.events.get_nowait()
            except queue.Empty:
                break
            if item[0] != "resync":
                keep.append(item)
        for item in keep:
            self.events.put(item)

    def _watch(self, stop: threading.Event) -> None:
        """Any change under routed's keys may change peers, pools or announcements."""
        while not stop.is_set():
            try:
                watch = self.kv.watch(keys.ROOT, self.kv.revision() + 1)
            except RoutedError:
                stop.wait(1)
                continue
            try:
                while not stop.is_set():
                    if watch.get(timeout=1.0) is not None:
                        self.events.put(("resync", None))
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
        passwords = {p.address: self._secret(p.password_ref) for p in wanted if p.password_ref}
        config = exabgp.render(speaker, wanted, self.helper_command, passwords)
        if write_config(self.bgp_dir, config, exabgp.environment(speaker)):
            log.info("ExaBGP configuration written: %d peer(s)", len(wanted))
        with self._lock:
            self.my_as = speaker.as_number
            self.peers = {p.address: p for p in wanted}
            for p in wanted:
                status = self.status.get(p.address)
                if status is None or (status.kind, status.name) != (p.kind, p.name):
                    self.status[p.address] = PeerStatus(p.address, p.kind, p.name)
            for gone in set(self.status) - set(self.peers):
                del self.status[gone]
                self.received.pop(gone, None)
            # Disabled pools count too: their blocks still hold pods that must stay reachable.
            self.pools = [decide.PoolView(p.network, p.spec.ipip_mode, p.spec.vxlan_mode) for p in pools]
        self._announce(self._own_prefixes())
        self.program()

    def _secret(self, ref) -> str:
        name, key = ref
        path = Path(self.secrets_dir) / name / key
        try:
            return path.read_text().strip()
        except OSError:
            raise RoutedError(f"BGP password secret {name}/{key} not found under {self.secrets_dir}") from None

    def _own_prefixes(self) -> set[str]:
        """This node's blocks, and /32s of addresses it borrowed from other nodes' blocks."""
        mine = affinity_of(self.node)
        prefixes = set()
        for item in self.kv.list(keys.BLOCKS).items:
            block = Block.from_json(item.value, key=item.key)
            if block.affinity == mine:
                prefixes.add(str(block.cidr))
                continue
            for handle in block.handles():
                for ip in block.ips_for_handle(handle):
                    attrs = block.attributes_for(ip)
                    if attrs and attrs["secondary"].get("node") == self.node:
                        prefixes.add(f"{ip}/{ip.max_prefixlen}")
        return prefixes

    # -- announcements ----------------------------------------------------------------------

    def _announce(self, wanted: set[str], full: bool = False) -> None:
        with self._lock:
            self.own_prefixes = wanted
            add = wanted if full else wanted - self.announced
            remove = set() if full else self.announced - wanted
        commands = announce_commands("withdraw", sorted(remove)) + announce_commands("announce", sorted(add))
        if not commands:
            return
        if self.link.send(commands):
            with self._lock:
                self.announced = set(wanted)
            log.info("announced %d, withdrew %d prefix(es)", len(add), len(remove))

    # -- what ExaBGP tells us ---------------------------------------------------------------

    def on_helper(self, msg: dict) -> None:
        kind = msg.get("type")
        if kind == "snapshot":
            # A new helper: ExaBGP (re)started or we did. It knows nothing we announced.
            with self._lock:
                self.announced = set()
            self._announce(self._own_prefixes(), full=True)
            for state in msg.get("peers", {}).values():
                self._on_state(state)
            with self._lock:
                for peer, routes in msg.get("routes", {}).items():
                    self.received[peer] = {}
                    for prefix, info in routes.items():
                        self._learn(peer, prefix, info.get("next-hop", ""), info.get("attribute", {}))
            self.program()
        elif kind == "state":
            self._on_state(msg)
            self.program()
        elif kind == "update":
            self._on_update(msg)
            self.program()
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
        if status is None:
            return
        if state != status.state:
            status.state, status.since = state, time.time()
        if state == "up":
            status.info = ""
            with self._lock:
                self.stale_until.pop(peer, None)
                prefixes = sorted(self.own_prefixes)
            # ExaBGP gives a neighbour added by a reload none of what was announced before
            # it existed: announce everything to this one, then End-of-RIB, which tells a
            # peer in graceful restart that our routes are all there.
            self.link.send([f"neighbor {peer} {c}" for c in announce_commands("announce", prefixes)]
                           + [f"neighbor {peer} announce eor ipv4 unicast"])
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
                for next_hop, entries in by_hop.items():
                    for entry in entries:
                        self._learn(peer, entry["nlri"], next_hop, attrs)

    def _learn(self, peer: str, prefix: str, next_hop: str, attrs: dict) -> None:
        """Keep one received route (called with the lock held); program() filters."""
        if peer in self.peers:
            self.received.setdefault(peer, {})[prefix] = decide.Learned(prefix, next_hop, peer,
                                                                         tuple(_as_path(attrs)))

    def _accepted(self) -> dict[str, list[decide.Learned]]:
        """The routes that pass every filter, by prefix (called with the lock held)."""
        by_prefix: dict[str, list[decide.Learned]] = {}
        rejected = set()
        for peer, table in self.received.items():
            config, status = self.peers.get(peer), self.status.get(peer)
            if config is None or status is None:
                continue
            accepted = 0
            for prefix in sorted(table):
                route = table[prefix]
                why = decide.rejection(route, self.my_as, self.pools, config.allowed_prefixes, self.own_prefixes)
                if why is None and config.max_prefixes and accepted >= config.max_prefixes:
                    why = f"more than max-prefixes {config.max_prefixes}"
                if why is not None:
                    rejected.add((peer, prefix))
                    if (peer, prefix) not in self._rejected:
                        log.info("peer %s: rejected %s: %s", peer, prefix, why)
                    continue
                accepted += 1
                by_prefix.setdefault(prefix, []).append(route)
            status.accepted, status.rejected = accepted, len(table) - accepted
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
            by_prefix = self._accepted()
            pools = list(self.pools)
        routes = decide.kernel_routes(by_prefix, pools, self.interface.network, self.dataplane.nic)
        result = self.dataplane.sync_learned(routes)
        self.programmed = routes
        if result:
            log.info("learned routes: %s", result)

    def peer_status(self) -> list[dict]:
        with self._lock:
            return [{"address": s.address, "type": s.kind, "name": s.name, "state": s.state,
                     "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(s.since)), "info": s.info,
                     "accepted": s.accepted, "rejected": s.rejected}
                    for s in sorted(self.status.values(), key=lambda s: ipaddress.ip_address(s.address))]


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
