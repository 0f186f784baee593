"""The `routed` program: node agent, controller, BGP speaker, lab and installer subcommands."""

from __future__ import annotations

import argparse
import importlib
import sys

from routed.runtime import command

# Each subcommand lives in its own CLI module exposing register(subparsers); no other
# module imports them (tests/unit/test_imports.py).
SUBCOMMANDS = ("routed.lab.cli", "routed.agent.cli", "cni.cli", "routed.dataplane.cli", "bgp.cli",
               "routed.controller.cli")


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
    return command.run("routed", lambda: args.func(args), fmt=getattr(args, "output", "table"), debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
