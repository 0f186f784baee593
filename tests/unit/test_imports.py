"""The import graph of routed/, ipam/, cni/ and bgp/, read with ast (nothing is imported).

Imports flow one way (DESIGN: resources and datastore at the bottom, agent and cli on
top), so the graph has no cycle, imports inside functions included: a lazy import only
hides a cycle until the day someone moves it. The programs (`routed agent`, `routed
controller`, `routed lab`, `routedctl`, and the commands in cni/ and bgp/) share code
through libraries (routed.runtime, routed.render, ...), never through each other:
no module imports another program's CLI module, and no program package reaches into
another's.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("routed", "ipam", "cni", "bgp")
# The packages that are one program each; their modules are theirs alone.
PROGRAMS = ("routed.agent", "routed.controller", "routed.lab", "routed.cli")


def modules(root: Path = REPO) -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (root / package).rglob("*.py"):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _targets(module: str, path: Path, node: ast.Import | ast.ImportFrom, known: dict) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:  # relative: from the module's package, one level up per extra dot
        package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
        package = package[:len(package) - (node.level - 1)]
        base = ".".join(package + ([base] if base else []))
    # `from pkg import name` imports pkg.name when that is a module, else a name of pkg
    return [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]


def import_graph(root: Path = REPO) -> dict[str, set[str]]:
    """module -> the modules of ours it imports anywhere in its file."""
    known = modules(root)
    graph = {}
    for module, path in known.items():
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            for target in _targets(module, path, node, known):
                while target not in known and "." in target:  # a name inside a module
                    target = target.rsplit(".", 1)[0]
                if target in known and target != module:
                    edges.add(target)
        graph[module] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def is_cli(module: str) -> bool:
    """A program's command-line module: `<package>.cli`, `<package>.main`, or routedctl's."""
    return module.rsplit(".", 1)[-1] in ("cli", "main") or module.startswith("routed.cli.")


def program_of(module: str) -> str | None:
    return next((p for p in PROGRAMS if module == p or module.startswith(p + ".")), None)


def cli_violations(graph: dict[str, set[str]]) -> list[str]:
    """Imports of a CLI module from outside its own package."""
    bad = []
    for module, targets in sorted(graph.items()):
        for target in sorted(targets):
            home = target.rsplit(".", 1)[0] if not target.startswith("routed.cli.") else "routed.cli"
            if is_cli(target) and not module.startswith(home + "."):
                bad.append(f"{module} imports {target}")
    return bad


def borrowing(graph: dict[str, set[str]]) -> list[str]:
    """Imports of one program package's modules from anywhere outside it."""
    return [f"{module} imports {target}" for module, targets in sorted(graph.items()) for target in sorted(targets)
            if program_of(target) and program_of(target) != program_of(module)]


def test_the_graph_sees_the_code():
    graph = import_graph()
    assert len(graph) > 50 and "routed.agent.agent" in graph
    assert "ipam.allocator" in graph["routed.agent.agent"]  # absolute
    assert "routed.agent.bgp" in graph["routed.agent.agent"]  # relative
    assert "routed.agent.agent" in graph["routed.agent.cli"]  # inside a function


def test_the_checks_catch_what_they_look_for():
    graph = {"a.x": {"a.y"}, "a.y": {"a.z"}, "a.z": {"a.x"}, "routed.lab.pods": {"routed.agent.node"},
             "bgp.speaker": {"routed.agent.cli"}, "routed.cli.main": {"routed.cli.ipam"}, "routed.agent.node": set(),
             "routed.agent.cli": set(), "routed.cli.ipam": set()}
    assert cycles(graph) == [["a.x", "a.y", "a.z"]]
    assert cli_violations(graph) == ["bgp.speaker imports routed.agent.cli"]
    assert borrowing(graph) == ["bgp.speaker imports routed.agent.cli", "routed.lab.pods imports routed.agent.node"]


def test_no_import_cycles():
    assert cycles(import_graph()) == []


def test_no_program_imports_another_programs_cli():
    assert cli_violations(import_graph()) == []


def test_no_program_borrows_from_another_program():
    assert borrowing(import_graph()) == []
