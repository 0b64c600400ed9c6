"""Architecture rules: code outside ``engine/`` uses only public names of engine modules, and the
packages engine -> indexers -> services import in one direction (engine reaches indexers only
through ``engine/components.py``)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUTSIDE = ["services", "indexers", "bench", "tests"]


def _py_files(*dirs: str) -> list[Path]:
    return sorted(p for d in dirs for p in (ROOT / d).rglob("*.py"))


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _imports(tree: ast.AST) -> list[tuple[str, list[str], ast.AST]]:
    """(module, imported names, node) for every import, at any depth (function-level included)."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, [], node) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.module, [a.name for a in node.names], node))
    return out


def test_no_private_engine_names_outside_engine():
    bad = []
    for path in _py_files(*OUTSIDE):
        tree = ast.parse(path.read_text(), str(path))
        rel = path.relative_to(ROOT)
        for module, names, node in _imports(tree):
            if module == "engine" or module.startswith("engine."):
                if any(_private(part) for part in module.split(".")):
                    bad.append(f"{rel}:{node.lineno}: import of private module {module}")
                bad += [f"{rel}:{node.lineno}: from {module} import {n}" for n in names if _private(n)]
        for node in ast.walk(tree):
            # eng._foo, engine.engine._x, obj.components._llm: outside engine/ a private attribute
            # is only touched on the object's own class (self / cls). Stricter than "engine
            # objects only", and simple: no guessing which variable holds an Engine.
            if isinstance(node, ast.Attribute) and _private(node.attr):
                if not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
                    bad.append(f"{rel}:{node.lineno}: {ast.unparse(node)}")
    assert not bad, "private engine names used outside engine/:\n" + "\n".join(bad)


def test_package_imports_flow_one_way():
    """engine never imports services; indexers never imports services; engine imports indexers
    only in components.py (lazily); services may import both."""
    bad = []
    for path in _py_files("engine", "indexers"):
        rel = path.relative_to(ROOT)
        pkg = rel.parts[0]
        for module, _, node in _imports(ast.parse(path.read_text(), str(path))):
            top = module.split(".")[0]
            if top == "services":
                bad.append(f"{rel}:{node.lineno}: imports {module}")
            if pkg == "engine" and top == "indexers" and rel.as_posix() != "engine/components.py":
                bad.append(f"{rel}:{node.lineno}: imports {module} (only engine/components.py may)")
    assert not bad, "\n".join(bad)


def test_components_imports_indexers_lazily():
    tree = ast.parse((ROOT / "engine" / "components.py").read_text())
    top_level = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert not [n for n in top_level if isinstance(n, ast.ImportFrom) and (n.module or "").startswith("indexers")]


def test_engine_modules_stay_small():
    big = {p.relative_to(ROOT).as_posix(): n for p in _py_files("engine") if (n := len(p.read_text().splitlines())) > 330}
    # offline evaluation is being split into split/metrics/baselines modules separately
    big.pop("engine/offline/evaluate.py", None)
    assert not big, big
