"""One node's agent as a separate process, hammering the IPAM (tests and benchmarks).

    python -m tests.support.ipam_worker --endpoint URL --node node-3 --ops N --hold K \
        --seed S --log FILE [--alloc-ratio P]

Loops N operations: allocates (handle ``net.<node>-<counter>.eth0``) while it holds
fewer than K addresses, with probability P (default 0.6), otherwise releases a random
held handle. Every line of the log is one JSON object, written with one write() on an
O_APPEND descriptor and fsync'd before the worker goes on:

    {"op": "start", "pid", "t"}
    {"op": "allocating", "handle", "t"}              intent, before allocate() is called
    {"op": "alloc", "handle", "ips", "borrowed", "t"}   completed
    {"op": "exhausted", "handle", "error", "t"}      PoolExhausted; then one is released
    {"op": "releasing", "handle", "t"}               intent, before release_handle()
    {"op": "release", "handle", "ips", "t"}          completed, with the addresses freed
    {"op": "done", "stats": {...}, "t"}

The intent lines let a reader of a log cut short by SIGKILL tell which one operation
may have committed without its completion line ("in doubt"). ``t`` is
time.monotonic(), one clock for every process on the machine, so logs of several
workers can be compared in time.

When the log already exists (a worker restarted after its predecessor for this node
was killed), the worker takes over the handles the log shows as held (allocated and
no release started) and continues with fresh handles: its counter starts after every
counter the log mentions, including an in-doubt "allocating". In-doubt releases are
left alone: they are for the IPAM check/repair to find.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time


def read_log(path: str) -> list[dict]:
    """Every complete line of a worker log; a line cut short by SIGKILL is dropped."""
    try:
        with open(path, "rb") as f:
            text = f.read().decode()
    except FileNotFoundError:
        return []
    entries = []
    for line in text.split("\n"):
        if not line.strip():
            continue
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # only the very last line can be torn
    return entries


def counter_of(handle: str, node: str) -> int:
    prefix, suffix = f"net.{node}-", ".eth0"
    if not (handle.startswith(prefix) and handle.endswith(suffix)):
        raise ValueError(f"handle {handle!r} is not one of node {node}'s")
    return int(handle[len(prefix):-len(suffix)])


def held_and_next(entries: list[dict], node: str) -> tuple[dict[str, list[str]], int]:
    """(handle -> ips held per the log, next free counter)."""
    held: dict[str, list[str]] = {}
    top = -1
    for e in entries:
        handle = e.get("handle")
        if handle:
            top = max(top, counter_of(handle, node))
        if e["op"] == "alloc":
            held[handle] = e["ips"]
        elif e["op"] == "releasing":
            held.pop(handle, None)
    return held, top + 1


class Log:
    def __init__(self, path: str):
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        # A predecessor killed mid-write may have left a torn line: start a new one.
        if os.fstat(self.fd).st_size:
            with open(path, "rb") as f:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    os.write(self.fd, b"\n")

    def write(self, **entry) -> None:
        entry["t"] = time.monotonic()
        os.write(self.fd, (json.dumps(entry, separators=(",", ":")) + "\n").encode())
        os.fsync(self.fd)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="ipam_worker", description=__doc__.splitlines()[0])
    p.add_argument("--endpoint", required=True)
    p.add_argument("--node", required=True)
    p.add_argument("--ops", type=int, required=True)
    p.add_argument("--hold", type=int, required=True, help="most addresses held at once")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log", required=True)
    p.add_argument("--alloc-ratio", type=float, default=0.6,
                   help="chance of allocating (rather than releasing) while below --hold")
    args = p.parse_args(argv)

    from ipam.allocator import IPAM
    from ipam.errors import PoolExhausted
    from routed.datastore.etcd import EtcdKV

    rng = random.Random(args.seed)
    held, counter = held_and_next(read_log(args.log), args.node)
    log = Log(args.log)
    kv = EtcdKV([args.endpoint], timeout=10.0)
    ipam = IPAM(kv)
    counts = {"alloc": 0, "release": 0, "exhausted": 0, "borrowed": 0}
    log.write(op="start", pid=os.getpid(), adopted=sorted(held))

    def release_one() -> None:
        handle = rng.choice(sorted(held))
        log.write(op="releasing", handle=handle)
        freed = ipam.release_handle(handle)
        del held[handle]
        counts["release"] += 1
        log.write(op="release", handle=handle, ips=[str(ip) for ip in freed])

    for _ in range(args.ops):
        if held and (len(held) >= args.hold or rng.random() >= args.alloc_ratio):
            release_one()
            continue
        handle = f"net.{args.node}-{counter}.eth0"
        counter += 1
        log.write(op="allocating", handle=handle)
        try:
            got = ipam.allocate(handle, args.node, {"pod": f"pod-{handle.split('.')[1]}", "namespace": "load"})
        except PoolExhausted as err:
            counts["exhausted"] += 1
            log.write(op="exhausted", handle=handle, error=str(err))
            if held:
                release_one()
            continue
        held[handle] = [str(ip) for ip in got.ips]
        counts["alloc"] += 1
        counts["borrowed"] += bool(got.borrowed)
        log.write(op="alloc", handle=handle, ips=held[handle], borrowed=[str(ip) for ip in got.borrowed])

    log.write(op="done", stats={**dict(ipam.stats), **counts})
    kv.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
