"""No import cycle in the package: the layers of docs/ARCHITECTURE.md form a
graph that goes one way.

Every import of ours counts, wherever it is written: at the top, inside a
function, or under TYPE_CHECKING (a cycle the type checker sees is a cycle a
reader has to untangle, and one runtime import away from an ImportError).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def import_graph(package: Path) -> dict[str, set[str]]:
    """Module -> the modules of `package` it imports. `from P import name`
    counts as importing P.name when that is a module, else P."""
    root = package.parent
    paths = {}
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        paths[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph: dict[str, set[str]] = {}
    for module, path in paths.items():
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                edges.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the module's own package upwards
                    own = module.split(".")
                    if path.name != "__init__.py":
                        own = own[:-1]
                    above = own[: len(own) - node.level + 1]
                    base = ".".join([*above, base] if base else above)
                for alias in node.names:
                    name = f"{base}.{alias.name}"
                    edges.add(name if name in paths else base)
        graph[module] = {m for m in edges if m in paths and m != module}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph as a path (its first module repeated last), or None."""
    done: set[str] = set()
    for start in sorted(graph):
        if start in done:
            continue
        path = [start]
        todo = [sorted(graph[start])]
        while todo:
            if not todo[-1]:
                todo.pop()
                done.add(path.pop())
                continue
            nxt = todo[-1].pop(0)
            if nxt in path:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in done:
                path.append(nxt)
                todo.append(sorted(graph[nxt]))
    return None


def test_the_package_has_no_import_cycle() -> None:
    cycle = find_cycle(import_graph(ROOT / "extproc"))
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_a_cycle_through_function_and_type_checking_imports_is_detected(
    tmp_path: Path,
) -> None:
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("")
    (package / "a.py").write_text("def f():\n    from pkg.sub import b\n")
    (package / "sub" / "b.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..c import C\n"
    )
    (package / "c.py").write_text("import pkg.a\n")
    graph = import_graph(package)
    assert graph["pkg.sub.b"] == {"pkg.c"}
    assert find_cycle(graph) == ["pkg.a", "pkg.sub.b", "pkg.c", "pkg.a"]
    (package / "c.py").write_text("import os\n")
    assert find_cycle(import_graph(package)) is None
