"""Host side of the VM tests: boot ONE VM with Debian's stock kernel (this machine's
kernel has no ipip and no wireguard module) and run every guest file inside it
(tests/vm/guest_ipip.py, tests/vm/guest_wireguard.py): one boot, as CI time matters.

A VM that cannot start is a failure, never a skip (run_in_vm raises VMError).
Takes ≈ 40 s on an idle machine (up to ≈ 60 s on a busy one): qemu runs without KVM.
"""

from __future__ import annotations

import pytest

from tests.vm.run_in_vm import DEFAULT_PATHS, VMError, parse_summary, run_in_vm

GUEST_TESTS = DEFAULT_PATHS


@pytest.mark.slow
def test_ipip_and_wireguard_in_vm():
    try:
        rc, output = run_in_vm(GUEST_TESTS, echo=False)
    except VMError as err:
        pytest.fail(f"cannot run the guest tests in a VM: {err}", pytrace=False)
    counts = parse_summary(output)
    detail = f"guest pytest exit {rc}, summary {counts}\n--- guest output ---\n{output}"
    assert rc == 0, detail
    assert counts.get("passed", 0) >= len(GUEST_TESTS), "the guest ran too few tests\n" + detail
    for bad in ("failed", "errors", "skipped", "xfailed", "xpassed"):
        assert counts.get(bad, 0) == 0, detail
