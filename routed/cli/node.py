"""`routedctl node status | diags`: this node, as the local agent sees it."""

from __future__ import annotations

from routed.errors import RoutedError
from routed.render import Output, Table

from .agentapi import add_agent_argument, agent_json


def status(ctx, args) -> Output:
    peers = agent_json(args.agent, "/bgp/peers")
    node = agent_json(args.agent, "/node")
    rows = [[p["address"], p["type"], p["state"], p["since"], p["info"]] for p in peers]
    wide = [[p["name"], p["accepted"], p["rejected"], _reasons(p.get("rejectedBy") or {}),
             _limit(p.get("maxPrefixes", 0), p.get("dropped", 0))] for p in peers]
    table = Table(["PEER ADDRESS", "PEER TYPE", "STATE", "SINCE", "INFO"], rows,
                  ["NAME", "ACCEPTED", "REJECTED", "REJECTED BY", "MAX PREFIXES"], wide)
    up = sum(p["state"] == "up" for p in peers)
    messages = [f"routed agent is running; {up} of {len(peers)} BGP session(s) up", *_family_lines(node, peers),
                _mtu_line(node["mtu"])]
    skipped = [p["address"] for p in peers if p.get("error")]
    if skipped:
        messages.append(f"{len(skipped)} peer(s) left out of the BGP configuration: {', '.join(skipped)} "
                        "(see INFO)")
    try:
        wireguard = agent_json(args.agent, "/wireguard")
    except RoutedError:
        wireguard = None  # an agent from before WireGuard
    if wireguard is not None:
        messages += _wireguard_lines(wireguard)
    addresses = _addresses(node)
    return Output(data={"node": {"name": node.get("name"), "addresses": addresses}, "peers": peers,
                        "mtu": node["mtu"], "wireguard": wireguard}, table=table, messages=messages)


def _addresses(node: dict) -> dict:
    """{"ipv4": ..., "ipv6": ...}; an agent from before dual stack has only "address"."""
    return node.get("addresses") or {"ipv4": node.get("address"), "ipv6": None}


def _family_lines(node: dict, peers: list[dict]) -> list[str]:
    """One line a family, as calicoctl shows IPv4 and IPv6 BGP status apart."""
    out = []
    for family, address in (("IPv4", _addresses(node)["ipv4"]), ("IPv6", _addresses(node)["ipv6"])):
        of = [p for p in peers if p.get("family", "IPv6" if ":" in p["address"] else "IPv4") == family]
        up = sum(p["state"] == "up" for p in of)
        out.append(f"{family}: address {address or 'none'}; {up} of {len(of)} session(s) up")
    return out


def _wireguard_lines(wg: dict) -> list[str]:
    if not wg.get("enabled"):
        return ["WireGuard: off on this node"]
    if wg.get("error"):
        return [f"WireGuard: on, but its state is not readable: {wg['error']}"]
    lines = [f"WireGuard: on ({wg['device']}, {wg['provider']}, port {wg['listenPort']}), "
             f"{len(wg['peers'])} peer(s)"]
    for peer in wg["peers"]:
        seen = peer["latestHandshake"]
        lines.append(f"  peer {peer.get('node') or '?'} {peer['publicKey'][:8]}... at {peer['endpoint'] or '-'}: "
                     f"handshake {'never' if seen is None else f'{seen}s ago'}, "
                     f"rx {peer['rxBytes']} B, tx {peer['txBytes']} B")
    return lines


def _mtu_line(mtu: dict) -> str:
    tunnels = mtu["tunnels"]
    used = ", ".join(mtu["encapsulations"]) or "no encapsulation"
    return (f"MTU: uplink {mtu['uplink']}, pods {mtu['pod']} ({mtu['source']}; pools use {used}), "
            f"tunnels vxlan {tunnels['vxlan']} ipip {tunnels['ipip']} wireguard {tunnels['wireguard']}")


def rotate_key(ctx, args) -> Output:
    """Ask a node's agent for a new WireGuard key pair (through an annotation on its Node)."""
    from datetime import datetime, timezone

    from routed import resources as r
    from routed.resources.node import WIREGUARD_ROTATE_ANNOTATION

    asked = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    saved = ctx.store.patch(r.Node, args.name, {"metadata": {"annotations": {WIREGUARD_ROTATE_ANNOTATION: asked}}})
    return Output(data={"node": args.name, "requested": asked, "publicKey": (
        saved.spec.wireguard.public_key if saved.spec.wireguard else None)},
        messages=[f"node {args.name}: WireGuard key rotation requested ({asked}); its agent makes the new key "
                  "at its next pass and its peers follow at theirs"])


def _reasons(by: dict) -> str:
    return ",".join(f"{reason}={n}" for reason, n in sorted(by.items())) or "-"


def _limit(limit: int, dropped: int) -> str:
    if not limit:
        return "-"
    return f"{limit} (reached, {dropped} dropped)" if dropped else str(limit)


def register(sub) -> None:
    from . import diags

    node = sub.add_parser("node", help="this node's state")
    verbs = node.add_subparsers(dest="verb", required=True, metavar="VERB")
    p = verbs.add_parser("status", help="BGP peers and their state, like calicoctl node status")
    add_agent_argument(p)
    p.set_defaults(func=status)
    p = verbs.add_parser("rotate-key", help="give a node a new WireGuard key pair")
    p.add_argument("name", help="the node")
    p.set_defaults(func=rotate_key, writes=True)
    diags.register(verbs)
