"""The WireGuard device, its keys, peers, and the routing table that sends pod traffic into it.

The device comes from the kernel module (rtnetlink link kind "wireguard") when there is
one, else from wireguard-go (a TUN device and a daemon; this machine's kernel has TUN but
no module). Keys and peers are set with ``wg``, not over generic netlink: the kernel
module speaks genl, wireguard-go a UAPI socket under /run/wireguard, and ``wg`` speaks
both, so one code path serves either device. ``wg syncconf`` makes the peer list equal
to a config file without touching unchanged peers (their sessions survive a resync).

wireguard-go and wg find each other through /run/wireguard/<dev>.sock. Several nodes
sharing one host (the lab, the tests) each get their own directory bind-mounted there,
in a mount namespace of their own (``run_dir``); a real node uses /run/wireguard itself.

Routing: the peers' prefixes go, as proto ROUTE_PROTO routes through the device, into
table WIREGUARD_TABLE, looked up by one rule of ours before the main table. Prefixes
this node holds inside a peer's block get a ``throw`` route there (the lookup goes on
to the main table and the pod's own route). Nothing else of the host's is touched.

Ingress, when the cluster requires encryption: ``table inet routed-wireguard`` (its own
table: a drop there is final whatever routed-policy's table accepts, and the two are
replaced independently) drops forwarded packets from a pod address (any pool) to this
node's pods unless they came out of wg.routed or from a pod on this node. So pods of a
node without WireGuard, and pod addresses spoofed outside the tunnel, get nothing in
clear; WireGuard itself has checked that what leaves wg.routed came from the peer
that holds the source address. Packets from other addresses (nodes' own, BGP, clients
outside the cluster) are not pod traffic and pass.
"""

from __future__ import annotations

import errno as errnos
import ipaddress
import os
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass

from routed.dataplane import bulk, rtnl
from routed.dataplane.constants import (ROUTE_PROTO, VETH_PREFIX, WIREGUARD_DEV, WIREGUARD_RULE_PRIORITY,
                                       WIREGUARD_TABLE)
from routed.dataplane.errors import DataplaneError
from routed.dataplane.netns import NetnsTarget, netns_path

FAMILIES = (socket.AF_INET, socket.AF_INET6)
RULES = [rtnl.Rule(WIREGUARD_RULE_PRIORITY, WIREGUARD_TABLE, ROUTE_PROTO, family) for family in FAMILIES]
FILTER_TABLE = "routed-wireguard"  # nftables, family inet: Required's ingress filter


@dataclass(frozen=True)
class Peer:
    node: str
    public_key: str
    endpoint: str
    pods: tuple[str, ...]  # the pod prefixes it holds: routed into the device
    address: str | None = None  # its own address: accepted from it (SNATed traffic), never routed to it

    @property
    def allowed_ips(self) -> tuple[str, ...]:
        return self.pods + ((self.address,) if self.address else ())


# --------------------------------------------------------------------------- pure


def render_config(private_key: str, port: int, peers: Iterable[Peer]) -> str:
    """The ``wg syncconf`` input for the device."""
    lines = ["[Interface]", f"PrivateKey = {private_key}", f"ListenPort = {port}"]
    for peer in sorted(peers, key=lambda p: p.public_key):
        lines += ["", f"# {peer.node}", "[Peer]", f"PublicKey = {peer.public_key}", f"Endpoint = {peer.endpoint}"]
        if peer.allowed_ips:
            lines.append(f"AllowedIPs = {', '.join(peer.allowed_ips)}")
    return "\n".join(lines) + "\n"


def parse_dump(text: str, now: float | None = None) -> dict:
    """``wg show DEV dump``: the interface's public key and port, and each peer's
    endpoint, allowed IPs, last handshake (seconds ago, None: never) and bytes."""
    rows = [line.split("\t") for line in text.splitlines() if line.strip()]
    if not rows or len(rows[0]) < 3:
        raise DataplaneError(f"wg show dump: unexpected output {text[:80]!r}")
    now = time.time() if now is None else now
    peers = []
    for row in rows[1:]:
        if len(row) < 8:
            continue
        handshake = int(row[4])
        peers.append({"publicKey": row[0], "endpoint": None if row[2] == "(none)" else row[2],
                      "allowedIPs": [] if row[3] == "(none)" else row[3].split(","),
                      "latestHandshake": int(now - handshake) if handshake else None,
                      "rxBytes": int(row[5]), "txBytes": int(row[6])})
    return {"publicKey": rows[0][1], "listenPort": int(rows[0][2]), "peers": peers}


def table_routes(peers: Iterable[Peer], throw: Iterable[str], blackhole: Iterable[str] = ()) -> list[rtnl.Route]:
    """The routes of our table: each peer's allowed IPs through the device; ``throw``
    (prefixes held here) back to the main table; ``blackhole`` (pods of nodes without
    WireGuard when the cluster requires it) dropped rather than sent in clear."""
    routes = {}
    for prefix in blackhole:
        routes[prefix] = rtnl.Route(prefix, kind="blackhole", proto=ROUTE_PROTO, table=WIREGUARD_TABLE)
    for peer in peers:
        for prefix in peer.pods:  # never the peer's address: its WireGuard packets go there
            routes[prefix] = rtnl.Route(prefix, dev=WIREGUARD_DEV, proto=ROUTE_PROTO, table=WIREGUARD_TABLE)
    for prefix in throw:
        routes[prefix] = rtnl.Route(prefix, kind="throw", proto=ROUTE_PROTO, table=WIREGUARD_TABLE)
    return list(routes.values())


def ingress_filter(local: Iterable[str], pools: Iterable[str]) -> str:
    """The ``nft -f`` script that replaces our ingress table (Required): clear packets
    from pod addresses (``pools``) to this node's pods (``local``) are dropped unless
    they come from wg.routed or a local pod's veth."""
    by_version: dict[int, dict[str, list[str]]] = {4: {"local": [], "pools": []}, 6: {"local": [], "pools": []}}
    for kind, prefixes in (("local", local), ("pools", pools)):
        for prefix in sorted(set(prefixes)):
            by_version[ipaddress.ip_network(prefix, strict=False).version][kind].append(prefix)
    sets, drops = [], []
    for version, match in ((4, "ip"), (6, "ip6")):
        kinds = by_version[version]
        if not (kinds["local"] and kinds["pools"]):
            continue  # nothing of ours in this family to protect
        for kind in ("local", "pools"):
            sets.append(f"  set {kind}{version} {{ type ipv{version}_addr; flags interval; auto-merge; "
                        f"elements = {{ {', '.join(kinds[kind])} }} }}")
        drops.append(f"    {match} daddr @local{version} {match} saddr @pools{version} counter drop")
    return "\n".join([
        f"table inet {FILTER_TABLE}", f"delete table inet {FILTER_TABLE}", f"table inet {FILTER_TABLE} {{", *sets,
        "  chain ingress {",
        "    type filter hook forward priority filter - 10; policy accept;",
        f'    iifname "{WIREGUARD_DEV}" accept',
        f'    iifname "{VETH_PREFIX}*" accept',
        *drops,
        "  }", "}"]) + "\n"


# --------------------------------------------------------------------------- wg, wireguard-go


class Tools:
    """wg and wireguard-go run in the node's netns, with its own /run/wireguard."""

    def __init__(self, netns: str | None, run_dir: str | None):
        self.netns, self.run_dir = netns, run_dir

    def command(self, *argv: str) -> list[str]:
        cmd = list(argv)
        if self.netns:
            cmd = ["nsenter", f"--net={netns_path(self.netns)}", "--"] + cmd
        if self.run_dir:
            os.makedirs(self.run_dir, mode=0o700, exist_ok=True)
            cmd = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                   'mkdir -p /run/wireguard && mount --bind "$0" /run/wireguard && exec "$@"',
                   self.run_dir] + cmd
        return cmd

    def run(self, *argv: str, stdin: str | None = None, what: str = "") -> str:
        try:
            done = subprocess.run(self.command(*argv), input=stdin, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired) as err:
            raise DataplaneError(f"{what or argv[0]}: {err}") from None
        if done.returncode != 0:
            raise DataplaneError(f"{what or ' '.join(argv[:3])}: {done.stderr.strip() or done.returncode}")
        return done.stdout


def public_key(private_key: str) -> str:
    return Tools(None, None).run("wg", "pubkey", stdin=private_key + "\n", what="wg pubkey").strip()


def ensure_private_key(path: str) -> str:
    """This node's private key, made once and kept in ``path`` (mode 0600, never
    published): a restart keeps the node's identity for its peers."""
    try:
        with open(path) as f:
            key = f.read().strip()
        if key:
            return key
    except FileNotFoundError:
        pass
    return new_private_key(path)


def new_private_key(path: str) -> str:
    """A new private key in ``path``, replacing the old one at once (key rotation)."""
    key = Tools(None, None).run("wg", "genkey", what="wg genkey").strip()
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".key-")  # mkstemp: mode 0600
    try:
        with os.fdopen(fd, "w") as f:
            f.write(key + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return key


# --------------------------------------------------------------------------- device


def ensure_device(netns: NetnsTarget, tools: Tools, mtu: int) -> str:
    """The device, up, with ``mtu``; returns how it is provided: "kernel" or "wireguard-go"."""
    with rtnl.Rtnl(netns) as sock:
        link = sock.link(name=WIREGUARD_DEV)
        if link is None:
            answer = sock.request(rtnl.new_wireguard(WIREGUARD_DEV))
            if answer.errno == errnos.EOPNOTSUPP:
                # No module: wireguard-go makes the TUN device and daemonises; it exits
                # when the device is deleted.
                tools.run("wireguard-go", WIREGUARD_DEV, what="wireguard-go")
            else:
                answer.check(f"create {WIREGUARD_DEV}", ignore=(errnos.EEXIST,))
            link = sock.link(name=WIREGUARD_DEV)
            if link is None:
                raise DataplaneError(f"{WIREGUARD_DEV} did not appear")
        change = {k: v for k, v in (("mtu", mtu if link.mtu != mtu else None),
                                    ("up", True if not link.up else None)) if v is not None}
        if change:
            sock.request(rtnl.set_link(link.index, **change)).check(f"set {WIREGUARD_DEV} {change}")
        return "kernel" if link.kind == "wireguard" else "wireguard-go"


def configure(tools: Tools, conf_path: str, config: str) -> None:
    """``wg syncconf`` from ``config`` (written to ``conf_path``, mode 0600: it holds the key)."""
    fd = os.open(conf_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(config)
    tools.run("wg", "syncconf", WIREGUARD_DEV, conf_path, what="wg syncconf")


def show(tools: Tools) -> dict:
    return parse_dump(tools.run("wg", "show", WIREGUARD_DEV, "dump", what="wg show"))


def remove_device(netns: NetnsTarget) -> bool:
    with rtnl.Rtnl(netns) as sock:
        return sock.request(rtnl.del_link(name=WIREGUARD_DEV)).check(
            f"delete {WIREGUARD_DEV}", ignore=(errnos.ENODEV,)).ok


# --------------------------------------------------------------------------- routing


def sync_routes(netns: NetnsTarget, desired: list[rtnl.Route]) -> bulk.SyncResult:
    """Make our table hold exactly ``desired`` (our proto only; nothing outside the table)."""
    with rtnl.Rtnl(netns) as sock:
        kernel = sock.routes(table=WIREGUARD_TABLE)
        replace, delete, refused = bulk.plan_sync(desired, kernel, ROUTE_PROTO)
        failed = bulk.apply_with(sock, replace, delete)
    bad = {id(route) for route, _ in failed}
    return bulk.SyncResult(added=[r for r in replace if id(r) not in bad],
                           removed=[r for r in delete if id(r) not in bad], failed=refused + failed)


def ensure_rules(netns: NetnsTarget) -> None:
    with rtnl.Rtnl(netns) as sock:
        for rule in RULES:
            if rule not in sock.rules(rule.family):
                sock.request(rtnl.add_rule(rule)).check(f"add rule {rule}", ignore=(errnos.EEXIST,))


def remove_routing(netns: NetnsTarget) -> None:
    """Our rules and every route of our table (only ours: proto ROUTE_PROTO)."""
    with rtnl.Rtnl(netns) as sock:
        for rule in RULES:
            while rule in sock.rules(rule.family):
                sock.request(rtnl.del_rule(rule)).check(f"delete rule {rule}", ignore=(errnos.ENOENT,))
    sync_routes(netns, [])


# --------------------------------------------------------------------------- ingress filter (Required)


def apply_ingress_filter(tools: Tools, script: str) -> None:
    tools.run("nft", "-f", "-", stdin=script, what=f"nft table {FILTER_TABLE}")


def remove_ingress_filter(tools: Tools) -> None:
    """Our table gone (create-then-delete: no error when it was not there)."""
    tools.run("nft", "-f", "-", stdin=f"table inet {FILTER_TABLE}\ndelete table inet {FILTER_TABLE}\n",
              what=f"nft delete table {FILTER_TABLE}")
