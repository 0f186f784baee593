"""`routed lab status --html`: the page drawn from status data (no lab, no root), and its
atomic write. The page in a real browser: tests/integration/test_lab_picture_browser.py."""

from __future__ import annotations

import argparse
import os
from html.parser import HTMLParser

import pytest

from routed.errors import RoutedError
from routed.lab import picture
from routed.lab.cli import show_status, write_atomically
from tests.support.labstatus import sample_status


class Page(HTMLParser):
    """The page's elements as (tag, attributes), checking every opened tag is closed in order."""

    VOID = {"meta", "br", "rect", "line", "path"}  # rect/line/path: SVG, closed by `/>` or their own end tag

    def __init__(self, text: str):
        super().__init__()
        self.elements: list[tuple[str, dict]] = []
        self.stack: list[str] = []
        self.text = []
        self.feed(text)
        self.close()
        assert not self.stack, f"unclosed: {self.stack}"

    def handle_starttag(self, tag, attrs):
        self.elements.append((tag, dict(attrs)))
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.elements.append((tag, dict(attrs)))

    def handle_endtag(self, tag):
        if tag in self.VOID and (not self.stack or self.stack[-1] != tag):
            return
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes {self.stack[-1:]}"
        self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)

    def having(self, attr: str) -> dict[str, dict]:
        return {a[attr]: a for _, a in self.elements if attr in a}


def test_every_rack_tor_node_session_and_pair_is_drawn():
    data = sample_status()
    page = Page(picture.page(data))
    assert set(page.having("data-node")) == {"node1", "node2", "node3"}
    assert set(page.having("data-router")) == {"rack1-tor", "rack2-tor"}
    assert set(page.having("data-rack")) == {"1", "2"}
    # One line per session, from both ends' views: node1-node2 is down because node1 says so.
    lines = page.having("data-session")
    assert {k: v["data-state"] for k, v in lines.items()} == {
        "node1~node2": "down", "node1~node3": "up", "node2~node3": "up", "node1~rack1-tor": "up",
        "node2~rack1-tor": "up", "node3~rack2-tor": "up", "rack1-tor~rack2-tor": "up"}
    assert "mesh" in lines["node1~node3"]["class"] and "mesh" not in lines["node1~rack1-tor"]["class"]
    assert "node1 - node2: down (mesh): node1 says active" in page.text  # the line's tooltip
    # Each end's view in the table, with its peer kind.
    rows = [a for t, a in page.elements if t == "tr" and "data-speaker" in a]
    assert len(rows) == len(data["sessions"])
    assert {(r["data-speaker"], r["data-peer-name"], r["data-kind"], r["data-state"]) for r in rows} >= {
        ("node1", "node2", "mesh", "active"), ("node3", "rack2-tor", "node", "up"),
        ("rack1-tor", "rack2-tor", "ebgp-tor", "up")}


def test_matrix_cells_say_reachable_unreachable_blocked_untested_apart():
    data = sample_status()
    cells = {(a["data-from"], a["data-to"]): a for t, a in Page(picture.page(data)).elements if "data-reach" in a}
    labels = data["reachability"]["pods"]
    assert len(cells) == len(labels) ** 2
    assert cells[("node1/p1", "node1/p1")]["data-reach"] == "self"
    assert cells[("node1/p1", "node2/p1")]["data-reach"] == "policy"
    assert cells[("node1/p1", "node3/p1")]["data-reach"] == "no"
    assert cells[("node3/p1", "node2/p1")]["data-reach"] == "untested"
    assert cells[("node2/p1", "node1/p1")]["data-reach"] == "ok"
    assert {c["class"] for c in cells.values()} == {f"cell {s}" for s in ("self", "ok", "no", "policy", "untested")}
    assert len({picture.COLOURS[s] for s in ("self", "ok", "no", "policy", "untested", "frame")}) == 6


def test_the_page_fetches_nothing():
    text = picture.page(sample_status())
    for reference in ("src=", "href=", "url(", "@import", "<link", "<script", "<img", "<iframe", "<object"):
        assert reference not in text, reference
    # No attribute names a location (the etcd endpoint is text on the page, not a reference).
    assert not [a for _, attrs in Page(text).elements for a in attrs.values() if a and "://" in a]


def test_names_from_the_lab_are_escaped():
    data = sample_status()
    data["pods"][0]["name"] = "<script>alert(1)</script>"
    data["pods"][0]["namespace"] = 'a"b'
    data["sessions"][0]["info"] = "<b>notification</b> & co"
    text = picture.page(data)
    assert "<script>" not in text and "<b>" not in text and 'a"b' not in text
    assert "&lt;script&gt;" in text and "&amp; co" in text
    Page(text)


def test_wireguard_peers_only_when_on():
    data = sample_status()
    assert "WireGuard" not in picture.page(data)
    data["wireguard"] = [{"node": "node1", "peer": "node2", "endpoint": "10.10.1.12:51820",
                          "state": "handshake 3s ago", "rx": 920, "tx": 1032},
                         {"node": "node3", "peer": "", "endpoint": "", "state": "agent not answering", "rx": 0, "tx": 0}]
    page = Page(picture.page(data))
    rows = page.having("data-wg-node")
    assert rows["node1"]["data-wg-peer"] == "node2" and rows["node3"]["data-state"] == "agent not answering"
    assert {"wireguard 1/1 peers up", "wg agent not answering"} <= set(page.text)  # in the nodes' boxes


def test_without_a_matrix_or_pods_or_answers():
    data = sample_status()
    del data["reachability"]
    assert "not measured" in picture.page(data)
    data["reachability"] = {"pods": ["node1/p1"], "matrix": {"node1/p1": {"node1/p1": None}}, "ok": 0, "failed": 0,
                            "blocked": 0, "untested": 0, "seconds": 0.0}
    assert "fewer than two pods" in picture.page(data)
    # An agent that does not answer: its node is drawn (sick), no line for it.
    data["nodes"][2]["agent"] = "dead"
    data["sessions"] = [s for s in data["sessions"] if s["speaker"] != "node3"] + [
        {"speaker": "node3", "peer": "", "name": "", "type": "", "state": "agent not answering", "since": "",
         "info": "", "accepted": 0}]
    data["nodes"][2]["why"] = "connection refused"
    data["pods"] += [{"node": "node1", "name": f"x{i}", "namespace": "default", "ip": f"10.244.98.{i}",
                      "netns": f"rl-spod-node1-x{i}", "present": True} for i in range(10)]
    page = Page(picture.page(data))
    assert "connection refused" in page.text and "+5 more pods" in page.text
    assert "sick" in [a for t, a in page.elements if t == "rect" and a.get("class", "").startswith("node")][2]["class"]
    assert "node3~rack2-tor" in page.having("data-session")  # the ToR's view still draws it


def test_write_atomically_replaces_whole_or_not_at_all(tmp_path, monkeypatch):
    target = tmp_path / "lab.html"
    write_atomically(str(target), "old")
    assert target.read_text() == "old" and oct(target.stat().st_mode & 0o777) == "0o644"

    def fail(*_):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(RoutedError, match=r"^--html .*lab.html: No space left on device$"):
        write_atomically(str(target), "new")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lab.html"]  # no temporary file left
    monkeypatch.undo()
    with pytest.raises(RoutedError, match="No such file or directory"):
        write_atomically(str(tmp_path / "missing" / "lab.html"), "x")
    with pytest.raises(RoutedError, match="Is a directory"):
        write_atomically(str(tmp_path), "x")
    write_atomically(str(target), "new")
    assert target.read_text() == "new"


def test_status_refuses_a_page_it_cannot_write_before_measuring(tmp_path):
    args = argparse.Namespace(html=str(tmp_path / "missing" / "lab.html"), no_ping=False, timeout=15.0,
                              output="table")
    with pytest.raises(RoutedError, match=r"^--html .*lab.html: no directory '.*missing' to write it in$"):
        show_status(args)
