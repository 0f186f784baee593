"""The page `routed lab status --html` writes, opened in real headless Chromium: drawn
(not blank), every node, ToR, session and pod pair in the DOM the browser built, and the
reachability matrix's four answers in the colours and places the data says. No lab here
(tests/e2e/test_lab_html.py draws a real one)."""

from __future__ import annotations

from routed.lab import picture
from tests.support.browser import expected_cells, is_blank, matrix_cells, missing_from_dom
from tests.support.labstatus import sample_status


def test_page_in_chromium_shows_the_lab_and_the_matrix_in_place(browser, tmp_path):
    data = sample_status()
    page = tmp_path / "lab.html"
    page.write_text(picture.page(data))
    image = browser.screenshot(page, tmp_path / "lab.png")
    assert not is_blank(image)
    cells = matrix_cells(image, len(data["reachability"]["pods"]))
    assert cells == expected_cells(data["reachability"])
    assert {c for row in cells for c in row} == {"self", "ok", "no", "policy", "untested"}
    assert missing_from_dom(browser.dom(page), data) == []


def test_a_blank_page_is_seen_as_blank(browser, tmp_path):
    """The checks above can fail: an empty page is blank and has no matrix."""
    page = tmp_path / "empty.html"
    page.write_text("<!DOCTYPE html><html><body></body></html>")
    image = browser.screenshot(page, tmp_path / "empty.png", width=400, height=300)
    assert is_blank(image)
    assert missing_from_dom(browser.dom(page), sample_status())
