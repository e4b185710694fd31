"""Small modules with one job, functions that fit on a screen: no module of the package over
400 lines and no function over 80 (benchmarks are outside the package and not counted)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "culture_rl"
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 80


def long_modules(root: Path = PACKAGE, limit: int = MAX_MODULE_LINES) -> list[str]:
    return [f"{path.relative_to(root.parent)}: {n} lines" for path in sorted(root.rglob("*.py"))
            if (n := len(path.read_text("utf-8").splitlines())) > limit]


def long_functions(root: Path = PACKAGE, limit: int = MAX_FUNCTION_LINES) -> list[str]:
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text("utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > limit:
                    found.append(f"{path.relative_to(root.parent)}:{node.lineno} {node.name}: "
                                 f"{length} lines")
    return found


def test_no_module_over_400_lines():
    assert long_modules() == []


def test_no_function_over_80_lines():
    assert long_functions() == []


def test_the_checks_find_a_long_module_and_a_long_function(tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    body = "\n".join(f"    x{i} = {i}" for i in range(6))
    (package / "m.py").write_text(f"def f():\n{body}\n", "utf-8")
    assert long_modules(package, limit=5) == ["pkg/m.py: 7 lines"]
    assert long_functions(package, limit=6) == ["pkg/m.py:1 f: 7 lines"]
    assert long_functions(package, limit=7) == []
