"""The ExaBGP sidecar's supervisor (the command `routed bgp-speaker`: bgp.cli).

The agent writes exabgp.conf and exabgp.env.json (the environment ExaBGP needs: bind
address, port) into a directory both containers share. This loop runs ExaBGP on them,
sends SIGUSR1 (reload: sessions of unchanged peers stay up, the API process too) when
the configuration changes, restarts ExaBGP when its environment changes or it dies,
and on SIGTERM stops it with SIGTERM, which closes sessions without a NOTIFICATION so
peers keep our routes for the graceful-restart time.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

log = logging.getLogger("routed.bgp")

RELOAD_WAIT = 5.0  # seconds for ExaBGP to log that it reloaded
CONFIG = "exabgp.conf"
ENV = "exabgp.env.json"


def _die_with_parent() -> None:
    """ExaBGP gets SIGTERM when its supervisor dies, even by SIGKILL: an orphan would
    keep port 179 and make every restarted speaker's ExaBGP fail to bind."""
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def exabgp_binary() -> str:
    found = Path(sys.executable).with_name("exabgp")
    return str(found) if found.exists() else (shutil.which("exabgp") or "exabgp")


class Speaker:
    def __init__(self, directory: str | Path, netns: str | None = None, poll: float = 0.5):
        self.dir = Path(directory)
        self.netns = netns
        self.poll = poll
        self.proc: subprocess.Popen | None = None
        self.stop = threading.Event()
        self.restarts = 0
        self._reload_since: tuple[float, int] | None = None  # a reload asked for, not yet seen

    def _read(self) -> tuple[float, dict] | None:
        try:
            mtime = (self.dir / CONFIG).stat().st_mtime_ns
            env = json.loads((self.dir / ENV).read_text())
        except (OSError, ValueError):
            return None
        return mtime, env

    def _start(self, env: dict) -> None:
        cmd = [exabgp_binary(), str(self.dir / CONFIG)]
        if self.netns:
            cmd = ["ip", "netns", "exec", self.netns, *cmd]
        out = open(self.dir / "exabgp.log", "ab")
        self.proc = subprocess.Popen(cmd, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT,
                                     start_new_session=True, preexec_fn=_die_with_parent)
        log.info("ExaBGP started (pid %d)", self.proc.pid)

    def run(self) -> None:
        seen = None
        while not self.stop.is_set():
            current = self._read()
            if current is None:  # the agent has not written a configuration yet
                self.stop.wait(self.poll)
                continue
            mtime, env = current
            if self.proc is None or self.proc.poll() is not None:
                if self.proc is not None:
                    self.restarts += 1
                    log.warning("ExaBGP exited with %s; restarting", self.proc.returncode)
                    self.stop.wait(min(5.0, 0.2 * self.restarts))
                self._start(env)
            elif seen is not None and env != seen[1]:
                log.info("ExaBGP environment changed; restarting it")
                self._terminate()
                self._start(env)
            elif seen is not None and mtime != seen[0]:
                log.info("ExaBGP configuration changed; reloading")
                self._reload_since = (time.monotonic(), self._log_size())
                self.proc.send_signal(signal.SIGUSR1)
            elif self._reload_since is not None:
                self._check_reload(env)
            seen = (mtime, env)
            self.stop.wait(self.poll)
        self._terminate()

    def _log_size(self) -> int:
        try:
            return (self.dir / "exabgp.log").stat().st_size
        except OSError:
            return 0

    def _check_reload(self, env: dict) -> None:
        """ExaBGP 5.0 consumes SIGUSR1 but skips the reload while any peer still has routes
        queued, which a peer that never connects (wrong password, router down) has for
        ever. It logs "performing reload" when it does reload: without that, restart it
        (peers keep our routes through graceful restart)."""
        since, offset = self._reload_since
        with open(self.dir / "exabgp.log", "rb") as f:
            f.seek(offset)
            if b"performing reload" in f.read():
                self._reload_since = None
                return
        if time.monotonic() - since > RELOAD_WAIT:
            log.warning("ExaBGP did not reload its configuration within %.0f s; restarting it", RELOAD_WAIT)
            self._reload_since = None
            self._terminate()
            self._start(env)

    def _terminate(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def write_config(directory: str | Path, config: str, env: dict) -> bool:
    """Atomically write both files; False when nothing changed (no reload needed)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    env_text = json.dumps(env, sort_keys=True)
    try:
        if (d / CONFIG).read_text() == config and (d / ENV).read_text() == env_text:
            return False
    except OSError:
        pass
    for name, text in ((ENV, env_text), (CONFIG, config)):  # env first: the speaker reads on config change
        _write_private(d / name, text)
    return True


def group_shared(directory: Path) -> bool:
    """A setgid directory is shared with its group on purpose: Kubernetes' fsGroup makes the
    pod's BGP volume so for a non-root bgp-speaker. What the agent puts there (this
    configuration, its helper's socket) is then for that group too; else the owner's alone."""
    return bool(directory.stat().st_mode & stat.S_ISGID)


def _write_private(path: Path, text: str) -> None:
    """Replace path with text, readable by its owner only from the first byte on (the
    configuration holds MD5 passwords): mkstemp creates the file 0600 whatever the umask,
    and rename swaps it in whole. In a group-shared directory the group may read it too."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        if group_shared(path.parent):
            os.fchmod(fd, 0o640)
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise

