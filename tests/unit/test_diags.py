"""routedctl node diags: a collector that fails is recorded and never stops the others."""

from __future__ import annotations

import tarfile

from routed.cli.diags import Collector, run_collectors, write_archive
from routed.errors import RoutedError


def test_a_failing_collector_becomes_an_error_file_and_the_rest_still_run(tmp_path):
    def refused() -> bytes:
        raise RoutedError("cannot ask the routed agent at http://127.0.0.1:9099: refused")

    def bug() -> bytes:
        raise KeyError("state")

    files, outcomes = run_collectors([Collector("a.txt", lambda: b"first"), Collector("agent/peers.json", refused),
                                      Collector("b.txt", bug), Collector("c.txt", lambda: b"last")])
    assert files == {"a.txt": b"first", "agent/peers.json.error":
                     b"cannot ask the routed agent at http://127.0.0.1:9099: refused\n",
                     "b.txt.error": b"KeyError: 'state'\n", "c.txt": b"last"}
    assert [(o.path, o.ok) for o in outcomes] == [("a.txt", True), ("agent/peers.json", False), ("b.txt", False),
                                                  ("c.txt", True)]

    archive = tmp_path / "d.tar.gz"
    write_archive(str(archive), "top", files)
    with tarfile.open(archive) as tar:
        assert sorted(tar.getnames()) == ["top/a.txt", "top/agent/peers.json.error", "top/b.txt.error", "top/c.txt"]
    assert list(tmp_path.iterdir()) == [archive]  # no temporary left behind
