"""Host side of the IPIP tests: boot a VM with Debian's stock kernel (this machine's
kernel has no ipip) and run tests/vm/guest_ipip.py inside it.

A VM that cannot start is a failure, never a skip (run_in_vm raises VMError).
Takes ≈ 30 s on an idle machine (up to ≈ 60 s on a busy one): qemu runs without KVM.
"""

from __future__ import annotations

import pytest

from tests.vm.run_in_vm import VMError, parse_summary, run_in_vm

GUEST_TESTS = ["tests/vm/guest_ipip.py"]


@pytest.mark.slow
def test_ipip_in_vm():
    try:
        rc, output = run_in_vm(GUEST_TESTS, echo=False)
    except VMError as err:
        pytest.fail(f"cannot run the IPIP tests in a VM: {err}", pytrace=False)
    counts = parse_summary(output)
    detail = f"guest pytest exit {rc}, summary {counts}\n--- guest output ---\n{output}"
    assert rc == 0, detail
    assert counts.get("passed", 0) >= 1, "the guest ran no test\n" + detail
    for bad in ("failed", "errors", "skipped", "xfailed", "xpassed"):
        assert counts.get(bad, 0) == 0, detail
