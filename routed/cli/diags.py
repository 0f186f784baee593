"""`routedctl node diags`: one tar.gz with what a bug report about this node needs.

Every collector runs, whatever the others did: one that fails leaves `<its file>.error` in the
archive saying what failed, and summary.json lists them all. Everything is read-only: listings
of routes, links, rules, never a change.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import tarfile
import time
from dataclasses import dataclass
from typing import Callable

from routed.errors import RoutedError
from routed.render import Output, Table

from . import version as versions
from .agentapi import add_agent_argument, agent_get

# Our route protocols (see DESIGN: 201 pods and blackholes, 202 routes learnt over BGP).
PROTO_PODS, PROTO_BGP = 201, 202
LOG_TAIL_BYTES = 16 * 1024 * 1024  # the end of a log is where the bug is; keep archives mailable
COMMAND_TIMEOUT = 30


@dataclass
class Collector:
    path: str  # where its output lands in the archive
    collect: Callable[[], bytes]


@dataclass
class Outcome:
    path: str
    ok: bool
    detail: str  # bytes written, or what failed


def run_collectors(collectors: list[Collector]) -> tuple[dict[str, bytes], list[Outcome]]:
    """{archive path: content} and how each collector fared; a failure is a file too."""
    files: dict[str, bytes] = {}
    outcomes: list[Outcome] = []
    for c in collectors:
        try:
            content = c.collect()
        except Exception as err:  # noqa: BLE001 -- any failure is recorded, none stops the rest
            why = str(err) if isinstance(err, RoutedError) else f"{type(err).__name__}: {err}"
            files[c.path + ".error"] = (why + "\n").encode()
            outcomes.append(Outcome(c.path, False, why))
        else:
            files[c.path] = content
            outcomes.append(Outcome(c.path, True, f"{len(content)} bytes"))
    return files, outcomes


def write_archive(path: str, top: str, files: dict[str, bytes]) -> None:
    mtime = time.time()
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with tarfile.open(tmp, "w:gz") as tar:
            for name, content in files.items():
                info = tarfile.TarInfo(f"{top}/{name}")
                info.size, info.mtime, info.mode = len(content), mtime, 0o600
                tar.addfile(info, io.BytesIO(content))
        os.replace(tmp, path)  # a half-written archive never has the final name
    except OSError as err:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise RoutedError(f"cannot write {path}: {err.strerror or err}") from None


# --- collectors -------------------------------------------------------------------------


def command(argv: list[str], netns: str | None) -> Callable[[], bytes]:
    def run() -> bytes:
        full = (["ip", "netns", "exec", netns] if netns else []) + argv
        try:
            proc = subprocess.run(full, capture_output=True, timeout=COMMAND_TIMEOUT)
        except FileNotFoundError:
            raise RoutedError(f"{full[0]}: not installed on this host") from None
        except subprocess.TimeoutExpired:
            raise RoutedError(f"{' '.join(full)}: no answer in {COMMAND_TIMEOUT}s") from None
        if proc.returncode != 0:
            err = proc.stderr.decode(errors="replace").strip().splitlines()
            raise RoutedError(f"{' '.join(full)} exited {proc.returncode}: {err[-1] if err else 'no message'}")
        return proc.stdout

    return run


def log_tail(path: str) -> Callable[[], bytes]:
    def read() -> bytes:
        try:
            with open(path, "rb") as f:
                size = f.seek(0, os.SEEK_END)
                f.seek(max(0, size - LOG_TAIL_BYTES))
                return f.read()
        except OSError as err:
            raise RoutedError(f"cannot read {path}: {err.strerror}") from None

    return read


def log_collectors(args) -> list[Collector]:
    def no_agent_log() -> bytes:
        raise RoutedError("the agent logs to stderr and no file was named: pass --agent-log FILE "
                          "(e.g. `kubectl logs` of the agent pod saved to a file)")

    found = [Collector("logs/agent.log", log_tail(args.agent_log) if args.agent_log else no_agent_log),
             Collector("logs/exabgp.log", log_tail(os.path.join(args.bgp_dir, "exabgp.log")))]
    found += [Collector(f"logs/extra-{i}-{os.path.basename(p)}", log_tail(p)) for i, p in enumerate(args.log, 1)]
    return found


def as_json(fetch: Callable[[], object]) -> Callable[[], bytes]:
    return lambda: (json.dumps(fetch(), indent=2) + "\n").encode()


def ipam_of_node(ctx, node: str) -> dict:
    from ipam import usage

    snap = usage.snapshot(ctx.kv)
    blocks = [b for b in usage.block_usage(ctx.kv, snap) if b["node"] == node]
    borrowed = [b for b in usage.borrowed(ctx.kv, snap) if node in (b["node"], b["blockNode"])]
    return {"node": node, "revision": snap.revision, "blocks": blocks, "borrowed": borrowed}


def collectors(ctx, args) -> list[Collector]:
    ns = args.netns
    listings = [
        ("routes/ipv4-pods-proto201.txt", ["ip", "-4", "route", "show", "table", "all", "proto", str(PROTO_PODS)]),
        ("routes/ipv6-pods-proto201.txt", ["ip", "-6", "route", "show", "table", "all", "proto", str(PROTO_PODS)]),
        ("routes/ipv4-bgp-proto202.txt", ["ip", "-4", "route", "show", "table", "all", "proto", str(PROTO_BGP)]),
        ("routes/ipv6-bgp-proto202.txt", ["ip", "-6", "route", "show", "table", "all", "proto", str(PROTO_BGP)]),
        ("routes/ipv4-blackholes.txt", ["ip", "-4", "route", "show", "table", "all", "type", "blackhole"]),
        ("routes/ipv6-blackholes.txt", ["ip", "-6", "route", "show", "table", "all", "type", "blackhole"]),
        ("routes/ipv4-all.txt", ["ip", "-4", "route", "show", "table", "all"]),
        ("routes/ipv6-all.txt", ["ip", "-6", "route", "show", "table", "all"]),
        ("routes/rules.txt", ["ip", "rule", "show"]),
        ("network/links.txt", ["ip", "-d", "link", "show"]),
        ("network/addresses.txt", ["ip", "addr", "show"]),
        ("network/neighbours.txt", ["ip", "neigh", "show"]),
        ("firewall/nft-ruleset.txt", ["nft", "list", "ruleset"]),
        ("firewall/iptables-save.txt", ["iptables-save"]),
        ("firewall/ip6tables-save.txt", ["ip6tables-save"]),
    ]
    found = [Collector(path, command(argv, ns)) for path, argv in listings]
    found += log_collectors(args)
    found += [
        Collector("agent/bgp-peers.json", lambda: agent_get(args.agent, "/bgp/peers")),
        Collector("agent/metrics.txt", lambda: agent_get(args.agent, "/metrics")),
        Collector("agent/readyz.txt", lambda: agent_get(args.agent, "/readyz")),
        Collector("versions.json", as_json(lambda: versions.versions(ctx, args.agent))),
        Collector("ipam/node.json", as_json(lambda: ipam_of_node(ctx, args.node_name))),
    ]
    return found


def diags(ctx, args) -> Output:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    top = f"routed-diags-{args.node_name}-{stamp}"
    path = args.file or f"{top}.tar.gz"
    files, outcomes = run_collectors(collectors(ctx, args))
    summary = {"node": args.node_name, "created": stamp, "netns": args.netns,
               "collected": [o.path for o in outcomes if o.ok],
               "failed": {o.path: o.detail for o in outcomes if not o.ok}}
    files["summary.json"] = (json.dumps(summary, indent=2) + "\n").encode()
    write_archive(path, top, files)
    failed = len(summary["failed"])
    rows = [[o.path, "ok" if o.ok else "FAILED", o.detail] for o in outcomes]
    return Output(data={"archive": path, **summary}, table=Table(["ITEM", "RESULT", "DETAIL"], rows),
                  messages=[f"wrote {path}: {len(outcomes) - failed} item(s) collected, {failed} failed "
                            "(each failure is a .error file in the archive)"])


def register(verbs) -> None:
    env = os.environ.get
    p = verbs.add_parser("diags", help="write one archive with what a bug report about this node needs")
    add_agent_argument(p)
    p.add_argument("--file", metavar="PATH", help="the archive to write (default: routed-diags-NODE-TIME.tar.gz)")
    p.add_argument("--node-name", default=env("ROUTED_NODE_NAME") or os.uname().nodename,
                   help="whose IPAM to include (default: $ROUTED_NODE_NAME, else the host name)")
    p.add_argument("--netns", default=env("ROUTED_NETNS"),
                   help="list routes, links and rules inside this network namespace (a lab node)")
    p.add_argument("--agent-log", default=env("ROUTED_AGENT_LOG"), metavar="FILE",
                   help="the agent's log (default: $ROUTED_AGENT_LOG; the agent logs to stderr, so in a "
                        "pod save `kubectl logs` to a file)")
    p.add_argument("--bgp-dir", default=env("ROUTED_BGP_DIR", "/var/run/routed/bgp"),
                   help="the agent's --bgp-dir, where ExaBGP writes exabgp.log")
    p.add_argument("--log", action="append", default=[], metavar="FILE", help="another log to include (repeatable)")
    p.set_defaults(func=diags)
