"""Host side of the VM lane: boot ONE VM with Debian's stock kernel (this machine's
kernel has no ipip, wireguard or sctp) and run every guest file of run_in_vm.DEFAULT_PATHS
inside it; then one test per guest file says how that file did.

A VM that cannot start is a failure, never a skip (run_in_vm raises VMError), and so is a
guest file that ran no test or skipped one. Takes ≈ 30 s plus the guest tests on an idle
machine, minutes on a busy one: qemu runs without KVM.
"""

from __future__ import annotations

import pytest

from tests.vm.run_in_vm import DEFAULT_PATHS, VMError, parse_results, parse_summary, run_in_vm


@pytest.fixture(scope="module")
def guest_run():
    """The one VM run for all guest files: (exit code, output, what each file did)."""
    try:
        rc, output = run_in_vm(DEFAULT_PATHS, echo=False)
    except VMError as err:
        pytest.fail(f"cannot run the guest tests in a VM: {err}", pytrace=False)
    results = parse_results(output)
    table = "\n".join(f"  {f}: " + (", ".join(f"{len(v)} {k}" for k, v in results.get(f, {}).items())
                                    or "nothing ran") for f in DEFAULT_PATHS)
    print(f"guest pytest exit {rc}, per file:\n{table}")
    return rc, output, results, table


def _detail(guest_run) -> str:
    rc, output, _, table = guest_run
    return (f"guest pytest exit {rc}, summary {parse_summary(output)}; per file:\n{table}\n"
            f"--- guest output ---\n{output}")


@pytest.mark.slow
@pytest.mark.parametrize("guest_file", DEFAULT_PATHS)
def test_guest_file_in_vm(guest_run, guest_file):
    mine = guest_run[2].get(guest_file, {})
    assert mine.get("passed"), f"{guest_file} ran no test\n" + _detail(guest_run)
    bad = {k: v for k, v in mine.items() if k != "passed"}
    assert not bad, f"{guest_file}: {bad}\n" + _detail(guest_run)


@pytest.mark.slow
def test_the_guest_run_exits_0(guest_run):
    """Every file can pass while the run failed (e.g. an error outside them)."""
    assert guest_run[0] == 0, _detail(guest_run)
