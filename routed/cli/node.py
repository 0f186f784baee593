"""`routedctl node status`: this node's BGP peers, as the local agent sees them."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request

from routed.errors import RoutedError

from .render import Output, Table


def status(ctx, args) -> Output:
    url = args.agent.rstrip("/") + "/bgp/peers"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            peers = json.loads(response.read())
    except (urllib.error.URLError, OSError, ValueError) as err:
        reason = getattr(err, "reason", err)
        raise RoutedError(f"cannot ask the routed agent at {args.agent}: {reason} "
                          "(run this on a node, or pass --agent URL)") from None
    rows = [[p["address"], p["type"], p["state"], p["since"], p["info"]] for p in peers]
    wide = [[p["name"], p["accepted"], p["rejected"], _reasons(p.get("rejectedBy") or {}),
             _limit(p.get("maxPrefixes", 0), p.get("dropped", 0))] for p in peers]
    table = Table(["PEER ADDRESS", "PEER TYPE", "STATE", "SINCE", "INFO"], rows,
                  ["NAME", "ACCEPTED", "REJECTED", "REJECTED BY", "MAX PREFIXES"], wide)
    up = sum(p["state"] == "up" for p in peers)
    messages = [f"routed agent is running; {up} of {len(peers)} BGP session(s) up"]
    skipped = [p["address"] for p in peers if p.get("error")]
    if skipped:
        messages.append(f"{len(skipped)} peer(s) left out of the BGP configuration: {', '.join(skipped)} "
                        "(see INFO)")
    return Output(data={"peers": peers}, table=table, messages=messages)


def _reasons(by: dict) -> str:
    return ",".join(f"{reason}={n}" for reason, n in sorted(by.items())) or "-"


def _limit(limit: int, dropped: int) -> str:
    if not limit:
        return "-"
    return f"{limit} (reached, {dropped} dropped)" if dropped else str(limit)


def register(sub) -> None:
    node = sub.add_parser("node", help="this node's state")
    verbs = node.add_subparsers(dest="verb", required=True, metavar="VERB")
    p = verbs.add_parser("status", help="BGP peers and their state, like calicoctl node status")
    port = os.environ.get("ROUTED_HEALTH_PORT", "9099")
    p.add_argument("--agent", default=os.environ.get("ROUTED_AGENT_URL", f"http://127.0.0.1:{port}"))
    p.set_defaults(func=status)
