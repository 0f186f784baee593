"""`routedctl uninstall`: take routed off every node before its DaemonSet goes (the
chart's pre-delete hook runs it; see routed.datastore.uninstall for the handshake)."""

from __future__ import annotations

import argparse
import time

from routed import resources as r
from routed.datastore import uninstall
from routed.errors import RoutedError
from routed.render import Output, Table



def run(ctx, args) -> Output:
    nodes = {n.metadata.name for n in ctx.store.list(r.Node)}
    uninstall.request(ctx.kv)
    deadline = time.monotonic() + args.timeout
    while True:
        try:
            left = uninstall.waiting_for(nodes, uninstall.done_nodes(ctx.kv))
        except RoutedError:
            left = sorted(nodes)  # etcd away for a moment: ask again
        if not left or time.monotonic() >= deadline:
            break
        time.sleep(args.poll)
    # Cleared even when some node did not answer: a marker left behind would uninstall
    # the next install's agents.
    uninstall.finish(ctx.kv)
    rows = [[n, "not reported" if n in left else "cleaned up"] for n in sorted(nodes)]
    messages = [f"{len(nodes) - len(left)} of {len(nodes)} node(s) cleaned up"]
    if left:
        messages.append(f"no answer from {', '.join(left)} within {args.timeout:g}s: "
                        "run `routed cleanup-node` on each of them")
    # Not an error exit: a failed pre-delete hook would keep Helm from uninstalling at all.
    return Output(data={"cleanedUp": sorted(set(nodes) - set(left)), "notReported": left},
                  table=Table(["NODE", "STATE"], rows), messages=messages)


def register(sub) -> None:
    p = sub.add_parser("uninstall", help="take routed off every node (conflist, plugin, routes, devices, NAT) "
                                         "and wait for the agents to report it done")
    p.add_argument("--timeout", type=float, default=120.0, metavar="SECONDS",
                   help="how long to wait for the agents (default 120)")
    p.add_argument("--poll", type=float, default=1.0, help=argparse.SUPPRESS)
    p.set_defaults(func=run, writes=True)

