"""`routed lab status --html`: the lab drawn as one self-contained page.

A pure view of the data routed.lab.status.collect() returns: racks with their ToR and
nodes, every BGP session as a line (green up, red not; solid to a ToR, dashed between
nodes), the reachability matrix (reachable, unreachable, blocked by a policy, not tried:
four colours), the WireGuard peers and the tables behind the drawing. Inline SVG and CSS
only, nothing fetched: the page opens the same on a machine without a network.

Every drawn thing carries data-* attributes (node, session, cell state), so a test (or a
script) can read the page's DOM as well as its pixels.
"""

from __future__ import annotations

from html import escape

# One colour per meaning; the matrix's frame colour is used nowhere else, so a screenshot's
# matrix can be found by it (tests/support/screenshot.py).
COLOURS = {"ok": "#1a9850", "no": "#d73027", "policy": "#f29e1f", "untested": "#9e9e9e", "self": "#ffffff",
           "frame": "#1c2b4a", "up": "#1a9850", "down": "#d73027"}
CELL = 22  # matrix cell side, px
GAP = 2  # frame visible between cells, px
CHAR, SMALL_CHAR = 7.3, 6.7  # px per character of 12px / 11px DejaVu Sans Mono: layout without measuring text
NODE_W, LINE_H, POD_LINES = 170, 15, 6
REACH_WORDS = {"ok": "reachable", "no": "unreachable", "policy": "blocked by policy", "untested": "not tried"}


def page(data: dict) -> str:
    lab = data["lab"]
    o = lab["options"]
    title = f"routed lab at {lab['dir']}"
    summary = (f"{len(data['nodes'])} node(s) in {len(racks(data))} rack(s), encap {o.get('encap', '?')}"
               f"{' + WireGuard' if o.get('wireguard') else ''}, ToRs {o.get('tor', '?')}, etcd {lab['etcd']}"
               f"{', created ' + lab['created'] if lab.get('created') else ''}")
    parts = [f"<h1>{escape(title)}</h1>", f'<p class="summary">{escape(summary)}</p>',
             _section("topology", f"Racks and BGP sessions ({_up_count(data['sessions'])})", topology(data)),
             _section("reachability", *matrix(data.get("reachability")))]
    if "wireguard" in data:
        parts.append(_section("wireguard", "WireGuard peers", _table(
            ["node", "peer", "endpoint", "state", "rx bytes", "tx bytes"],
            [([w["node"], w["peer"] or "-", w["endpoint"] or "-", w["state"], w["rx"], w["tx"]],
              {"wg-node": w["node"], "wg-peer": w["peer"], "state": w["state"]}) for w in data["wireguard"]])))
    parts.append(_section("sessions", "BGP sessions, each end's view", _table(
        ["speaker", "peer", "name", "kind", "state", "accepted", "info"],
        [([s["speaker"], s["peer"], s["name"], s["type"], s["state"],
           "" if s["accepted"] is None else s["accepted"], s["info"]],
          {"speaker": s["speaker"], "peer-name": s["name"], "kind": s["type"], "state": s["state"]},
          "up" if s["state"] == "up" else "down") for s in data["sessions"]])))
    parts.append(_section("pods", "Pods", _table(
        ["node", "pod", "namespace", "ip", "netns"],
        [([p["node"], p["name"], p["namespace"], p["ip"] or "-", p["netns"] if p["present"] else "(missing)"],
          {"pod": f"{p['node']}/{p['name']}"}) for p in data["pods"]])))
    parts.append(_section("blocks", "IPAM blocks", _table(
        ["cidr", "node", "in use", "free"],
        [([b["cidr"], b["node"] or "(none)", b["inUse"], b["free"]], {"block": b["cidr"]}) for b in data["blocks"]])))
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
            f"<style>{STYLE}</style></head>\n<body>\n" + "\n".join(parts) + "\n</body></html>\n")


STYLE = f"""
body {{ font: 13px 'DejaVu Sans', sans-serif; margin: 16px; color: #222; background: #fff; }}
h1 {{ font-size: 18px; margin: 0 0 4px; }} h2 {{ font-size: 15px; margin: 18px 0 6px; }}
.summary {{ margin: 0; color: #555; }}
svg text {{ font: 12px 'DejaVu Sans Mono', monospace; fill: #222; }}
svg .small {{ font-size: 11px; fill: #555; }}
.rack {{ fill: #f4f6fa; stroke: #c5cbd8; }} .tor {{ fill: #e3e9f6; stroke: #4a5d85; }}
.node {{ fill: #fff; stroke-width: 2; }} .node.healthy {{ stroke: {COLOURS['up']}; }}
.node.sick {{ stroke: {COLOURS['down']}; }}
.session {{ fill: none; stroke-width: 2; }} .session.up {{ stroke: {COLOURS['up']}; }}
.session.down {{ stroke: {COLOURS['down']}; }} .session.mesh {{ stroke-dasharray: 5 3; }}
.cell.ok {{ fill: {COLOURS['ok']}; }} .cell.no {{ fill: {COLOURS['no']}; }}
.cell.policy {{ fill: {COLOURS['policy']}; }} .cell.untested {{ fill: {COLOURS['untested']}; }}
.cell.self {{ fill: {COLOURS['self']}; }} .frame {{ fill: {COLOURS['frame']}; }}
.legend span {{ display: inline-block; margin-right: 14px; }}
.swatch {{ display: inline-block; width: 12px; height: 12px; vertical-align: -2px; margin-right: 4px;
          border: 1px solid #888; }}
table {{ border-collapse: collapse; }} td, th {{ padding: 2px 8px; border-bottom: 1px solid #e4e4e4;
          text-align: left; font-family: 'DejaVu Sans Mono', monospace; font-size: 12px; }}
tr.up td.state {{ color: {COLOURS['up']}; }} tr.down td.state {{ color: {COLOURS['down']}; font-weight: bold; }}
"""


def racks(data: dict) -> list[tuple[int, dict | None, list[dict]]]:
    """(rack number, its ToR or None, its nodes) in the order the lab lists nodes."""
    names = list(dict.fromkeys(n["rack"] for n in data["nodes"]))
    names += [r["rack"] for r in data["routers"] if r.get("rack") and r["rack"] not in names]
    tor = {r.get("rack"): r for r in data["routers"]}
    return [(name, tor.get(name), [n for n in data["nodes"] if n["rack"] == name]) for name in names]


def links(sessions: list[dict]) -> dict[frozenset, dict]:
    """One line per session between two named speakers, from both ends' views: up when
    every end that reports it says up; "mesh" when neither end is a ToR."""
    out: dict[frozenset, dict] = {}
    for s in sessions:
        if not s["name"]:  # an agent that does not answer has no sessions to draw
            continue
        link = out.setdefault(frozenset((s["speaker"], s["name"])), {"up": True, "kinds": set(), "views": []})
        link["up"] = link["up"] and s["state"] == "up"
        link["kinds"].add(s["type"])
        if s["state"] != "up":
            link["views"].append(f"{s['speaker']} says {s['state']} {s['info']}".rstrip())
    return out


def topology(data: dict) -> str:
    groups = racks(data)
    tunnels = wireguard_lines(data.get("wireguard"))
    pods_of: dict[str, list[dict]] = {}
    for p in data["pods"]:
        pods_of.setdefault(p["node"], []).append(p)
    tallest = max([min(len(pods_of.get(n["name"], [])), POD_LINES + 1) for n in data["nodes"]] + [0])
    head_lines = 4 + bool(tunnels)  # name, address, agent, exabgp[, WireGuard]; the pods below
    node_h = head_lines * LINE_H + 16 + tallest * LINE_H
    top, tor_y, node_y = 10, 60, 150
    rack_h = node_y - tor_y + node_h + 34  # from above the ToR's top to 8px below the nodes
    arcs = sum(not (pair & _tor_names(data)) for pair in links(data["sessions"]))
    mesh_room = 0.75 * (16 + 12 * arcs) + 16  # a cubic curve reaches 3/4 of its control points' depth
    width = 20 + sum(max(len(nodes), 1) * (NODE_W + 20) + 20 for _, _, nodes in groups)
    height = node_y + node_h + mesh_room
    where: dict[str, tuple[float, float, float]] = {}  # speaker -> (centre x, top y, bottom y)
    shapes, x = [], 20
    for name, tor, nodes in groups:
        w = max(len(nodes), 1) * (NODE_W + 20) + 20
        shapes.append(f'<g data-rack="{name}"><rect class="rack" x="{x}" y="{tor_y - 26}" width="{w - 20}" '
                      f'height="{rack_h}" rx="8"/><text x="{x + 8}" y="{tor_y - 10}">rack {name}</text></g>')
        if tor:
            tx = x + (w - 20) / 2
            shapes.append(_tor(tor, tx, tor_y))
            where[tor["name"]] = (tx, tor_y, tor_y + 52)
        for i, node in enumerate(nodes):
            nx = x + 10 + i * (NODE_W + 20)
            shapes.append(_node(node, pods_of.get(node["name"], []), tunnels.get(node["name"]), nx, node_y, node_h))
            where[node["name"]] = (nx + NODE_W / 2, node_y, node_y + node_h)
        x += w
    lines, dip = [], 0
    for pair, link in sorted(links(data["sessions"]).items(), key=lambda kv: sorted(kv[0])):
        if len(pair) != 2 or not pair <= where.keys():
            continue
        a, b = sorted(pair)
        tors = pair & _tor_names(data)
        mesh = not tors
        state = "up" if link["up"] else "down"
        attrs = f'class="session {state}{" mesh" if mesh else ""}" data-session="{escape(a)}~{escape(b)}" ' \
                f'data-state="{state}"'
        why = "; ".join(link["views"])
        tip = f"<title>{escape(a)} - {escape(b)}: {state} ({escape(', '.join(sorted(link['kinds'])))})" \
              f"{escape(': ' + why) if why else ''}</title>"
        (ax, at, ab), (bx, bt, bb) = where[a], where[b]
        if mesh:  # below the nodes, each arc a little deeper so they stay apart
            dip += 1
            depth = ab + 16 + 12 * dip
            lines.append(f'<path {attrs} d="M{ax},{ab} C{ax},{depth} {bx},{depth} {bx},{bb}">{tip}</path>')
        elif len(tors) == 2:  # ToR to ToR: above the racks
            lines.append(f'<path {attrs} d="M{ax},{at} C{ax},{top} {bx},{top} {bx},{bt}">{tip}</path>')
        else:
            (ux, uy), (lx, ly) = ((ax, ab), (bx, bt)) if at < bt else ((bx, bb), (ax, at))
            lines.append(f'<path {attrs} d="M{ux},{uy} L{lx},{ly}">{tip}</path>')
    return (f'<svg width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}">' + "".join(shapes) + "".join(lines) + "</svg>"
            '<p class="legend"><span><svg width="30" height="8"><line x1="0" y1="4" x2="30" y2="4" '
            f'stroke="{COLOURS["up"]}" stroke-width="2"/></svg> session up</span><span><svg width="30" height="8">'
            f'<line x1="0" y1="4" x2="30" y2="4" stroke="{COLOURS["down"]}" stroke-width="2"/></svg> not up</span>'
            "<span>straight: a node and its ToR (BGPPeer), dashed: node to node (mesh), "
            "arc above: ToR to ToR (the core); hover a line for its kinds</span></p>")


def wireguard_lines(rows: list[dict] | None) -> dict[str, str]:
    """node -> "wireguard 2/3 peers up" (handshakes), or why not, from the WireGuard rows."""
    out: dict[str, list[dict]] = {}
    for w in rows or []:
        out.setdefault(w["node"], []).append(w)
    lines = {}
    for node, peers in out.items():
        real = [p for p in peers if p["peer"]]
        shook = sum(p["state"].startswith("handshake") for p in real)
        lines[node] = f"wireguard {shook}/{len(real)} peers up" if real else f"wg {peers[0]['state']}"
    return lines


def _tor_names(data: dict) -> set[str]:
    return {r["name"] for r in data["routers"]}


def _tor(tor: dict, cx: float, y: float) -> str:
    name = tor["name"] + ("" if tor["running"] else " (NOT RUNNING)")
    small = [f"{tor['kind']} AS {tor['as']}", f"{tor['address']}, {tor['podRoutes']} pod routes"]
    w = max(len(name) * CHAR, *(len(t) * SMALL_CHAR for t in small)) + 16
    left = cx - w / 2
    return (f'<g data-router="{escape(tor["name"])}" data-running="{str(tor["running"]).lower()}">'
            f'<rect class="tor" x="{left}" y="{y}" width="{w}" height="52" rx="4"/>'
            f'<text x="{left + 8}" y="{y + 15}">{escape(name)}</text>'
            + "".join(f'<text class="small" x="{left + 8}" y="{y + 30 + 15 * i}">{escape(t)}</text>'
                      for i, t in enumerate(small)) + "</g>")


def _node(node: dict, pods: list[dict], tunnels: str | None, x: float, y: float, h: float) -> str:
    healthy = node["agent"] == "ready" and node["speaker"] == "running"
    lines = [(node["name"], "name"), (node["address"], "small"), (f"agent {node['agent']}", "small"),
             (f"exabgp {node['speaker']}", "small")] + ([(tunnels, "small")] if tunnels else [])
    head = len(lines)
    shown = pods if len(pods) <= POD_LINES + 1 else pods[:POD_LINES]  # "+1 more" would take the same line
    lines += [(f"{p['name']} {p['ip'] or '-'}", "small") for p in shown]
    if len(pods) > len(shown):
        lines.append((f"+{len(pods) - len(shown)} more pods", "small"))
    texts = "".join(f'<text class="{cls}" x="{x + 8}" '
                    f'y="{y + 16 + i * LINE_H + (6 if i >= head else 0)}">{escape(_fit(t))}</text>'
                    for i, (t, cls) in enumerate(lines))
    why = f"<title>{escape(node['why'])}</title>" if node.get("why") else ""
    return (f'<g data-node="{escape(node["name"])}" data-agent="{escape(node["agent"])}">{why}'
            f'<rect class="node {"healthy" if healthy else "sick"}" x="{x}" y="{y}" width="{NODE_W}" height="{h}" '
            f'rx="4"/>{texts}</g>')


def _fit(text: str) -> str:
    most = int((NODE_W - 12) / SMALL_CHAR)
    return text if len(text) <= most else text[:most - 1] + "…"


def _up_count(sessions: list[dict]) -> str:
    return f"{sum(s['state'] == 'up' for s in sessions)}/{len(sessions)} session ends up"


def reach_state(value) -> str:
    return {True: "ok", False: "no", None: "untested", "policy": "policy"}[value]


def matrix(reach: dict | None) -> tuple[str, str]:
    """(heading, body): rows are sources, columns destinations, numbered as the rows."""
    if reach is None:
        return "Reachability", "<p>not measured (--no-ping)</p>"
    labels = reach["pods"]
    if len(labels) < 2:
        return "Reachability", "<p>fewer than two pods: <code>routed lab pod add NODE NAME</code></p>"
    blocked = reach.get("blocked", 0)
    total = reach["ok"] + reach["failed"] + blocked + reach["untested"]
    untested = reach["untested"]
    heading = (f"Reachability: {reach['ok']}/{total} pod pairs answer ping"
               f"{f', {blocked} blocked by policy' if blocked else ''}, {reach['failed']} failing"
               f"{f', {untested} not tried' if untested else ''} ({reach['seconds']}s)")
    n = len(labels)
    left = int(max(len(f"{i} {label}") for i, label in enumerate(labels, 1)) * CHAR) + 12
    step = CELL + GAP
    side = n * step + GAP
    cells = []
    for r, src in enumerate(labels):
        for c, dst in enumerate(labels):
            state = "self" if r == c else reach_state(reach["matrix"][src][dst])
            word = "itself" if r == c else REACH_WORDS[state]
            cells.append(f'<rect class="cell {state}" x="{left + GAP + c * step}" y="{24 + GAP + r * step}" '
                         f'width="{CELL}" height="{CELL}" data-from="{escape(src)}" data-to="{escape(dst)}" '
                         f'data-reach="{state}"><title>{escape(src)} → {escape(dst)}: {word}</title></rect>')
    row_labels = "".join(f'<text x="0" y="{24 + GAP + r * step + 16}">{r + 1} {escape(label)}</text>'
                         for r, label in enumerate(labels))
    col_labels = "".join(f'<text x="{left + GAP + c * step + CELL / 2}" y="18" text-anchor="middle">{c + 1}</text>'
                         for c in range(n))
    svg = (f'<svg width="{left + side + 4}" height="{24 + side + 4}">'
           f'<text class="small" x="0" y="12">from \\ to</text>{col_labels}{row_labels}'
           f'<rect class="frame" x="{left}" y="24" width="{side}" height="{side}"/>' + "".join(cells) + "</svg>")
    legend = "".join(f'<span><i class="swatch" style="background:{COLOURS[k]}"></i>{w}</span>'
                     for k, w in REACH_WORDS.items())
    return heading, f'{svg}<p class="legend">{legend}</p>'


def _section(ident: str, heading: str, body: str) -> str:
    return f'<section id="{ident}"><h2>{escape(heading)}</h2>\n{body}</section>'


def _table(headers: list[str], rows: list[tuple]) -> str:
    """rows: (cells, data-* attributes[, row class])."""
    if not rows:
        return "<p>(none)</p>"
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cells, attrs = row[0], row[1]
        cls = f' class="{row[2]}"' if len(row) > 2 else ""
        data = "".join(f' data-{k}="{escape(str(v))}"' for k, v in attrs.items())
        tds = "".join(f'<td class="{escape(h.replace(" ", "-"))}">{escape(str(c))}</td>' for h, c in zip(headers, cells))
        body.append(f"<tr{cls}{data}>{tds}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
