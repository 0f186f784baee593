"""Work that must survive the agent being away: the shim's DEL spool and deferred releases.

A pod's DEL must never be stuck, so when the shim cannot reach the agent it writes the
request to a spool directory; when the agent cannot reach etcd it keeps the handle to
release in its own directory. Both are replayed until they succeed.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Callable

log = logging.getLogger("routed.spool")


def replay_shim_spool(directory: str | Path, dispatch: Callable[[dict, str], tuple[int, str]]) -> int:
    """Run each spooled DEL once; returns how many were done. Failed ones stay for next time."""
    done = 0
    path = Path(directory)
    if not path.is_dir():
        return 0
    for entry in sorted(path.glob("*.json")):
        try:
            request = json.loads(entry.read_text())
            env, stdin = request["env"], request["stdin"]
        except (OSError, ValueError, KeyError, TypeError) as err:
            log.error("spool entry %s is unreadable (%s); moved aside", entry.name, err)
            entry.rename(entry.with_suffix(".bad"))
            continue
        if env.get("CNI_COMMAND") != "DEL":
            entry.rename(entry.with_suffix(".bad"))
            continue
        code, out = dispatch(env, stdin)
        if code == 0:
            entry.unlink(missing_ok=True)
            done += 1
            log.info("replayed spooled DEL for container %s", env.get("CNI_CONTAINERID"))
        else:
            log.warning("spooled DEL for container %s failed, will retry: %s", env.get("CNI_CONTAINERID"), out)
    return done


class PendingReleases:
    """Handles whose release could not reach etcd, one file each, retried by the agent."""

    def __init__(self, directory: str | Path):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)

    def add(self, handle: str) -> None:
        tmp = self.dir / f".{handle}"
        tmp.write_text(handle)
        os.rename(tmp, self.dir / handle)

    def handles(self) -> list[str]:
        return sorted(p.name for p in self.dir.iterdir() if not p.name.startswith("."))

    def retry(self, release: Callable[[str], object]) -> int:
        done = 0
        for handle in self.handles():
            try:
                release(handle)
            except Exception as err:  # etcd still away: keep it for the next round
                log.debug("release of %s still pending: %s", handle, err)
                continue
            (self.dir / handle).unlink(missing_ok=True)
            done += 1
        return done
