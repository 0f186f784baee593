"""Programming many routes: routed's bulk netlink against iproute2's batch mode.

    apply, 10,000 new      bulk.apply of 10,000 "<block> via GW dev veth0 proto 202"
                           into an empty table        vs  ip -n NS -batch FILE of the
                                                          same "route replace" lines
    sync from empty        bulk.sync (dump + plan + apply) of the same 10,000
                                                      vs  the same ip -batch
    apply, 10,000 moved    every route's gateway changed over existing routes
                                                      vs  ip -batch of the changed lines
    pyroute2 per call      IPRoute.route("replace") once per route, 2,000 routes, for
                           scale (vs the same ip -batch rate)

Target: ours at least 0.5x the ip -batch rate. Every run starts from the state it
names (the table is flushed with "ip route flush proto 202" in between); each figure is
the median of REPEATS runs, ours and the reference alternating, so load on the machine
hits both alike. Everything happens in a netns of its own (rt-…), removed at the end.
Prints only; never asserts.
"""

from __future__ import annotations

import ipaddress
import os
import statistics
import subprocess
import tempfile
import time

N_ROUTES = 10_000
N_PYROUTE2 = 2_000
REPEATS = 5
GW, GW2 = "192.0.2.9", "192.0.2.10"
PROTO = 202


def _routes(gateway: str) -> list:
    from routed.dataplane.rtnl import Route

    nets = ipaddress.ip_network("10.64.0.0/10").subnets(new_prefix=26)
    return [Route(str(next(nets)), gateway=gateway, dev="veth0") for _ in range(N_ROUTES)]


def _batch_file(routes: list, directory: str, name: str) -> str:
    path = os.path.join(directory, name)
    with open(path, "w") as f:
        for r in routes:
            f.write(f"route replace {r.dst} via {r.gateway} dev {r.dev} proto {PROTO}\n")
    return path


def _count(ns: str) -> int:
    out = subprocess.run(["ip", "-n", ns, "route", "show", "proto", str(PROTO)],
                         check=True, capture_output=True, text=True).stdout
    return len(out.splitlines())


def _flush(ns: str) -> None:
    subprocess.run(["ip", "-n", ns, "route", "flush", "proto", str(PROTO)], check=True)


def _timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def main() -> None:
    from bench.common import note, report
    from routed.dataplane import bulk
    from tests.support.netns import Netns

    if os.geteuid() != 0:
        note("skipped: needs root (network namespaces)")
        return
    ns = Netns("benchroutes")
    try:
        ns.run("ip", "link", "add", "veth0", "type", "veth", "peer", "name", "veth1")
        ns.run("ip", "addr", "add", "192.0.2.1/24", "dev", "veth0")
        ns.run("ip", "link", "set", "veth0", "up")
        ns.run("ip", "link", "set", "veth1", "up")
        routes, moved = _routes(GW), _routes(GW2)
        with tempfile.TemporaryDirectory(prefix="routed-routes-bench-") as tmp:
            batch = _batch_file(routes, tmp, "replace")
            batch_moved = _batch_file(moved, tmp, "moved")

            def ip_batch(path: str) -> None:
                subprocess.run(["ip", "-n", ns.name, "-batch", path], check=True)

            problems: list[str] = []

            def check(what: str, failed=()) -> None:
                have = _count(ns.name)
                if failed or have != N_ROUTES:
                    problems.append(f"{what}: {len(failed)} failed, {have} routes in the table")

            times: dict[str, list[float]] = {k: [] for k in ("ref", "apply", "sync", "ref_moved", "apply_moved")}
            for _ in range(REPEATS):
                _flush(ns.name)
                times["ref"].append(_timed(lambda: ip_batch(batch)))
                check("ip -batch")
                times["ref_moved"].append(_timed(lambda: ip_batch(batch_moved)))
                _flush(ns.name)
                failed: list = []
                times["apply"].append(_timed(lambda: failed.extend(bulk.apply(ns.name, replace=routes))))
                check("bulk.apply", failed)
                times["apply_moved"].append(_timed(lambda: failed.extend(bulk.apply(ns.name, replace=moved))))
                check("bulk.apply (moved)", failed)
                _flush(ns.name)
                result: list = []
                times["sync"].append(_timed(lambda: result.append(bulk.sync(ns.name, routes))))
                check("bulk.sync", result[0].failed)

            rate = {k: N_ROUTES / statistics.median(v) for k, v in times.items()}
            report(f"bulk.apply, {N_ROUTES:,} new routes", rate["apply"], rate["ref"], "routes/s")
            report(f"bulk.sync from empty, {N_ROUTES:,} routes", rate["sync"], rate["ref"], "routes/s")
            report(f"bulk.apply, {N_ROUTES:,} gateways changed", rate["apply_moved"], rate["ref_moved"], "routes/s")
            converged = statistics.median(
                _timed(lambda: bulk.sync(ns.name, routes)) for _ in range(REPEATS))
            note(f"bulk.sync with nothing to do over {N_ROUTES:,} routes: {converged * 1000:.0f} ms (dump + compare)")

            # pyroute2 (a test dependency, not routed's), one call per route: its socket
            # opened in the netns from this thread.
            from pyroute2 import IPRoute

            from routed.dataplane.netns import in_netns

            _flush(ns.name)
            with in_netns(ns.name):
                ipr = IPRoute()
            try:
                oif = ipr.link_lookup(ifname="veth0")[0]
                some = routes[:N_PYROUTE2]

                def per_call() -> None:
                    for r in some:
                        ipr.route("replace", dst=r.dst, gateway=r.gateway, oif=oif, proto=PROTO)

                took = _timed(per_call)
            finally:
                ipr.close()
            report(f"pyroute2 one call per route, {N_PYROUTE2:,} routes", N_PYROUTE2 / took, rate["ref"], "routes/s")
            note(f"reference: ip -n NS -batch FILE of 'route replace ... proto {PROTO}' lines; "
                 f"medians of {REPEATS} runs; target ratio >= 0.5x")
            for problem in problems:
                note(f"PROBLEM {problem}")
    finally:
        ns.delete()


if __name__ == "__main__":
    main()
