"""The `routed` program: node agent, lab and installer subcommands."""

from __future__ import annotations

import argparse
import importlib
import sys
import traceback

from routed.errors import RoutedError

# Each subcommand lives in its own module exposing register(subparsers).
SUBCOMMANDS = ("routed.lab.cli", "routed.agent.cli", "cni.install", "routed.dataplane.cleanup", "bgp.speaker", "routed.controller.cli")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="routed", description="routed node agent, lab and tools")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in SUBCOMMANDS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name != name:
                raise
            continue
        module.register(sub)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except RoutedError as err:
        if args.debug:
            traceback.print_exc()
        print(f"routed: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
