"""Run every bench/*_bench.py module's main() in turn, or the ones named."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
from pathlib import Path


def available() -> list[str]:
    return sorted(p.stem[: -len("_bench")] for p in Path(__file__).parent.glob("*_bench.py"))


def main(argv: list[str] | None = None) -> int:
    names = available()
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("bench", nargs="*", help=f"which to run (default: all of {', '.join(names)})")
    parser.add_argument("--tmpfs", action="store_true",
                        help="put the private etcd's data dir on tmpfs (/dev/shm) instead of disk")
    parser.add_argument("--seconds", type=float, help="length of each timed run (default 3)")
    args = parser.parse_args(argv)
    unknown = [n for n in args.bench if n.removesuffix("_bench") not in names]
    if unknown:
        parser.error(f"no benchmark {', '.join(unknown)}; there are: {', '.join(names)}")
    # Settings travel in the environment so benchmark subprocesses see them too.
    if args.tmpfs:
        os.environ["ROUTED_BENCH_TMPFS"] = "1"
    if args.seconds:
        os.environ["ROUTED_BENCH_SECONDS"] = str(args.seconds)
    for name in [n.removesuffix("_bench") for n in args.bench] or names:
        print(f"== {name}")
        started = time.monotonic()
        importlib.import_module(f"bench.{name}_bench").main()
        print(f"== {name}: {time.monotonic() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
