"""Pod traffic between nodes over WireGuard: the agent's controller.

Desired state, every pass: the cluster's switch (the "default" BGPConfiguration's
``wireguard``) and this node's opt-out label decide whether the node takes part. If it
does: its key pair (private key on disk, mode 0600, kept across restarts), its public
key and endpoint on its Node resource, the device, one peer per other participating
node, and our routing table. If not: none of it (and its key is unpublished).

Peers and their allowed IPs are decided from IPAM, never from what a Node resource
claims: a node's allowed IPs are the prefixes IPAM says it announces (its blocks and
the /32s it borrowed) plus its own address (traffic it sends from there, e.g. SNATed
node ports); a peer whose endpoint is not its registered address is left out.
"""

from __future__ import annotations

import ipaddress
import logging
import os
from collections.abc import Callable, Iterable

from ipam.origins import Origins
from routed import resources as r
from routed.dataplane import wireguard as wg
from routed.dataplane.constants import WIREGUARD_PORT
from routed.datastore import keys
from routed.datastore.kv import KV
from routed.errors import RoutedError
from routed.resources.node import WIREGUARD_OPT_OUT_LABEL, WIREGUARD_ROTATE_ANNOTATION

from . import node as nodeinfo

log = logging.getLogger("routed.agent")


def cluster_mode(configs: Iterable[r.BGPConfiguration]) -> tuple[str, int]:
    """(Enabled|Disabled|Required, listen port) from the cluster's "default" configuration."""
    for config in configs:
        if config.name == "default":
            return config.spec.wireguard or "Disabled", config.spec.wireguard_listen_port or WIREGUARD_PORT
    return "Disabled", WIREGUARD_PORT


def takes_part(node: r.Node, mode: str) -> bool:
    return mode != "Disabled" and (node.metadata.labels or {}).get(WIREGUARD_OPT_OUT_LABEL) != "Disabled"


def node_ip(node: r.Node) -> str | None:
    bgp = node.spec.bgp
    return str(ipaddress.ip_interface(bgp.ipv4_address).ip) if bgp else None


def endpoint_ip(endpoint: str) -> str:
    return endpoint.rpartition(":")[0].strip("[]")


def plan(me: str, mode: str, nodes: Iterable[r.Node], prefixes_of: Callable[[str], set[str]]
         ) -> tuple[list[wg.Peer], list, list[str]]:
    """(peers, our table's routes, why some nodes were left out) for node ``me`` (pure)."""
    peers, clear, skipped = [], [], []
    for node in sorted(nodes, key=lambda n: n.name):
        if node.name == me:
            continue
        info, address = node.spec.wireguard, node_ip(node)
        prefixes = prefixes_of(node.name)
        if not takes_part(node, mode) or info is None:
            clear += prefixes  # no WireGuard there (yet): in clear, or not at all if Required
            continue
        if address is None or endpoint_ip(info.endpoint) != address:
            skipped.append(f"{node.name}: endpoint {info.endpoint} is not its address {address}")
            clear += prefixes
            continue
        peers.append(wg.Peer(node.name, info.public_key, info.endpoint, tuple(sorted(prefixes)), f"{address}/32"))
    own = prefixes_of(me)
    routes = wg.table_routes(peers, throw=own, blackhole=clear if mode == "Required" else ())
    return peers, routes, skipped


class WireGuard:
    """One pass (sync) makes the node match the plan; cleanup undoes it all."""

    def __init__(self, kv: KV, store, netns: str | None, node: str, address: str, state_dir: str,
                 mtu: Callable[[], int]):
        self.kv, self.store, self.netns, self.node = kv, store, netns, node
        self.ip = str(ipaddress.ip_interface(address).ip)
        self.dir = os.path.join(state_dir, "wireguard")
        # A node sharing the host with others (netns: lab, tests) gets its own /run/wireguard.
        self.tools = wg.Tools(netns, os.path.join(self.dir, "run") if netns else None)
        self.mtu = mtu
        self.active = False  # the device is up and carries pod traffic (MTU follows)
        self.provider = ""
        self.filtering: bool | None = None  # our ingress filter is in place (None: unknown, at start)
        self._ipam: Origins | None = None  # IPAM's blocks, kept from _watch
        self._watch = None

    def sync(self) -> None:
        mode, port = cluster_mode(self.store.list(r.BGPConfiguration))
        nodes = list(self.store.list(r.Node))
        me = next((n for n in nodes if n.name == self.node), None)
        if me is None:
            return  # not registered yet
        if not takes_part(me, mode):
            if self.active or me.spec.wireguard is not None:
                log.info("wireguard: off on this node (cluster %s)", mode)
                nodeinfo.publish_wireguard(self.store, self.node, None)
                self.cleanup()
            return
        private = self._private_key(me)
        nodeinfo.publish_wireguard(self.store, self.node,
                                   {"publicKey": wg.public_key(private), "endpoint": f"{self.ip}:{port}"})
        origins = self.origins()
        peers, routes, skipped = plan(self.node, mode, nodes, origins.prefixes_of)
        for why in skipped:
            log.warning("wireguard: peer left out: %s", why)
        self.provider = wg.ensure_device(self.netns, self.tools, self.mtu())
        wg.configure(self.tools, os.path.join(self.dir, "wg.conf"), wg.render_config(private, port, peers))
        result = wg.sync_routes(self.netns, routes)
        wg.ensure_rules(self.netns)
        self._sync_ingress_filter(mode, origins.prefixes_of(self.node))
        if not self.active:
            log.info("wireguard: on (%s, port %d, %d peer(s))", self.provider, port, len(peers))
        self.active = True
        if result.added or result.removed:
            log.info("wireguard routes: +%s -%s", sorted(str(x) for x in result.added) or "-",
                     sorted(str(x) for x in result.removed) or "-")
        if result.failed:
            raise RoutedError("; ".join(why for _, why in result.failed))

    def origins(self) -> Origins:
        """IPAM's blocks, read whole once, then kept current from a watch over them that
        each pass drains: a pass costs the changes since the last one, not a listing of
        every block in the cluster (the watch re-lists by itself after a compaction)."""
        if self._watch is None:
            self._ipam, revision = Origins.read(self.kv)
            self._watch = self.kv.watch(keys.BLOCKS, revision + 1)
        while (event := self._watch.get(timeout=0)) is not None:
            self._ipam.apply(event)
        return self._ipam

    def close(self) -> None:
        """Stop following IPAM (the next origins() reads it whole again)."""
        if self._watch is not None:
            self._watch.cancel()
        self._watch = self._ipam = None

    def _sync_ingress_filter(self, mode: str, own: set[str]) -> None:
        """Required: the filter, replaced every pass (one nft transaction) with this node's
        prefixes and the pools. Otherwise none (removed once: at start a previous run's
        may be left)."""
        if mode == "Required":
            pools = [pool.spec.cidr for pool in self.store.list(r.IPPool)]
            wg.apply_ingress_filter(self.tools, wg.ingress_filter(own, pools))
            if not self.filtering:
                log.info("wireguard: clear pod traffic to this node's pods dropped (Required)")
            self.filtering = True
        elif self.filtering is not False:
            wg.remove_ingress_filter(self.tools)
            self.filtering = False

    def _private_key(self, me: r.Node) -> str:
        """The node's private key; a new one when a rotation was asked that this node has
        not done yet (the request it did last is kept beside the key). Peers take the new
        public key at their next pass; until then packets between them are dropped."""
        path = os.path.join(self.dir, "private.key")
        asked = (me.metadata.annotations or {}).get(WIREGUARD_ROTATE_ANNOTATION)
        done_file = os.path.join(self.dir, "rotated")
        try:
            with open(done_file) as f:
                done = f.read().strip()
        except FileNotFoundError:
            done = None
        if not asked or asked == done or not os.path.exists(path):
            key = wg.ensure_private_key(path)
        else:
            key = wg.new_private_key(path)
            log.info("wireguard: key rotated (request %s)", asked)
        if asked and asked != done:
            with open(done_file, "w") as f:
                f.write(asked + "\n")
        return key

    def cleanup(self) -> None:
        """Rules first (pod traffic goes back to the main table at once), then our table, the
        ingress filter, the device."""
        self.active = False
        self.close()
        wg.remove_routing(self.netns)
        wg.remove_ingress_filter(self.tools)
        self.filtering = False
        wg.remove_device(self.netns)

    def status(self) -> dict:
        """The /wireguard document: the device and its peers (handshakes, bytes)."""
        if not self.active:
            return {"enabled": False, "peers": []}
        try:
            shown = wg.show(self.tools)
        except RoutedError as err:
            return {"enabled": True, "error": str(err), "peers": []}
        names = {}
        try:
            names = {n.spec.wireguard.public_key: n.name for n in self.store.list(r.Node) if n.spec.wireguard}
        except RoutedError:
            pass  # etcd away: peers without their names
        for peer in shown["peers"]:
            peer["node"] = names.get(peer["publicKey"])
        return {"enabled": True, "device": wg.WIREGUARD_DEV, "provider": self.provider, **shown}
