"""Nothing in culture_rl deserialises with code execution (issue 10, "Security").

A checkpoint, a config or a data file can come from someone else (a shared NFS run folder, a
downloaded model). ``torch.load`` without ``weights_only=True``, ``pickle``/``dill``/``marshal``
loads, ``yaml.load``/``unsafe_load``/``full_load`` and the builtins ``eval``/``exec`` all run
code hidden in such a file. The scan parses the source (``ast``) rather than grepping it: a
regex cannot tell ``model.eval()`` from ``eval(``, and would trip over comments and docstrings
that *mention* these calls or miss a call split over lines.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCANNED = [REPO / "culture_rl", REPO / "ray_jobs"]
PICKLERS = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "marshal", "shelve",
            "joblib"}


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return "?"


def _weights_only(call: ast.Call) -> bool:
    return any(k.arg == "weights_only" and isinstance(k.value, ast.Constant)
               and k.value.value is True for k in call.keywords)


def _safe_loaders(tree: ast.AST) -> set[str]:
    """``yaml.SafeLoader`` and the classes of this module derived from it (config.py has one
    that also rejects duplicate keys): ``yaml.load(text, Loader=<one of them>)`` is safe."""
    safe = {"yaml.SafeLoader", "yaml.CSafeLoader", "SafeLoader", "CSafeLoader"}
    classes = [n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)]
    grew = True
    while grew:
        grew = False
        for cls in classes:
            if cls.name not in safe and any(_dotted(b) in safe for b in cls.bases):
                safe.add(cls.name)
                grew = True
    return safe


def _loader(call: ast.Call) -> str:
    given = [k.value for k in call.keywords if k.arg == "Loader"] + call.args[1:2]
    return _dotted(given[0]) if given else ""


def unsafe_calls(source: str, filename: str = "<source>") -> list[str]:
    """``file:line: what`` for every unsafe load in ``source``, in line order."""
    found = []
    tree = ast.parse(source, filename)
    safe_loaders = _safe_loaders(tree)
    for node in sorted((n for n in ast.walk(tree) if hasattr(n, "lineno")),
                       key=lambda n: (n.lineno, n.col_offset)):
        where = f"{filename}:{node.lineno}"
        if isinstance(node, ast.Import):
            found += [f"{where}: import {a.name}" for a in node.names
                      if a.name.split(".")[0] in PICKLERS]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in PICKLERS:
            found.append(f"{where}: from {node.module} import ...")
        elif isinstance(node, ast.Call):
            name = _dotted(node.func)
            if name == "torch.load" and not _weights_only(node):
                found.append(f"{where}: torch.load without weights_only=True")
            elif name in ("yaml.load", "yaml.load_all") and _loader(node) in safe_loaders:
                continue
            elif name in ("yaml.load", "yaml.unsafe_load", "yaml.full_load", "yaml.load_all",
                          "yaml.unsafe_load_all", "yaml.full_load_all"):
                found.append(f"{where}: {name} (use yaml.safe_load)")
            elif name in ("eval", "exec", "builtins.eval", "builtins.exec"):
                found.append(f"{where}: builtin {name}() (use ast.literal_eval)")
            elif name.split(".")[0] in PICKLERS and name.rsplit(".", 1)[-1] in (
                    "load", "loads", "Unpickler", "open"):
                found.append(f"{where}: {name}")
    return found


def test_the_scan_flags_each_unsafe_load_and_nothing_else():
    bad = ("import torch, yaml, pickle\n"
           "torch.load(path)\n"
           "torch.load(\n    path,\n    map_location='cpu', weights_only=False)\n"
           "yaml.load(text, Loader=yaml.Loader)\n"
           "class Mine(yaml.FullLoader): pass\n"
           "yaml.load(text, Loader=Mine)\n"
           "yaml.unsafe_load(text)\n"
           "pickle.loads(blob)\n"
           "eval('1 + 1')\n"
           "from dill import load\n")
    assert [f.split(": ", 1)[1] for f in unsafe_calls(bad)] == [
        "import pickle", "torch.load without weights_only=True",
        "torch.load without weights_only=True", "yaml.load (use yaml.safe_load)",
        "yaml.load (use yaml.safe_load)", "yaml.unsafe_load (use yaml.safe_load)", "pickle.loads",
        "builtin eval() (use ast.literal_eval)", "from dill import ..."]
    good = ('"""Never torch.load(path) or eval(text) here."""\n'
            "import ast, torch, yaml\n"
            "# torch.load(path) and pickle.load(f) would run code\n"
            "model.eval()\n"
            "torch.load(path, map_location='cpu', weights_only=True)\n"
            "yaml.safe_load(text)\n"
            "class Strict(yaml.SafeLoader): pass\n"
            "class Stricter(Strict): pass\n"
            "yaml.load(text, Loader=Stricter)\n"
            "yaml.load(text, yaml.CSafeLoader)\n"
            "ast.literal_eval(text)\n"
            "x = 'eval(1)'\n")
    assert unsafe_calls(good) == []


@pytest.mark.parametrize("root", SCANNED, ids=lambda p: p.name)
def test_no_unsafe_deserialisation_in_shipped_code(root):
    found = [f for path in sorted(root.rglob("*.py"))
             for f in unsafe_calls(path.read_text("utf-8"), str(path.relative_to(REPO)))]
    assert not found, "unsafe loading:\n" + "\n".join(found)
