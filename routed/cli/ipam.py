"""routedctl ipam show | check | release | configure (calicoctl ipam, same ideas)."""

from __future__ import annotations

import json
from dataclasses import asdict

from routed import resources as r
from routed.errors import Conflict, NotFound, RoutedError
from routed.render import Output, Table

from .columns import resource_table

_CONFIGURE_RETRIES = 5

# `ipam check` exits with this when it finds a problem; 1 stays "the check itself failed".
PROBLEMS_FOUND = 3

# For results whose table output is just their messages: with no table at all the
# renderer prints the JSON document under them, and an empty Table renders as nothing.
MESSAGES_ONLY = Table([], [])


def _count(n: int, pct: float) -> str:
    return f"{n} ({pct:g}%)"


# -- show -------------------------------------------------------------------------------


def show(ctx, args) -> Output:
    from ipam import usage

    if args.ip:
        return _show_ip(usage.who_holds(ctx.kv, args.ip))
    snap = usage.snapshot(ctx.kv)
    if args.show_blocks:
        out = _show_blocks(usage.block_usage(ctx.kv, snap))
    elif args.show_borrowed:
        out = _show_borrowed(usage.borrowed(ctx.kv, snap))
    else:
        out = _show_pools(usage.pool_usage(ctx.kv, snap))
    out.messages += [f"{note} (routedctl ipam check)" for note in snap.unreadable.notes()]
    return out


def _show_pools(pools: list[dict]) -> Output:
    rows = [[p["name"], p["cidr"], p["total"], _count(p["inUse"], p["inUsePercent"]),
             _count(p["free"], p["freePercent"])] for p in pools]
    wide = [[p["blockSize"], p["blocks"], p["disabled"]] for p in pools]
    if not pools:
        return Output(data={"pools": []}, table=MESSAGES_ONLY, messages=["no IP pools"])
    return Output(data={"pools": pools},
                  table=Table(["NAME", "CIDR", "TOTAL", "IN-USE", "FREE"], rows, ["BLOCKSIZE", "BLOCKS", "DISABLED"],
                              wide))


def _show_blocks(blocks: list[dict]) -> Output:
    rows = [[b["cidr"], b["pool"] or "(no pool)", b["node"] or "(none)", _count(b["inUse"], b["inUsePercent"]),
             _count(b["free"], b["freePercent"])] for b in blocks]
    if not blocks:
        return Output(data={"blocks": []}, table=MESSAGES_ONLY, messages=["no blocks claimed yet"])
    return Output(data={"blocks": blocks}, table=Table(["BLOCK", "POOL", "NODE", "IN-USE", "FREE"], rows))


def _pod(row: dict) -> str:
    return f"{row['namespace']}/{row['pod']}" if row["namespace"] and row["pod"] else row["pod"]


def _show_borrowed(found: list[dict]) -> Output:
    rows = [[b["ip"], b["block"], b["blockNode"], b["node"], b["handle"]] for b in found]
    if not found:
        return Output(data={"borrowed": []}, table=MESSAGES_ONLY, messages=["no borrowed addresses"])
    return Output(data={"borrowed": found},
                  table=Table(["IP", "BLOCK", "BLOCK-NODE", "BORROWING-NODE", "HANDLE"], rows,
                              ["POD"], [[_pod(b)] for b in found]))


def _show_ip(held: dict) -> Output:
    state = "in use" if held["allocated"] else "free"
    row = [held["ip"], state, held["pool"], held["block"] or "(no block)", held["blockNode"],
           held["handle"], _pod(held), held["node"]]
    return Output(data=held,
                  table=Table(["IP", "STATE", "POOL", "BLOCK", "BLOCK-NODE", "HANDLE", "POD", "NODE"], [row],
                              ["TIME"], [[held["time"]]]))


# -- check ------------------------------------------------------------------------------


def check(ctx, args) -> Output:
    from ipam.check import FIXABLE, check as run_check

    report = run_check(ctx.kv)
    doc = report.to_dict()
    if args.report:
        _write_json(args.report, doc)
    c = report.counts
    messages = [f"IPAM at revision {report.revision}: {c['pools']} pool(s), {c['blocks']} block(s), "
                f"{c['affinities']} affinity(ies), {c['handles']} handle(s), {c['addressesInUse']} address(es) in use"]
    fixable = sum(p.fixable for p in report.problems)
    if report.clean:
        messages.append("no problems found")
    else:
        how = (f"routedctl ipam release --from-report {args.report}" if args.report
               else "rerun with --report FILE, then routedctl ipam release --from-report FILE")
        messages.append(f"{len(report.problems)} problem(s) found, {fixable} fixable ({how})")
    if args.report:
        messages.append(f"report written to {args.report}")
    rows = [[p.type, FIXABLE.get(p.type, "needs an operator"), p.detail] for p in report.problems]
    table = Table(["PROBLEM", "FIX", "DETAIL"], rows) if rows else MESSAGES_ONLY
    return Output(data=doc, table=table, messages=messages, exit_code=0 if report.clean else PROBLEMS_FOUND)


def _write_json(path: str, doc) -> None:
    try:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=2)
            f.write("\n")
    except OSError as err:
        raise RoutedError(f"cannot write {path}: {err.strerror}") from None


def _read_json(path: str):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except OSError as err:
        raise RoutedError(f"cannot read {path}: {err.strerror}") from None
    except ValueError as err:
        raise RoutedError(f"{path} is not JSON: {err}") from None


# -- release ----------------------------------------------------------------------------


def release(ctx, args) -> Output:
    if args.from_report:
        return _release_from_report(ctx, args.from_report)
    return _release_ips(ctx, args.ip)


def _release_ips(ctx, texts: list[str]) -> Output:
    from ipam import usage
    from ipam.allocator import IPAM

    # Every address is checked before anything is freed: a typo in the third one
    # must not leave the first two released and the command failed.
    addrs = list(dict.fromkeys(usage.parse_address(t) for t in texts))
    holders = [usage.who_holds(ctx.kv, a) for a in addrs]
    ipam = IPAM(ctx.kv)
    released, not_allocated, messages = [], [], []
    for held in holders:
        try:
            freed = ipam.release_ips([held["ip"]]) if held["allocated"] else []
        except NotFound:
            freed = []  # its block went away meanwhile: nothing left to free
        if freed:
            released.append(held)
            who = f", pod {_pod(held)}" if held["pod"] else ""
            messages.append(f"released {held['ip']} (handle {held['handle']}{who})")
        else:
            not_allocated.append(held["ip"])
            messages.append(f"{held['ip']} is not allocated; nothing to release")
    return Output(data={"released": released, "notAllocated": not_allocated}, table=MESSAGES_ONLY,
                  messages=messages)


def _release_from_report(ctx, path: str) -> Output:
    from ipam.check import Report, repair

    doc = _read_json(path)
    if not isinstance(doc, dict):
        raise RoutedError(f"{path} is not an IPAM check report (expected a JSON object)")
    report = Report.from_dict(doc, source=path)
    result = repair(ctx.kv, report)
    rows = [["fixed", p.type, p.detail] for p in result.fixed]
    rows += [[f"skipped: {why}", p.type, p.detail] for p, why in result.skipped]
    data = {"fixed": [asdict(p) for p in result.fixed],
            "skipped": [{"problem": asdict(p), "reason": why} for p, why in result.skipped]}
    summary = (f"fixed {len(result.fixed)} of {len(report.problems)} problem(s), "
               f"skipped {len(result.skipped)}" if report.problems else f"{path} lists no problems")
    return Output(data=data, table=Table(["RESULT", "PROBLEM", "DETAIL"], rows) if rows else MESSAGES_ONLY,
                  messages=[summary])


# -- configure --------------------------------------------------------------------------


def _bool(option: str, text: str | None) -> bool | None:
    if text is None:
        return None
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    raise RoutedError(f"{option} must be true or false, not {text!r}")


def _count_arg(option: str, text: str | None) -> int | None:
    if text is None:
        return None
    try:
        n = int(text)
    except ValueError:
        n = -1
    if n < 0:
        raise RoutedError(f"{option} must be a whole number >= 0 (0 = no limit), not {text!r}")
    return n


def configure(ctx, args) -> Output:
    changes = {"strictAffinity": _bool("--strictaffinity", args.strict_affinity),
               "maxBlocksPerHost": _count_arg("--max-blocks-per-host", args.max_blocks_per_host),
               "autoAllocateBlocks": _bool("--autoallocateblocks", args.auto_allocate_blocks)}
    changes = {k: v for k, v in changes.items() if v is not None}
    if not changes:
        raise RoutedError("ipam configure needs --strictaffinity, --max-blocks-per-host or --autoallocateblocks")
    for _ in range(_CONFIGURE_RETRIES):
        current = ctx.store.find(r.IPAMConfig, "default")
        doc = current.to_dict() if current else {"apiVersion": r.API_VERSION, "kind": "IPAMConfig",
                                                 "metadata": {"name": "default"}, "spec": {}}
        doc.setdefault("spec", {}).update(changes)
        try:
            # The resourceVersion read above rides along: a concurrent edit makes this a
            # Conflict and the loop reads again instead of overwriting it.
            saved, created = ctx.store.apply(r.parse(doc))
        except Conflict:
            continue
        return Output(data=saved.to_dict(), table=resource_table(r.IPAMConfig, [saved]),
                      messages=[f"ipamconfig/default {'created' if created else 'configured'}"])
    raise Conflict('IPAMConfig "default" keeps changing; try again')


# -- wiring -----------------------------------------------------------------------------


def register(sub) -> None:
    p = sub.add_parser("ipam", help="show, check and repair IP address management")
    isub = p.add_subparsers(dest="ipam_command", required=True, metavar="SUBCOMMAND")

    s = isub.add_parser("show", help="address use per pool, per block, borrowed, or of one address")
    view = s.add_mutually_exclusive_group()
    view.add_argument("--show-blocks", action="store_true", help="one row per block, with its node")
    view.add_argument("--show-borrowed", action="store_true",
                      help="addresses nodes took from other nodes' blocks")
    view.add_argument("--ip", metavar="ADDR", help="which pool, block and pod hold ADDR")
    s.set_defaults(func=show)

    c = isub.add_parser("check", help="find inconsistencies (leaked addresses, stray handles, ...)",
                        description=f"Exits {PROBLEMS_FOUND} when it finds a problem, 1 when it cannot check.")
    c.add_argument("--report", metavar="FILE", help="write the report as JSON, for release --from-report")
    c.set_defaults(func=check)

    rel = isub.add_parser("release", help="free addresses, or fix what a check report found")
    what = rel.add_mutually_exclusive_group(required=True)
    what.add_argument("--ip", metavar="ADDR", action="append", help="an address to free (repeatable)")
    what.add_argument("--from-report", metavar="FILE", help="a report written by ipam check --report")
    rel.set_defaults(func=release, writes=True)

    cfg = isub.add_parser("configure", help="set the cluster-wide IPAM configuration")
    # Strings, checked by the command: a bad value is then one line, not argparse's usage.
    cfg.add_argument("--strictaffinity", "--strict-affinity", dest="strict_affinity", metavar="true|false")
    cfg.add_argument("--max-blocks-per-host", "--maxblocksperhost", dest="max_blocks_per_host", metavar="N")
    cfg.add_argument("--autoallocateblocks", "--auto-allocate-blocks", dest="auto_allocate_blocks",
                     metavar="true|false")
    cfg.set_defaults(func=configure, writes=True)
