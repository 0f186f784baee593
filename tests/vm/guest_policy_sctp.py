"""Network policy over real SCTP — runs ONLY inside the VM (tests/vm/run_in_vm.py).

This machine's kernel has no SCTP, so tests/netns/test_policy.py drops the conformance
table's SCTP probes there; Debian's stock kernel in the VM has the sctp module. This file
runs, with that module's own machinery (a real etcd and agent, nine pods added through
the CNI plugin, the agent's nftables table, a prober in every pod serving and dialling
real SCTP associations), every conformance case that carries an SCTP probe, each probe
checked against the case's full expected matrix. No SCTP in the guest is a failure,
never a skip.
"""

from __future__ import annotations

import os
import re
import subprocess

import pytest

# The host's real-traffic test's cluster, unchanged: the guest runs the very same
# machinery, only on a kernel that has SCTP.
from tests.support import netpol
from tests.support.policy_cluster import has_sctp, install, matrix, policy_cluster

pytestmark = pytest.mark.vm

PORTS = (80, 81)  # what every pod's prober serves (tests/support/netpol_pod.py)
SCTP_CASES = [c for c in netpol.CASES if any(p.protocol == "SCTP" for p in c.probes)]


@pytest.fixture(scope="module", autouse=True)
def _sctp_in_vm():
    """Before the cluster starts (its probers serve SCTP only if the kernel has it)."""
    if not os.environ.get("ROUTED_IN_VM"):
        pytest.fail("guest-only test: run it through tests/vm/run_in_vm.py (it needs the VM's sctp "
                    "module; this machine's kernel has none)", pytrace=False)
    if os.geteuid() != 0:
        pytest.fail("the guest tests need root", pytrace=False)
    load = subprocess.run(["modprobe", "sctp"], capture_output=True, text=True)
    if load.returncode != 0 or not has_sctp():
        pytest.fail(f"no SCTP in the guest kernel {os.uname().release}: modprobe sctp exit "
                    f"{load.returncode} {load.stderr.strip()}", pytrace=False)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, _sctp_in_vm):
    with policy_cluster(tmp_path_factory.mktemp("policy")) as c:
        yield c


def _sctp_counters(pod) -> dict[str, int]:
    """The pod's netns SCTP MIB (/proc/net/sctp/snmp), e.g. SctpPassiveEstabs."""
    text = pod.netns.run("cat", "/proc/net/sctp/snmp").stdout
    return {k: int(v) for k, v in re.findall(r"^(\w+)\s+(\d+)$", text, re.M)}


def test_the_table_has_sctp_cases():
    names = {c.name for c in SCTP_CASES}
    assert {"SCTP is not TCP", "ports [SCTP]"} <= names, names
    probes = [p for c in SCTP_CASES for p in c.probes if p.protocol == "SCTP"]
    pairs = len(probes) * len(netpol.ALL) * (len(netpol.ALL) - 1)
    print(f"SCTP: {len(SCTP_CASES)} cases, {len(probes)} SCTP probe matrices, {pairs} SCTP pairs")


def test_without_policy_every_pod_reaches_every_other_over_sctp(cluster):
    install(cluster, netpol.Case("none", [], []))
    server = cluster.pods["x/a"]
    before = _sctp_counters(server)
    for port in PORTS:
        assert matrix(cluster, netpol.Probe(port, "SCTP", netpol.Reachability(True))) == []
    # The answers came over SCTP associations that x/a's kernel accepted: one per peer and port.
    accepted = _sctp_counters(server)["SctpPassiveEstabs"] - before["SctpPassiveEstabs"]
    assert accepted >= (len(netpol.ALL) - 1) * len(PORTS), (before, _sctp_counters(server))


@pytest.mark.parametrize("case", SCTP_CASES, ids=[c.name for c in SCTP_CASES])
def test_conformance_case_with_sctp(cluster, case):
    install(cluster, case)
    wrong = [line for probe in case.probes for line in matrix(cluster, probe)]
    assert not wrong, wrong
