"""`routed bgp-speaker`: run the ExaBGP sidecar's supervisor (bgp.speaker) in the foreground."""

from __future__ import annotations

import os
import signal

from routed.runtime import logs

from .speaker import Speaker


def run(args) -> int:
    logs.setup(args.log_level)
    speaker = Speaker(args.config_dir, args.netns or None)
    signal.signal(signal.SIGTERM, lambda *_: speaker.stop.set())
    signal.signal(signal.SIGINT, lambda *_: speaker.stop.set())
    speaker.run()
    return 0


def register(sub) -> None:
    env = os.environ.get
    p = sub.add_parser("bgp-speaker", help="run ExaBGP on the configuration the agent writes")
    p.add_argument("--config-dir", default=env("ROUTED_BGP_DIR", "/var/run/routed/bgp"))
    p.add_argument("--netns", default=env("ROUTED_NETNS"), help="namespace playing this node")
    logs.add_argument(p, env("ROUTED_LOG_LEVEL", "info"))
    p.set_defaults(func=run)
