"""The package's structure: no import cycle inside ``align`` or ``rewards`` (lazy imports inside
functions count too), the library never imports the command-line package ``launch``, the reward API
imports nothing of ``align``, nothing outside ``tests`` imports from it, and the rooms stay small."""

from __future__ import annotations

import ast
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(package: str = "align") -> dict[str, set[str]]:
    """Module -> the modules of ``package`` it imports (anywhere in the file), by static reading."""
    modules = {_module_name(p): p for p in (ROOT / package).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                # ``from align.x import y``: y may be a submodule (align.x.y) or a name in align.x
                found = [
                    f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                    for a in node.names
                ]
            else:
                continue
            targets.update(found)
        graph[name] = {t for t in targets if t.split(".")[0] in (package, "launch") and t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


@pytest.mark.parametrize("package", ["align", "rewards"])
def test_no_import_cycle_inside(package):
    graph = import_graph(package)
    # a package importing its own submodules (``align.losses`` re-exporting) is not a cycle unless a
    # submodule imports the package back; keep those edges, they are real imports
    assert cycles(graph) == []


def test_align_never_imports_launch():
    offenders = {m: sorted(t for t in ts if t.split(".")[0] == "launch") for m, ts in import_graph().items()}
    assert {m: ts for m, ts in offenders.items() if ts} == {}


def test_the_checker_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def _imports(path: Path) -> set[str]:
    """Top-level module names a file imports (anywhere in it, lazy imports included)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def test_rewards_import_nothing_of_align():
    """The reward API stands alone: what it needs of a run's config or models comes in as arguments."""
    offenders = {
        str(p.relative_to(ROOT)): sorted(m for m in _imports(p) if m.split(".")[0] in ("align", "launch"))
        for p in (ROOT / "rewards").rglob("*.py")
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_nothing_outside_tests_imports_tests():
    tracked = subprocess.run(
        ["git", "ls-files", "*.py"], capture_output=True, text=True, cwd=ROOT
    ).stdout.split()
    files = [ROOT / f for f in tracked if not f.startswith("tests/")] or [
        p for p in ROOT.rglob("*.py") if "tests" not in p.relative_to(ROOT).parts and ".venv" not in p.parts
    ]
    offenders = {
        str(p.relative_to(ROOT)): sorted(m for m in _imports(p) if m.split(".")[0] == "tests")
        for p in files
        if p.exists()
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_rooms_hold_one_thing():
    """No module of the library over 600 lines and no class over 400: a sign that each room holds one
    thing (what outgrows it is split by what it holds), not a limit to game."""
    big_modules, big_classes = {}, {}
    for p in (ROOT / "align").rglob("*.py"):
        text = p.read_text()
        name = str(p.relative_to(ROOT))
        if text.count("\n") > 600:
            big_modules[name] = text.count("\n")
        for node in ast.walk(ast.parse(text, name)):
            if isinstance(node, ast.ClassDef) and node.end_lineno - node.lineno + 1 > 400:
                big_classes[f"{name}:{node.name}"] = node.end_lineno - node.lineno + 1
    assert big_modules == {} and big_classes == {}
