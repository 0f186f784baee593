"""routedctl: the operator's CLI. Commands return data; routed.render formats it, and
routed.runtime.command prints it or the one-line error (--debug adds the traceback)."""

from __future__ import annotations

import argparse
import os
import sys

from routed.datastore.config import EtcdConfig
from routed.render import FORMATS
from routed.runtime import command

from . import resources

# gRPC's C core writes its own lines to stderr (TLS alerts, "absl::InitializeLog"
# warnings) before our one-line error; the error already says what failed. Set before
# grpc is first imported; GRPC_VERBOSITY=debug in the environment still wins.
os.environ.setdefault("GRPC_VERBOSITY", "NONE")


class Context:
    """What commands need, opened on first use so `--help` never touches etcd."""

    def __init__(self, args, stdin=None):
        self.args = args
        self.stdin = stdin
        self._kv = None

    @property
    def kv(self):
        if self._kv is None:
            from routed.datastore import schema

            config = EtcdConfig.from_env(endpoints=self.args.etcd_endpoints)
            kv = config.connect()
            try:
                # Commands that write (set_defaults(writes=True)) record the layout in an empty datastore.
                schema.ensure(kv, write=getattr(self.args, "writes", False))
            except BaseException:
                kv.close()
                raise
            self._kv = kv
        return self._kv

    @property
    def store(self):
        from routed.datastore.resources import ResourceStore

        return ResourceStore(self.kv)

    def close(self):
        if self._kv is not None:
            self._kv.close()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="routedctl", description="Manage a routed pod network.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument("--etcd-endpoints", help="comma-separated URLs (default: $ROUTED_ETCD_ENDPOINTS)")
    parser.add_argument("-o", "--output", choices=FORMATS, default=None,
                        help="table (the default for most commands), wide, yaml or json")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    resources.register(sub)
    for module in _extensions():
        module.register(sub)
    return parser


def _extensions():
    """Command groups that live beside the resource commands (ipam, node, ...)."""
    import importlib

    found = []
    for name in ("routed.cli.ipam", "routed.cli.node", "routed.cli.uninstall", "routed.cli.version"):
        try:
            found.append(importlib.import_module(name))
        except ModuleNotFoundError as err:
            if err.name != name:
                raise
    return found


def main(argv=None, stdin=None, stdout=None, stderr=None) -> int:
    stdout, stderr = stdout or sys.stdout, stderr or sys.stderr
    parser = build_parser()
    # -o is accepted after the command too (routedctl get ippools -o json).
    args, rest = parser.parse_known_args(argv)
    if rest:
        late = argparse.ArgumentParser(add_help=False)
        late.add_argument("-o", "--output", choices=FORMATS)
        late.add_argument("--debug", action="store_true")
        extra, unknown = late.parse_known_args(rest)
        if unknown:
            parser.error(f"unrecognized arguments: {' '.join(unknown)}")
        args.output = extra.output or args.output
        args.debug = args.debug or extra.debug
    ctx = Context(args, stdin=stdin)
    try:
        return command.run("routedctl", lambda: args.func(ctx, args), fmt=args.output, debug=args.debug,
                           stdout=stdout, stderr=stderr)
    finally:
        ctx.close()

if __name__ == "__main__":
    sys.exit(main())
