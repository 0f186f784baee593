"""`routed lab status --html` of a real lab, seen in headless Chromium: 3 nodes in 2 racks,
a pod on each, a NetworkPolicy blocking one pair. The screenshot shows the matrix's
cells in the colours the measured reachability says (reachable, blocked by policy) and
the DOM names every node, ToR and BGP session; the JSON and the page come from one run."""

from __future__ import annotations

import json

import pytest

from tests.e2e.labutil import LabRun, up_retrying
from tests.support.browser import expected_cells, is_blank, matrix_cells, missing_from_dom
from tests.support.wait import eventually

pytestmark = [pytest.mark.root, pytest.mark.etcd, pytest.mark.slow]


def test_lab_drawn_and_seen_in_chromium(lab: LabRun, browser, tmp_path):
    up_retrying(lab, "--nodes", "3", "--racks", "2")
    lab.add_shop((("node1", "web", "web"), ("node3", "cli", "cli"), ("node2", "other", "other")))
    page = tmp_path / "lab.html"
    last = {}

    def drawn():
        """status -o json --html: the document and the page from the same measurement."""
        proc = lab.run("status", "-o", "json", "--timeout", "30", "--html", str(page))
        last["data"] = data = json.loads(proc.stdout)
        assert f"the lab drawn in {page}" in proc.stderr
        reach = data["reachability"]
        settled = reach["matrix"]["node2/other"]["node1/web"] == "policy" and reach["failed"] == 0 \
            and reach["untested"] == 0 and all(s["state"] == "up" for s in data["sessions"])
        return data if settled else None

    data = eventually(drawn, timeout=90, what="the policy enforced and every pair answered",
                      details=lambda: json.dumps({k: last["data"][k] for k in ("reachability", "sessions")}, indent=1))
    assert data["reachability"]["blocked"] == 1 and data["reachability"]["ok"] == 5
    image = browser.screenshot(page, tmp_path / "lab.png")
    assert not is_blank(image)
    labels = data["reachability"]["pods"]
    assert labels == ["node1/web", "node2/other", "node3/cli"]
    cells = matrix_cells(image, len(labels))
    assert cells == expected_cells(data["reachability"])
    assert cells[1][0] == "policy" and cells[2][0] == "ok" and cells[0][0] == "self"
    assert missing_from_dom(browser.dom(page), data) == []
    assert len(data["sessions"]) == 3 * 3 + 3 + 2  # each end: nodes' mesh + ToR, ToRs' nodes + each other
