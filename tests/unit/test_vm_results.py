"""The VM lane's reading of the guest pytest's output (tests/vm/run_in_vm.py): each guest
file's outcomes, so the host can say which file failed."""

from tests.vm.run_in_vm import DEFAULT_PATHS, parse_results

OUTPUT = """\
guest: kernel 6.1.0-56-amd64, up 8.1 s
tests/vm/guest_ipip.py .                                                 [ 10%]
tests/vm/guest_policy_sctp.py ..F.E                                      [100%]
=========================== short test summary info ============================
PASSED tests/vm/guest_ipip.py::test_pods_on_two_nodes_talk_through_ipip
PASSED tests/vm/guest_policy_sctp.py::test_the_table_has_sctp_cases
PASSED tests/vm/guest_policy_sctp.py::test_conformance_case_with_sctp[SCTP is not TCP]
FAILED tests/vm/guest_policy_sctp.py::test_conformance_case_with_sctp[ports [SCTP]] - AssertionError: ['x/b->x/a']
ERROR tests/vm/guest_policy_sctp.py::test_x - RuntimeError: agent not ready
SKIPPED [1] tests/vm/guest_wireguard.py:12: no wireguard
ERROR tests/vm/guest_broken.py - ImportError: no module
========= 3 passed, 1 failed, 1 skipped, 2 errors in 61.20s (0:01:01) ==========
ROUTED-GUEST-EXIT=1
"""


def test_each_file_gets_its_own_outcomes():
    results = parse_results(OUTPUT)
    assert results["tests/vm/guest_ipip.py"] == {"passed": ["::test_pods_on_two_nodes_talk_through_ipip"]}
    sctp = results["tests/vm/guest_policy_sctp.py"]
    assert len(sctp["passed"]) == 2
    assert sctp["failed"] == ["::test_conformance_case_with_sctp[ports [SCTP]] - AssertionError: ['x/b->x/a']"]
    assert sctp["error"] == ["::test_x - RuntimeError: agent not ready"]
    assert results["tests/vm/guest_wireguard.py"] == {"skipped": [":12: no wireguard"]}
    assert results["tests/vm/guest_broken.py"] == {"error": ["- ImportError: no module"]}


def test_progress_lines_and_a_silent_run_give_nothing():
    assert parse_results("tests/vm/guest_ipip.py .   [100%]\nno tests ran in 0.01s\n") == {}


def test_guest_files_exist_and_are_not_collected_on_the_host():
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    for f in DEFAULT_PATHS:
        assert (repo / f).is_file(), f
        assert not Path(f).name.startswith("test_"), f"{f}: the host's pytest would collect it"
