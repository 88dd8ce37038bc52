"""The placement core stays pure: no I/O, clock, randomness or outer packages.

Checked on the source, so that a new import cannot slip in unnoticed.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import pinfold.placement

PLACEMENT = Path(pinfold.placement.__file__).parent
CORE_FILES = [*sorted(PLACEMENT.glob("*.py")), PLACEMENT.parent / "topology" / "model.py",
              PLACEMENT.parent / "topology" / "cpulist.py"]  # fmt: skip
FORBIDDEN_MODULES = {
    "os", "io", "sys", "time", "datetime", "random", "socket", "subprocess", "pathlib",
    "threading", "asyncio", "logging", "shutil", "tempfile", "sqlite3", "json", "pickle",
}  # fmt: skip
OUTER_PACKAGES = ("pinfold.agent", "pinfold.controller", "pinfold.sim", "pinfold.rapid", "pinfold.cli")
FORBIDDEN_CALLS = {"open", "print", "input"}
PURE_MODULES = {"__future__", "collections", "dataclasses", "enum", "functools", "heapq", "math", "numbers",
                "typing", "numpy", "pinfold"}  # fmt: skip


def module_level_imports(tree: ast.Module) -> list[str]:
    names = []
    for node in tree.body:
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module)
    return names


@pytest.mark.parametrize("path", CORE_FILES, ids=lambda p: p.name)
def test_core_module_imports_nothing_impure(path):
    tree = ast.parse(path.read_text())
    for name in module_level_imports(tree):
        root = name.split(".")[0]
        assert root not in FORBIDDEN_MODULES, f"{path.name} imports {name}"
        assert not name.startswith(OUTER_PACKAGES), f"{path.name} imports {name}"
        assert root in PURE_MODULES, f"{path.name} imports {name}"
    calls = {n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
    assert not calls & FORBIDDEN_CALLS, f"{path.name} calls {calls & FORBIDDEN_CALLS}"


def test_placement_modules_keep_no_mutable_globals():
    for path in sorted(PLACEMENT.glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in tree.body:
            if isinstance(node, ast.Global):
                pytest.fail(f"{path.name} declares a global")
            for inner in ast.walk(node):
                assert not isinstance(inner, ast.Global), f"{path.name} rebinds a global"
