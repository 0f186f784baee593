"""Logging for the long-running programs: one logfmt line per event on stderr."""

from __future__ import annotations

import logging
import sys
import time

LEVELS = ("debug", "info", "warning", "error")

# pyroute2 logs every netlink message at debug: under a burst of pods that alone slowed
# the agent to seconds per ADD. Their warnings still show.
QUIET = ("pyroute2", "asyncio")


class LogfmtFormatter(logging.Formatter):
    """One structured line per event: ts=... level=... logger=... msg="..."."""

    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage().replace('"', "'")
        line = (f'ts={time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))}'
                f'.{int(record.msecs):03d}Z level={record.levelname.lower()} logger={record.name} msg="{msg}"')
        if record.exc_info:
            line += ' exc="' + self.formatException(record.exc_info).replace("\n", " | ").replace('"', "'") + '"'
        return line


def setup(level: str = "info", stream=None) -> None:
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(LogfmtFormatter())
    logging.basicConfig(level=getattr(logging, level.upper()), handlers=[handler], force=True)
    for name in QUIET:
        logging.getLogger(name).setLevel(logging.WARNING)


def add_argument(parser, default: str = "info") -> None:
    """--log-level, the same on every program."""
    parser.add_argument("--log-level", default=default, choices=LEVELS)
