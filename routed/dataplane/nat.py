"""natOutgoing: pods of such pools reach addresses outside every pool through masquerade.

The rules live in our own chain, ROUTED-NAT-OUTGOING in the nat table, jumped to from
POSTROUTING; the chain is rewritten whole with iptables-restore --noflush (atomic, and
nobody else's rules are touched), and removed cleanly.
"""

from __future__ import annotations

import subprocess

from routed.dataplane.errors import DataplaneError

CHAIN = "ROUTED-NAT-OUTGOING"
# Seconds one iptables call may take (-w waits for the xtables lock meanwhile). A call that
# hangs longer fails the pass; the agent's loop counts it and tries again on its next pass.
TIMEOUT = 30.0


def render(nat_pools: list[str], all_pools: list[str]) -> str:
    """iptables-restore input for the chain (pure). Traffic between pools is never NATed."""
    lines = ["*nat", f":{CHAIN} - [0:0]", f"-F {CHAIN}"]
    for pool in nat_pools:
        for other in all_pools:
            lines.append(f"-A {CHAIN} -s {pool} -d {other} -j RETURN")
        lines.append(f"-A {CHAIN} -s {pool} -j MASQUERADE")
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def _run(netns: str | None, cmd: list[str], stdin: str | None = None) -> subprocess.CompletedProcess:
    full = (["ip", "netns", "exec", netns] if netns else []) + cmd
    try:
        return subprocess.run(full, input=stdin, capture_output=True, text=True, timeout=TIMEOUT)
    except subprocess.TimeoutExpired:  # run() has killed and reaped it
        raise DataplaneError(f"{' '.join(cmd[:1])} did not finish within {TIMEOUT} s (killed)") from None


def _jump(tool: str, op: str) -> list[str]:
    """Check (-C), add (-A) or delete (-D) our jump from POSTROUTING."""
    return [tool, "-w", "-t", "nat", op, "POSTROUTING", "-j", CHAIN,
            "-m", "comment", "--comment", "routed natOutgoing"]


def sync(netns: str | None, nat_pools: list[str], all_pools: list[str], family: int = 4) -> None:
    """Make the chain hold exactly the rules for nat_pools; remove it all when there are none."""
    tool = "iptables" if family == 4 else "ip6tables"
    if not nat_pools:
        remove(netns, family)
        return
    result = _run(netns, [f"{tool}-restore", "--noflush", "-w"], render(nat_pools, all_pools))
    if result.returncode != 0:
        raise DataplaneError(f"{tool}-restore of {CHAIN}: {result.stderr.strip()}")
    if _run(netns, _jump(tool, "-C")).returncode != 0:
        added = _run(netns, _jump(tool, "-A"))
        if added.returncode != 0:
            raise DataplaneError(f"{tool}: cannot add the POSTROUTING jump: {added.stderr.strip()}")


def remove(netns: str | None, family: int = 4) -> None:
    tool = "iptables" if family == 4 else "ip6tables"
    while _run(netns, _jump(tool, "-D")).returncode == 0:
        pass
    _run(netns, [tool, "-w", "-t", "nat", "-F", CHAIN])
    _run(netns, [tool, "-w", "-t", "nat", "-X", CHAIN])
