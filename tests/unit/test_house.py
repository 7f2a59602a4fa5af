"""The house's size rules, held: no module over 800 lines and no function over
120 lines in extproc/ and scripts/ (generated code aside), so that a newcomer
can read any one of them whole. Split by job, not by line count.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MAX_MODULE_LINES = 800
MAX_FUNCTION_LINES = 120
# protoc output (scripts/gen_protos.py): not ours to shape.
GENERATED = {p.relative_to(ROOT).as_posix() for p in (ROOT / "extproc" / "api").glob("*_pb2*.py")}


def _sources() -> list[Path]:
    paths = [*(ROOT / "extproc").rglob("*.py"), *(ROOT / "scripts").glob("*.py")]
    return sorted(p for p in paths if p.relative_to(ROOT).as_posix() not in GENERATED)


def _functions(tree: ast.AST, prefix: str = "") -> list[tuple[str, int]]:
    """(qualified name, lines) of every function, methods and nested ones included."""
    found: list[tuple[str, int]] = []
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            name = prefix + node.name
            found.append((name, (node.end_lineno or node.lineno) - node.lineno + 1))
            found.extend(_functions(node, name + "."))
        elif isinstance(node, ast.ClassDef):
            found.extend(_functions(node, prefix + node.name + "."))
        else:
            found.extend(_functions(node, prefix))
    return found


def _offenders() -> dict[str, int]:
    """Every module over MAX_MODULE_LINES and every function over
    MAX_FUNCTION_LINES, with its size in lines."""
    over: dict[str, int] = {}
    for path in _sources():
        name = path.relative_to(ROOT).as_posix()
        text = path.read_text()
        lines = len(text.splitlines())
        if lines > MAX_MODULE_LINES:
            over[name] = lines
        for function, size in _functions(ast.parse(text, name)):
            if size > MAX_FUNCTION_LINES:
                over[f"{name}::{function}"] = size
    return over


def test_no_module_over_800_lines_and_no_function_over_120() -> None:
    over = _offenders()
    assert over == {}, "split these by job (lines): " + ", ".join(
        f"{name} {size}" for name, size in sorted(over.items())
    )


def test_the_size_rule_sees_a_long_method_and_a_long_module() -> None:
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    tree = ast.parse(f"class C:\n    def f(self):\n    {body.replace(chr(10), chr(10) + '    ')}\n")
    assert _functions(tree) == [("C.f", MAX_FUNCTION_LINES + 1)]
    assert _sources(), "no sources found: the rule would hold vacuously"
