"""`routed install-cni`: put the shim in the CNI bin dir and write the conflist.

Run by the DaemonSet's init container (and by the lab). Both files are written to a
temporary name and renamed, so kubelet never execs half a plugin or reads half a config.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from routed.errors import RoutedError

CONFLIST_NAME = "10-routed.conflist"
SHEBANG = "#!/usr/bin/python3 -IS\n"


def render_conflist(*, mtu: int = 1450, socket: str = "/var/run/routed/cni.sock",
                    spool_dir: str = "/var/lib/routed/cni-spool", ipv4_pools: list[str] | None = None,
                    ipv6: bool = False, cni_version: str = "1.0.0", chain: bool = True) -> dict:
    """The network configuration list kubelet (through the runtime) hands the plugins."""
    routed = {"type": "routed", "mtu": mtu, "agent_socket": socket, "spool_dir": spool_dir,
              "ipam": {"assign_ipv4": True, "assign_ipv6": ipv6, "ipv4_pools": list(ipv4_pools or [])}}
    plugins = [routed]
    if chain:
        plugins += [{"type": "portmap", "snat": True, "capabilities": {"portMappings": True}},
                    {"type": "bandwidth", "capabilities": {"bandwidth": True}}]
    return {"cniVersion": cni_version, "name": "k8s-pod-network", "plugins": plugins}


def _write_atomically(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.chmod(tmp, mode)
    os.rename(tmp, path)


def install(bin_dir: str, conf_dir: str, **conflist) -> tuple[Path, Path]:
    source = Path(__file__).with_name("shim.py").read_text()
    if not source.startswith("#!"):
        raise RoutedError("cni/shim.py has no interpreter line")
    body = SHEBANG + source.split("\n", 1)[1]
    bins, confs = Path(bin_dir), Path(conf_dir)
    try:
        bins.mkdir(parents=True, exist_ok=True)
        confs.mkdir(parents=True, exist_ok=True)
        plugin = bins / "routed"
        _write_atomically(plugin, body.encode(), 0o755)
        conf = confs / CONFLIST_NAME
        _write_atomically(conf, (json.dumps(render_conflist(**conflist), indent=2) + "\n").encode(), 0o644)
    except OSError as err:
        raise RoutedError(f"install-cni: {err.strerror}: {err.filename}") from None
    return plugin, conf


def run(args) -> int:
    plugin, conf = install(args.bin_dir, args.conf_dir, mtu=args.mtu, socket=args.cni_socket,
                           spool_dir=args.spool_dir, ipv4_pools=args.pools, cni_version=args.cni_version,
                           chain=not args.no_chain)
    print(f"installed {plugin} and {conf}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("install-cni", help="install the CNI plugin and its network configuration")
    p.add_argument("--bin-dir", default="/opt/cni/bin")
    p.add_argument("--conf-dir", default="/etc/cni/net.d")
    p.add_argument("--mtu", type=int, default=int(os.environ.get("ROUTED_MTU", "1450")))
    p.add_argument("--cni-socket", default="/var/run/routed/cni.sock")
    p.add_argument("--spool-dir", default="/var/lib/routed/cni-spool")
    p.add_argument("--pools", nargs="*", default=[], help="IPv4 pool names (default: all matching the node)")
    p.add_argument("--cni-version", default="1.0.0")
    p.add_argument("--no-chain", action="store_true", help="do not chain portmap and bandwidth")
    p.set_defaults(func=run)
