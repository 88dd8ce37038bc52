"""pinfold's layers, checked on the source (docs/design.md, "Architecture").

Every module's imports are read with `ast`, those inside functions and under
`TYPE_CHECKING` included, so that a new import across a seam fails here
instead of being found in review. A module may import its own unit and any
unit of a lower layer, nothing else; `ALLOWED` lists the few edges that the
layering itself wants (RAPID is a plug-in only the agent's daemon loads).
A module that no layer claims fails too: a new package must be placed.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pinfold

SRC = Path(pinfold.__file__).parent.parent

#: bottom to top; each layer holds one or more units (a unit may import itself freely,
#: but not another unit of its layer). "shell-common" is the code both shells share:
#: HTTP plumbing and bodies, tokens, TLS, private files, settings sources and SlackVM's REST surface.
LAYERS: tuple[tuple[str, dict[str, tuple[str, ...]]], ...] = (
    ("root", {"pinfold": ("pinfold",)}),
    ("topology", {"topology": ("pinfold.topology",)}),
    ("placement", {"placement": ("pinfold.placement",)}),
    ("model", {"model": ("pinfold.model",)}),
    ("shell-common", {"shell-common": ("pinfold.web", "pinfold.tokens", "pinfold.serving", "pinfold.tls",
                                        "pinfold.private", "pinfold.settings", "pinfold.slackvm",
                                        "pinfold.bodies")}),
    ("shells", {"agent": ("pinfold.agent",), "controller": ("pinfold.controller",), "sim": ("pinfold.sim",)}),
    ("plug-ins", {"rapid": ("pinfold.rapid",)}),
    ("cli", {"cli": ("pinfold.cli",)}),
    ("entry", {"main": ("pinfold.__main__",)}),
)  # fmt: skip

#: (importer prefix, imported prefix): edges allowed against the order, each for a reason
ALLOWED: frozenset[tuple[str, str]] = frozenset({
    # the agent's daemon loads the RAPID plug-in when the agent's configuration names one
    ("pinfold.agent.daemon", "pinfold.rapid"),
})  # fmt: skip

#: units nobody but the listed importers may use, whatever their layer
ONLY_IMPORTED_BY: dict[str, tuple[str, ...]] = {
    "pinfold.rapid": ("pinfold.rapid", "pinfold.agent.daemon", "pinfold.cli"),
    "pinfold.cli": ("pinfold.cli", "pinfold.__main__"),
}


def _within(module: str, prefix: str) -> bool:
    return module == prefix or (prefix != "pinfold" and module.startswith(prefix + "."))


def place(module: str) -> tuple[int, str] | None:
    """The (layer index, unit) a module belongs to, or None if no layer claims it."""
    for index, (_, units) in enumerate(LAYERS):
        for unit, prefixes in units.items():
            if any(_within(module, prefix) for prefix in prefixes):
                return index, unit
    return None


def modules(src: Path) -> dict[str, Path]:
    """Every module of the `pinfold` package under `src`, by dotted name."""
    found = {}
    for path in sorted((src / "pinfold").rglob("*.py")):
        parts = path.relative_to(src).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def imports(name: str, path: Path, known: set[str]) -> list[tuple[str, int]]:
    """The pinfold modules `name` imports, with their lines: `from a import b`
    counts as `a.b` when that is a module, and relative imports are resolved."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.append((sub if sub in known else base, node.lineno))
    return [(target, line) for target, line in found if target == "pinfold" or target.startswith("pinfold.")]


def violations(src: Path) -> list[str]:
    """Every import of the tree under `src` that breaks the layers, as readable lines."""
    found = modules(src)
    problems = [f"{name}: in no layer (add it to LAYERS)" for name in found if place(name) is None]
    for name, path in found.items():
        for target, line in imports(name, path, set(found)):
            problem = _edge_problem(name, target)
            if problem:
                problems.append(f"{name}:{line} imports {target}: {problem}")
    return problems


def _edge_problem(importer: str, target: str) -> str | None:
    for guarded, importers in ONLY_IMPORTED_BY.items():
        if _within(target, guarded) and not any(_within(importer, allowed) for allowed in importers):
            return f"only {', '.join(importers)} may import {guarded}"
    if any(_within(importer, a) and _within(target, b) for a, b in ALLOWED):
        return None
    source, goal = place(importer), place(target)
    if source is None or goal is None or source[1] == goal[1] or goal[0] < source[0]:
        return None
    if goal[0] == source[0]:
        return f"{source[1]} and {goal[1]} are side by side in layer {LAYERS[goal[0]][0]}"
    return f"{LAYERS[source[0]][0]} is below {LAYERS[goal[0]][0]}"


def test_every_import_follows_the_layers() -> None:
    assert violations(SRC) == []


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in {"pinfold/__init__.py": "", **files}.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        (path.parent / "__init__.py").touch()
        path.write_text(text)
    return tmp_path


def test_a_wrong_import_is_caught(tmp_path: Path) -> None:
    """The checker on a small tree with one wrong import of each kind: each is named."""
    src = _tree(
        tmp_path,
        {
            "pinfold/model/vm.py": "",
            "pinfold/agent/domain.py": "from pinfold.model.vm import x\n",
            "pinfold/agent/service.py": "def f():\n    from pinfold.rapid import vmm\n",
            "pinfold/rapid/vmm.py": "from pinfold.agent import domain\n",
            "pinfold/controller/api.py": "from pinfold.agent.domain import NAME_PATTERN\n",
            "pinfold/placement/core.py": "import pinfold.model.vm\n",
            "pinfold/slackvm.py": "from .cli import main\n",
            "pinfold/cli/__init__.py": "from pinfold.controller import api\n",
            "pinfold/newthing.py": "",
        },
    )
    assert sorted(violations(src)) == [
        "pinfold.agent.service:2 imports pinfold.rapid.vmm: only pinfold.rapid, pinfold.agent.daemon, "
        "pinfold.cli may import pinfold.rapid",
        "pinfold.controller.api:1 imports pinfold.agent.domain: controller and agent are side by side "
        "in layer shells",
        "pinfold.newthing: in no layer (add it to LAYERS)",
        "pinfold.placement.core:1 imports pinfold.model.vm: placement is below model",
        "pinfold.slackvm:1 imports pinfold.cli: only pinfold.cli, pinfold.__main__ may import pinfold.cli",
    ]


def test_the_real_tree_fails_with_an_injected_edge(tmp_path: Path) -> None:
    """The real sources, copied, with one wrong import added to the controller: caught."""
    for path in modules(SRC).values():
        copy = tmp_path / path.relative_to(SRC)
        copy.parent.mkdir(parents=True, exist_ok=True)
        copy.write_text(path.read_text())
    with (tmp_path / "pinfold" / "controller" / "api.py").open("a") as api:
        api.write("\n\ndef _late() -> None:\n    import pinfold.agent.service  # noqa\n")
    problems = violations(tmp_path)
    assert len(problems) == 1, problems
    assert problems[0].startswith("pinfold.controller.api:")
    assert "imports pinfold.agent.service: controller and agent are side by side" in problems[0]
