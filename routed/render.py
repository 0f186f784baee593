"""The one place command results become text, for `routedctl` and `routed lab` alike.

Commands return an Output (data, and how to show it); render() formats it. With -o json
or yaml only the data is printed."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import yaml

FORMATS = ("table", "wide", "yaml", "json")


@dataclass
class Table:
    headers: list[str]
    rows: list[list]
    # Extra columns shown with -o wide, appended to each row in order.
    wide_headers: list[str] = field(default_factory=list)
    wide_rows: list[list] = field(default_factory=list)


@dataclass
class Section:
    """A titled part of a longer report (`routed lab status`): a table, or preformatted
    text such as an annotated route table. A table without rows shows "(none)"."""

    title: str
    table: Table | None = None
    text: str = ""


@dataclass
class Output:
    """What a command returns: structured data, how to show it (a table, sections), notes
    (printed first), and the exit code."""

    data: object = None
    table: Table | None = None
    sections: list[Section] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)
    # The format when the user names none (-o): "table" unless the data is the point.
    default_format: str = "table"
    # Non-zero when the command ran but found something wrong (ipam check); errors are 1.
    exit_code: int = 0


def render(out: Output, fmt: str = "table") -> tuple[str, str]:
    """(stdout text, stderr text). With -o json|yaml stdout holds only the document,
    so it can be piped into `routedctl apply -f -`; the notes go to stderr."""
    if fmt in ("json", "yaml") and out.data is not None:
        return _document(out.data, fmt), "\n".join(out.messages)
    return "\n".join(p for p in [*out.messages, _body(out, fmt)] if p), ""


def _document(data, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(data, indent=2)
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False).rstrip()


def _body(out: Output, fmt: str) -> str:
    if out.sections:
        return "\n\n".join(_section(s, fmt) for s in out.sections)
    if out.table is not None:
        return format_table(out.table, wide=(fmt == "wide"))
    return "" if out.data is None else json.dumps(out.data, indent=2)


def _section(section: Section, fmt: str) -> str:
    if section.table is not None:
        body = format_table(section.table, wide=(fmt == "wide")) if section.table.rows else "  (none)"
    else:
        body = section.text
    return "\n".join(p for p in (section.title, body) if p)


def format_table(table: Table, wide: bool = False) -> str:
    headers = list(table.headers)
    rows = [list(r) for r in table.rows]
    if wide and table.wide_headers:
        headers += table.wide_headers
        rows = [r + list(w) for r, w in zip(rows, table.wide_rows)]
    cells = [headers] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["   ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    return "\n".join(lines)
