"""The one renderer (routed.render) and the one command runner (routed.runtime.command),
as `routedctl` and `routed lab` use them (pure: no etcd, no lab)."""

from __future__ import annotations

import io
import json

from routed.errors import RoutedError
from routed.lab.cli import route_sections, status_sections
from routed.render import Output, Section, Table, render
from routed.runtime import command

STATUS = {
    "lab": {"dir": "/tmp/lab", "etcd": "http://127.0.0.1:23790",
            "options": {"nodes": 1, "racks": 1, "encap": "crosssubnet", "tor": "bird"}},
    "nodes": [{"name": "node1", "rack": "1", "address": "10.10.1.11/24", "netns": "rl-node1", "agent": "running",
               "speaker": "running", "healthPort": 9100}],
    "routers": [], "sessions": [], "blocks": [], "pods": [],
    "reachability": {"pods": [], "ok": 0, "failed": 0, "untested": 0, "matrix": {}, "seconds": 0},
}


def test_sections_render_titles_tables_and_none():
    text, notes = render(Output(data=STATUS, sections=status_sections(STATUS)))
    assert notes == ""
    parts = text.split("\n\n")
    assert parts[0].startswith("routed lab at /tmp/lab: 1 node(s)")
    assert parts[1].splitlines()[0] == "NODES" and "rl-node1" in parts[1] and "127.0.0.1:9100" in parts[1]
    assert parts[2] == "TOP-OF-RACK ROUTERS\n  (none)"
    assert parts[3] == "BGP SESSIONS (0/0 up)\n  (none)"
    assert parts[-1].startswith("REACHABILITY\n  (fewer than two pods")


def test_json_prints_the_data_alone():
    text, _ = render(Output(data=STATUS, sections=status_sections(STATUS)), "json")
    assert json.loads(text) == STATUS


def test_route_sections_name_an_unknown_node():
    try:
        route_sections({"nodes": [{"name": "node1"}]}, ["node9"])
    except RoutedError as err:
        assert "node9" in str(err) and "node1" in str(err)
    else:
        raise AssertionError("an unknown node was accepted")


def _run(fn, **kw):
    out, err = io.StringIO(), io.StringIO()
    return command.run("prog", fn, stdout=out, stderr=err, **kw), out.getvalue(), err.getvalue()


def test_command_runner_prints_output_and_returns_its_status():
    out = Output(messages=["note"], sections=[Section("T", Table(["A"], [[1]]))], exit_code=3)
    assert _run(lambda: out) == (3, "note\nT\nA\n1\n", "")
    assert _run(lambda: 0) == (0, "", "") and _run(lambda: None) == (0, "", "")


def test_command_runner_turns_errors_into_one_line():
    def bad():
        raise RoutedError("no such thing")

    def bug():
        raise KeyError("x")

    assert _run(bad) == (1, "", "prog: no such thing\n")
    code, _, err = _run(bug)
    assert code == 1 and err == "prog: internal error: KeyError: 'x' (rerun with --debug)\n"
    code, _, err = _run(bug, debug=True)
    assert code == 1 and "Traceback" in err
