"""The lab's processes: started detached, recorded by PID, and stopped only when the PID
still names the process the lab started.

A PID alone is not proof: after a reboot or a crash it may belong to anything. Every
process the lab starts has the lab's state directory in its command line (its config,
log or socket lives there), so `alive(pid, marker)` checks /proc/PID/cmdline for that
path before anything is signalled. Processes started by the lab's own processes (ExaBGP
and its helper, started by the bgp-speaker) are found as descendants of recorded PIDs,
inside the lab's namespaces (`ip netns pids`), or, after a crash left them orphaned, by
the state directory in their command line.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path


def spawn(argv: list[str], log: Path, env: dict | None = None, cwd: str | None = None) -> int:
    """Start argv in its own session (it outlives `routed lab up`), output to log."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, cwd=cwd, start_new_session=True)
    return proc.pid


def cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def alive(pid: int | None, marker: str) -> bool:
    """pid runs (not a zombie) and its command line mentions marker (a path of the lab).

    An empty command line counts as alive: Popen returns once exec has closed the
    close-on-exec pipe, a moment before the kernel has set up the new command line, and
    on a busy machine `lab up` looked there and reported a healthy agent as exited."""
    if not pid:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    if stat[stat.rfind(")") + 2:].startswith(("Z", "X")):
        return False
    args = cmdline(pid)
    return not args or any(marker in a for a in args)


def children() -> dict[int, list[int]]:
    """ppid -> pids, for every process on the machine (one pass over /proc)."""
    out: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid ...; comm may hold spaces and parentheses
        fields = stat[stat.rfind(")") + 2:].split()
        if len(fields) > 1:
            out.setdefault(int(fields[1]), []).append(int(entry))
    return out


def descendants(pid: int, tree: dict[int, list[int]] | None = None) -> list[int]:
    tree = tree if tree is not None else children()
    found, todo = [], [pid]
    while todo:
        for child in tree.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def in_netns(name: str) -> list[int]:
    """Processes whose network namespace is the named one."""
    result = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True)
    return [int(p) for p in result.stdout.split() if p.isdigit()]


def with_path(directory: str) -> list[int]:
    """Processes with an argument naming a path inside directory (orphans of a crashed lab)."""
    prefix = directory.rstrip("/") + "/"
    me = {os.getpid(), os.getppid()}
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) not in me:
            if any(a.startswith(prefix) or f"={prefix}" in a or f":{prefix}" in a for a in cmdline(int(entry))):
                found.append(int(entry))
    return found


def terminate(pids: list[int], timeout: float = 10.0) -> list[int]:
    """SIGTERM, wait up to timeout, then SIGKILL what is left; returns the PIDs signalled."""
    signalled = []
    for pid in dict.fromkeys(pids):
        try:
            os.kill(pid, signal.SIGTERM)
            signalled.append(pid)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(_running(p) for p in signalled):
        time.sleep(0.1)
    for pid in signalled:
        if _running(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    return signalled


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return state[state.rfind(")") + 2:][:1] != "Z"
