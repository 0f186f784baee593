"""`routed install-cni`: put the plugin in the CNI bin dir and write the conflist (cni.install)."""

from __future__ import annotations

import os

from routed.render import Output

from .install import PLUGIN_DIR_ENV, install


def run(args) -> Output:
    plugin, conf = install(args.bin_dir, args.conf_dir, plugin_dir=args.plugin_dir, mtu=args.mtu,
                           socket=args.cni_socket, spool_dir=args.spool_dir, ipv4_pools=args.pools,
                           cni_version=args.cni_version, chain=not args.no_chain, ipv6=args.ipv6)
    return Output(messages=[f"installed {plugin} and {conf}"])


def register(sub) -> None:
    p = sub.add_parser("install-cni", help="install the CNI plugin and its network configuration")
    p.add_argument("--bin-dir", default="/opt/cni/bin")
    p.add_argument("--conf-dir", default="/etc/cni/net.d")
    p.add_argument("--plugin-dir", help=f"where the built plugins are (default: ${PLUGIN_DIR_ENV}, "
                                        "else the source tree's build/cni)")
    p.add_argument("--mtu", type=int, default=int(os.environ.get("ROUTED_MTU", "0") or 0),
                   help="pod MTU in the conflist; 0 (default): the agent derives it from the uplink")
    p.add_argument("--cni-socket", default="/var/run/routed/cni.sock")
    p.add_argument("--spool-dir", default="/var/lib/routed/cni-spool")
    p.add_argument("--pools", nargs="*", default=[], help="IPv4 pool names (default: all matching the node)")
    p.add_argument("--ipv6", action="store_true", help="dual stack: pods get an IPv6 address too")
    p.add_argument("--cni-version", default="1.0.0")
    p.add_argument("--no-chain", action="store_true", help="do not chain portmap and bandwidth")
    p.set_defaults(func=run)
