"""Run a pytest selection INSIDE a virtme-ng VM that boots Debian's stock kernel.

This machine's kernel has no ipip, wireguard or sctp module, so IPIP, WireGuard's kernel
device and network policy over SCTP are tested in a VM: Debian's
linux-image-amd64 kernel (fetched and unpacked by scripts/vm-kernel.sh), booted by
virtme-ng under qemu without KVM (the host's /dev/kvm cannot run a stock kernel). The
guest sees the host filesystem read-only, with the repository mounted read-write (9p,
cache=loose: see REPO_TAG below); it
loads MODULES, then runs the project's venv pytest with ``-m vm`` and ``ROUTED_IN_VM=1``.

    .venv/bin/python tests/vm/run_in_vm.py [PATH ...] [-- PYTEST_ARGS ...]

With no PATH, runs every guest file (DEFAULT_PATHS), one boot for all. Exits with the
guest pytest's exit code.
If the VM cannot be prepared or started, or the guest never reports back, it exits
non-zero with a message saying so: this never skips.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# Every guest test file: tests/vm/test_vm_lane.py runs them all in ONE boot (each boot
# costs 30-60 s without KVM) and reports each file on its own. A new file is one line here.
DEFAULT_PATHS = [
    "tests/vm/guest_ipip.py",
    "tests/vm/guest_wireguard.py",
    "tests/vm/guest_policy_sctp.py",
]
# The modules the guest tests need; the guest loads them before pytest starts.
MODULES = ("ipip", "wireguard", "sctp")
KERNEL_SCRIPT = REPO / "scripts" / "vm-kernel.sh"
# The guest prints this after its pytest ends; without it the VM failed, not the tests.
SENTINEL = "ROUTED-GUEST-EXIT="
# Exit codes of our own, distinct from pytest's (0-5).
EXIT_NO_VM = 90          # could not prepare or start the VM, or the guest never reported
EXIT_NO_MODULE = 91      # the guest kernel would not load one of MODULES
# Measured on 2 cores: guest reaches its script ≈ 8-9 s after start, the whole IPIP run
# ≈ 26-35 s idle, up to ≈ 60 s with the machine busy (TCG suffers most from contention);
# with the SCTP policy cluster too, minutes on a busy machine (load 20: the guest reached
# its script after 47 s). The timeout only catches a hung VM.
DEFAULT_TIMEOUT = float(os.environ.get("ROUTED_VM_TIMEOUT", "900"))


class VMError(RuntimeError):
    """The VM could not be prepared or started, or did not report back."""


def prepare_kernel() -> str:
    """Run scripts/vm-kernel.sh (idempotent: installs qemu/kmod/udev and virtme-ng when
    missing, fetches and unpacks the kernel once) and return the kernel image path."""
    try:
        result = subprocess.run(
            ["bash", str(KERNEL_SCRIPT)], cwd=REPO, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, timeout=900,
        )
    except subprocess.TimeoutExpired as err:
        raise VMError(f"{KERNEL_SCRIPT} did not finish in {err.timeout:.0f} s") from None
    if result.returncode != 0:
        raise VMError(f"{KERNEL_SCRIPT} failed (exit {result.returncode}):\n{result.stderr}")
    lines = result.stdout.strip().splitlines()
    kimg = lines[-1].strip() if lines else ""
    if not kimg or not os.path.isfile(kimg):
        raise VMError(f"{KERNEL_SCRIPT} printed no kernel image path:\n{result.stdout}{result.stderr}")
    return kimg


# How the repository reaches the guest read-write. vng's --rwdir mounts 9p without any
# cache, so every stat() is a round trip to qemu; under TCG that doubles Python's start-up
# and import times (pytest: ~8 s -> ~4 s, pyroute2: ~12 s -> ~4.5 s). So by default we
# export the repo ourselves and mount it with cache=loose over the read-only root's copy.
# Nothing on the host changes the tree during the run; the guest's writes reach the host
# (and it syncs before exiting). ROUTED_VM_RWDIR=1 falls back to plain `--rwdir`.
REPO_TAG = "routedrepo"
PLAIN_RWDIR = os.environ.get("ROUTED_VM_RWDIR") == "1"


def guest_script(paths: list[str], pytest_args: list[str], repo: Path = REPO,
                 plain_rwdir: bool = PLAIN_RWDIR) -> str:
    """The shell script the guest runs: mount the repo, load MODULES, run the venv's pytest,
    report its exit code on a line of its own."""
    python = repo / ".venv" / "bin" / "python"
    pytest_cmd = shlex.join(
        # -r...p: every test's outcome in the short summary, for parse_results; the slowest
        # tests' times, because the VM lane is the slow one.
        [str(python), "-m", "pytest", "-m", "vm", "-p", "no:cacheprovider", "-rfEsxXp", "--durations=8",
         *pytest_args, *paths]
    )
    q_repo = shlex.quote(str(repo))
    fail = f"{{ echo '{SENTINEL}{EXIT_NO_VM}'; exit {EXIT_NO_VM}; }}"
    lines = ["echo \"guest: kernel $(uname -r), up $(cut -d' ' -f1 /proc/uptime) s\""]
    if not plain_rwdir:
        lines.append(
            "mount -t 9p -o trans=virtio,version=9p2000.L,access=any,msize=512000,cache=loose "
            f"{REPO_TAG} {q_repo} || {{ echo 'guest: ERROR: cannot mount the repo'; "
            f"echo '{SENTINEL}{EXIT_NO_VM}'; exit {EXIT_NO_VM}; }}"
        )
    lines += [
        f"cd {q_repo} || {fail}",
        f"for module in {' '.join(MODULES)}; do",
        "  if ! modprobe $module 2>&1; then",
        "    echo \"guest: ERROR: modprobe $module failed\"",
        f"    echo '{SENTINEL}{EXIT_NO_MODULE}'; exit {EXIT_NO_MODULE}",
        "  fi",
        "done",
        # No plugin autoload: the hypothesis plugin alone costs ~20 s to import without KVM.
        f"ROUTED_IN_VM=1 PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 {pytest_cmd} 2>&1",
        "rc=$?",
        "sync",
        "echo \"guest: pytest done, up $(cut -d' ' -f1 /proc/uptime) s\"",
        f"echo \"{SENTINEL}$rc\"",
        "exit $rc",
    ]
    return "\n".join(lines)


def vng_command(kimg: str, script: str, repo: Path = REPO,
                plain_rwdir: bool = PLAIN_RWDIR) -> list[str]:
    vng = repo / ".venv" / "bin" / "vng"
    if plain_rwdir:
        share = ["--rwdir", str(repo)]
    else:
        if "," in str(repo):
            raise VMError(f"cannot export {repo} to qemu: a comma in the path")
        # `--qemu-opts=VALUE`: a separate value starting with "-" confuses vng's argparse.
        share = ["--qemu-opts="
                 f"-fsdev local,id={REPO_TAG},path={repo},security_model=none,multidevs=remap "
                 f"-device virtio-9p-pci,fsdev={REPO_TAG},mount_tag={REPO_TAG}"]
    return [
        str(vng),
        "--run", kimg,
        "--disable-kvm", "--force-9p",
        "--append", "modprobe.blacklist=kvm_amd,kvm_intel,kvm",
        *share,
        "--memory", "1G",
        "--cpus", "2",
        "--exec", script,
    ]


def run_in_vm(
    paths: list[str] | None = None,
    pytest_args: list[str] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    echo: bool = True,
) -> tuple[int, str]:
    """Boot the VM, run the guest pytest on ``paths`` and return (exit code, output).

    The exit code is the guest pytest's. Raises VMError when the VM cannot be started
    or the guest never reports its exit code (boot failure, crash, timeout)."""
    paths = list(paths or DEFAULT_PATHS)
    kimg = prepare_kernel()
    cmd = vng_command(kimg, guest_script(paths, list(pytest_args or [])))
    env = dict(os.environ)
    # vng execs virtme-run through PATH: the venv's bin must come first.
    env["PATH"] = f"{REPO / '.venv' / 'bin'}:{env.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}"
    if not os.access(cmd[0], os.X_OK):
        raise VMError(f"{cmd[0]} missing after {KERNEL_SCRIPT}")

    started = time.monotonic()
    # Our own session: on timeout we kill exactly the process group we started (vng, qemu).
    # stdout is a pipe, not a tty (vng behaves as with `| cat`).
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, errors="replace", start_new_session=True,
    )
    out: list[str] = []

    def _read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            out.append(line)
            if echo:
                sys.stdout.write(line)
                sys.stdout.flush()

    reader = threading.Thread(target=_read, daemon=True)
    reader.start()
    timed_out = False
    try:
        vng_rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
    finally:
        if proc.poll() is None:  # timeout, or an exception (Ctrl-C) while waiting
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            vng_rc = proc.wait()
    reader.join(timeout=10)
    elapsed = time.monotonic() - started
    output = "".join(out)

    if timed_out:
        raise VMError(f"VM run timed out after {timeout:.0f} s; output so far:\n{output[-4000:]}")
    codes = re.findall(rf"^{re.escape(SENTINEL)}(\d+)\s*$", output, re.M)
    if not codes:
        raise VMError(
            f"the VM did not run the guest tests (vng exit {vng_rc} after {elapsed:.1f} s); "
            f"command: {shlex.join(cmd[:-2])} --exec <script>\noutput:\n{output[-4000:]}"
        )
    rc = int(codes[-1])
    if rc == EXIT_NO_MODULE:
        raise VMError(f"the guest kernel could not load {' or '.join(MODULES)}:\n{output[-4000:]}")
    if rc == EXIT_NO_VM:
        raise VMError(f"the guest could not reach the repository:\n{output[-4000:]}")
    if echo:
        print(f"run_in_vm: guest pytest exit {rc}, VM run {elapsed:.1f} s", flush=True)
    return rc, output


_SUMMARY_WORD = r"(passed|failed|errors?|skipped|deselected|xfailed|xpassed|warnings?)"


def parse_summary(output: str) -> dict[str, int]:
    """Counts from the LAST pytest summary line, e.g. ``1 passed, 2 skipped in 3.1s``.
    An empty dict means no summary line was found."""
    for line in reversed(output.splitlines()):
        if not re.search(r"\bin [\d.]+s\b", line):
            continue
        found = re.findall(rf"(\d+) {_SUMMARY_WORD}\b", line)
        if found or "no tests ran" in line:
            counts: dict[str, int] = {}
            for n, word in found:
                word = {"error": "errors", "warning": "warnings"}.get(word, word)
                counts[word] = counts.get(word, 0) + int(n)
            return counts
    return {}


_OUTCOME = re.compile(r"^(PASSED|FAILED|ERROR|XFAIL|XPASS|SKIPPED(?: \[\d+\])?) ([\w./-]+\.py)\b(.*)$")


def parse_results(output: str) -> dict[str, dict[str, list[str]]]:
    """Per test file, its outcomes from the short summary (``-rfEsxXp``), each with the
    rest of its line: {"tests/vm/guest_ipip.py": {"passed": ["::test_x"]}}. A file
    absent from the result ran nothing (or was not collected)."""
    results: dict[str, dict[str, list[str]]] = {}
    for line in output.splitlines():
        m = _OUTCOME.match(line.strip())
        if m:
            outcome = m.group(1).split()[0].lower()
            results.setdefault(m.group(2), {}).setdefault(outcome, []).append(m.group(3).strip())
    return results


def main(argv: list[str]) -> int:
    if "--" in argv:
        i = argv.index("--")
        paths, pytest_args = argv[:i], argv[i + 1:]
    else:
        paths, pytest_args = argv, []
    try:
        rc, _ = run_in_vm(paths or None, pytest_args)
    except VMError as err:
        print(f"run_in_vm: ERROR: {err}", file=sys.stderr, flush=True)
        return EXIT_NO_VM
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
