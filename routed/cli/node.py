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
    wide = [[p["name"], p["accepted"], p["rejected"]] for p in peers]
    table = Table(["PEER ADDRESS", "PEER TYPE", "STATE", "SINCE", "INFO"], rows,
                  ["NAME", "ACCEPTED", "REJECTED"], wide)
    up = sum(p["state"] == "up" for p in peers)
    return Output(data={"peers": peers}, table=table,
                  messages=[f"routed agent is running; {up} of {len(peers)} BGP session(s) up"])


def register(sub) -> None:
    node = sub.add_parser("node", help="this node's state")
    verbs = node.add_subparsers(dest="verb", required=True, metavar="VERB")
    p = verbs.add_parser("status", help="BGP peers and their state, like calicoctl node status")
    port = os.environ.get("ROUTED_HEALTH_PORT", "9099")
    p.add_argument("--agent", default=os.environ.get("ROUTED_AGENT_URL", f"http://127.0.0.1:{port}"))
    p.set_defaults(func=status)
