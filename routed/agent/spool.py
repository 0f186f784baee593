"""Work that must survive the agent being away: the shim's DEL spool and deferred releases.

A pod's DEL must never be stuck, so when the shim cannot reach the agent (or its own
deadline passes) it writes the request to a spool directory as
`<containerid>-<ifname>-<time_ns>.req`; when the agent cannot reach etcd it keeps the
handle to release in its own directory. Both are replayed until they succeed, or moved
to `failed/` when they never can.

Order matters more than promptness: a DEL spooled before the container was added again
is obsolete (replaying it would take the running pod's network), and an ADD finishes any
release queued for its handle before it allocates (else the queued release would free
the address under the new pod). LastAdds and PendingReleases.settle are those two rules.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import threading
from collections import Counter
from pathlib import Path
from typing import Callable

from cni import wire
from routed.errors import Conflict, DatastoreUnavailable, RoutedError

from .locks import KeyedLocks

log = logging.getLogger("routed.spool")

TRY_AGAIN_LATER = 11  # the CNI code of a failure that may pass (etcd away); every other one never will

# (env, stdin, spooled at ns) -> (code, stdout), or None: a later ADD made it obsolete
Replay = Callable[[dict, str, int], "tuple[int, str] | None"]


def replay_shim_spool(directory: str | Path, replay: Replay, stats: Counter) -> int:
    """Run each spooled DEL once, oldest first; returns how many were done. Those that may
    succeed later stay; those that never can go to failed/ (stats["failed"])."""
    done = 0
    path = Path(directory)
    if not path.is_dir():
        return 0
    for entry in sorted(path.glob("*.req"), key=_spooled_at):
        try:
            env, stdin = wire.parse_request(entry.read_bytes())
        except (OSError, ValueError) as err:
            _move_aside(entry, f"unreadable ({err})", stats)
            continue
        if env.get("CNI_COMMAND") != "DEL":
            _move_aside(entry, f"a {env.get('CNI_COMMAND') or 'request'} is never spooled, only DEL", stats)
            continue
        container = env.get("CNI_CONTAINERID")
        answer = replay(env, stdin, _spooled_at(entry))
        if answer is None:
            entry.unlink(missing_ok=True)
            stats["superseded"] += 1
            log.info("spooled DEL for container %s dropped: the container was added again since", container)
            continue
        code, out = answer
        if code == 0:
            entry.unlink(missing_ok=True)
            done += 1
            log.info("replayed spooled DEL for container %s", container)
        elif _cni_code(out) == TRY_AGAIN_LATER:
            # etcd is away: the rest would wait for it too, and keep liveness waiting
            log.warning("spooled DEL for container %s failed, will retry: %s", container, out)
            break
        else:
            _move_aside(entry, f"DEL for container {container} failed for good: {out}", stats)
    return done


def _spooled_at(entry: Path) -> int:
    """The time_ns the plugin put last in the name; 0 (older than anything) if it did not."""
    tail = entry.stem.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else 0


def _cni_code(out: str) -> int | None:
    try:
        return json.loads(out).get("code")
    except (ValueError, AttributeError):
        return None


def _move_aside(entry: Path, why: str, stats: Counter) -> None:
    failed = entry.parent / "failed"
    failed.mkdir(mode=0o700, exist_ok=True)
    entry.rename(failed / entry.name)
    stats["failed"] += 1
    log.error("spool entry %s moved to %s: %s", entry.name, failed, why)


def write_whole(path: Path, data: bytes, sync: bool) -> None:
    """Write data to path through a temporary name: whole or not at all. A short write
    is continued, a full disk (ENOSPC) raises RoutedError naming it and leaves nothing."""
    tmp = path.with_name("." + path.name)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        disk = " (the disk is full)" if err.errno in (errno.ENOSPC, errno.EDQUOT) else ""
        raise RoutedError(f"cannot write {path}: {err.strerror or err}{disk}") from None


class PendingReleases:
    """Handles whose release is queued, one file each, released by the agent's worker and
    retried while etcd is away. settle() lets an ADD finish its handle's release first."""

    def __init__(self, directory: str | Path):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.wake = threading.Event()
        self.stats: Counter = Counter()  # released, failed
        self._handles = KeyedLocks()

    def add(self, handle: str) -> None:
        """Durable before it returns: a DEL is answered on the strength of it."""
        try:
            write_whole(self.dir / handle, handle.encode(), sync=True)
        except RoutedError as err:
            raise RoutedError(f"cannot queue the release of {handle}: {err}") from None
        self.wake.set()

    def handles(self) -> list[str]:
        return sorted(p.name for p in self.dir.iterdir() if p.is_file() and not p.name.startswith("."))

    def settle(self, handle: str, release: Callable[[str], object]) -> None:
        """Release handle now if a release of it is queued. Raises what release raises
        (etcd away): the caller (an ADD) must not go on to reuse the handle then."""
        with self._handles.hold(handle):
            if (self.dir / handle).exists():
                release(handle)
                self._done(handle)

    def run(self, release: Callable[[str], object], stop: threading.Event, beat: Callable[[], None],
            interval: float = 5.0) -> None:
        """Release queued handles as soon as they come, and retry failures every interval."""
        while not stop.is_set():
            self.retry(release)
            beat()
            self.wake.wait(interval)
            self.wake.clear()

    def retry(self, release: Callable[[str], object]) -> int:
        done = 0
        for handle in self.handles():
            with self._handles.hold(handle):
                if not (self.dir / handle).exists():
                    continue  # an ADD settled it meanwhile
                try:
                    release(handle)
                except Conflict as err:  # etcd busy: next round
                    log.debug("release of %s still pending: %s", handle, err)
                    continue
                except DatastoreUnavailable as err:  # etcd away: the others would wait for it too
                    log.debug("releases still pending: %s", err)
                    break
                except Exception as err:  # never going to work: keep it for an operator, not forever
                    self._move_aside(handle, err)
                    continue
                self._done(handle)
                done += 1
        return done

    def _done(self, handle: str) -> None:
        (self.dir / handle).unlink(missing_ok=True)
        self.stats["released"] += 1

    def _move_aside(self, handle: str, err: Exception) -> None:
        failed = self.dir / "failed"
        failed.mkdir(mode=0o700, exist_ok=True)
        (self.dir / handle).rename(failed / handle)
        self.stats["failed"] += 1
        log.error("release of %s failed for good (%s: %s); moved to %s", handle, type(err).__name__, err, failed)


class LastAdds:
    """When each container interface was last added successfully (the time the ADD came
    in, as time_ns, the clock the plugin names spooled DELs with). Kept on disk so an
    agent restart between the ADD and the replay does not forget it; not fsynced: after
    a machine crash the pods are gone anyway."""

    def __init__(self, directory: str | Path):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)

    def _path(self, container: str, ifname: str) -> Path:
        # A digest: container IDs may be 256 characters and come from a spool file.
        return self.dir / hashlib.sha1(f"{container}\0{ifname}".encode()).hexdigest()

    def record(self, container: str, ifname: str, at_ns: int) -> None:
        write_whole(self._path(container, ifname), str(at_ns).encode(), sync=False)

    def since(self, container: str, ifname: str) -> int:
        """The last ADD's time, 0 if none is known."""
        try:
            return int(self._path(container, ifname).read_text())
        except (OSError, ValueError):
            return 0

    def forget(self, container: str, ifname: str) -> None:
        self._path(container, ifname).unlink(missing_ok=True)
