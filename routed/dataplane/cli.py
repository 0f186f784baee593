"""`routed cleanup-node`: take routed off this node by hand (what `helm uninstall` does
through the agent when the agent can still run)."""

from __future__ import annotations

import os

from routed.dataplane import cleanup
from routed.render import Output


def run(args) -> Output:
    report = cleanup.clean_node(args.netns or None, args.conf_dir, args.bin_dir)
    return Output(messages=cleanup.describe(report), exit_code=1 if report.failures else 0)


def register(sub) -> None:
    p = sub.add_parser("cleanup-node", help="take routed off this node: conflist, plugin, routes, devices, NAT")
    p.add_argument("--conf-dir", default="/etc/cni/net.d")
    p.add_argument("--bin-dir", default="/opt/cni/bin")
    p.add_argument("--netns", default=os.environ.get("ROUTED_NETNS"), help="network namespace playing the node")
    p.set_defaults(func=run)
