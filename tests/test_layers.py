"""pinfold's layers, checked on the source (docs/design.md, "Architecture").

Every module's imports are read with `ast`, those inside functions and under
`TYPE_CHECKING` included, so that a new import across a seam fails here
instead of being found in review. A module may import its own unit and any
unit of a lower layer, nothing else; `ALLOWED` lists the few edges that the
layering itself wants (RAPID is a plug-in only the agent's daemon loads).
A module that no layer claims fails too: a new package must be placed.

The agent's state is its core's own (docs/agent.md, "Inside the agent"): no
module outside `AGENT_CORE` touches an attribute named in `AGENT_STATE` of an
object whose name says it is an agent (`agent`, `self.agent`, `rig.agent`,
`self._agent`, `host_agent`: a name `agent` or ending in `_agent`, as a variable
or as an attribute); they call `Agent`'s methods (`snapshot`, `find`, ...).
Read from the source with `ast`, like the imports; tests are not checked
(they may look inside what they test), nor objects named otherwise.
"""

from __future__ import annotations

import ast
from collections.abc import Callable
from pathlib import Path

import pytest

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
    # a cloud's VMs over openstacksdk: the model's vocabulary only, so that RAPID's back-end
    # and an agent driver can both sit on it (issue 14)
    ("clouds", {"openstack": ("pinfold.openstack",)}),
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

#: (guarded unit, importers kept from it, those among them allowed): a seam inside an edge the layers allow
KEPT_FROM: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    # RAPID's VMM talks to whatever runs VMs through `rapid.backend.Backend`, so that an OpenStack
    # back-end can sit behind the same VMM (issue 14): only the adapter over an Agent, the endpoint
    # that wires it and the settings the agent's configuration reads know the agent
    ("pinfold.agent", "pinfold.rapid",
     ("pinfold.rapid.agent_backend", "pinfold.rapid.endpoint", "pinfold.rapid.settings")),
)  # fmt: skip


#: the modules `Agent` is made of (pinfold.agent.service's docstring): the only ones that touch its state
AGENT_CORE: frozenset[str] = frozenset(
    f"pinfold.agent.{part}"
    for part in ("core", "pins", "making", "warm", "lifecycle", "migration", "startup", "service")
)
#: an agent's state: the core keeps these consistent under its lock, so nobody else touches them
AGENT_STATE: frozenset[str] = frozenset({"vms", "allocator", "lock", "driver", "store", "disks"})


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
    for guarded, kept, allowed in KEPT_FROM:
        if (
            _within(target, guarded)
            and _within(importer, kept)
            and not any(_within(importer, a) for a in allowed)
        ):
            return f"in {kept} only {', '.join(allowed)} may import {guarded}"
    if any(_within(importer, a) and _within(target, b) for a, b in ALLOWED):
        return None
    source, goal = place(importer), place(target)
    if source is None or goal is None or source[1] == goal[1] or goal[0] < source[0]:
        return None
    if goal[0] == source[0]:
        return f"{source[1]} and {goal[1]} are side by side in layer {LAYERS[goal[0]][0]}"
    return f"{LAYERS[source[0]][0]} is below {LAYERS[goal[0]][0]}"


def _names_an_agent(node: ast.expr) -> bool:
    """`agent`, `x.agent`, `self._agent`, `served_agent`: an expression named as an agent."""
    name = node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else None
    return name is not None and (name == "agent" or name.endswith("_agent"))


def agent_reaches(src: Path) -> list[str]:
    """Every touch of an agent's state outside the agent's core, as readable lines."""
    problems = []
    for name, path in modules(src).items():
        if name in AGENT_CORE:
            continue
        tree = ast.parse(path.read_text(), str(path))
        for node in sorted(ast.walk(tree), key=lambda node: getattr(node, "lineno", 0)):
            if isinstance(node, ast.Attribute) and node.attr in AGENT_STATE and _names_an_agent(node.value):
                problems.append(
                    f"{name}:{node.lineno} reaches into the agent ({ast.unparse(node)}): call its methods"
                )
    return problems


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
            "pinfold/rapid/vmm.py": "",
            "pinfold/rapid/endpoint.py": "from pinfold.agent import domain\n",
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


@pytest.mark.parametrize(
    ("module", "appended", "check", "found"),
    [
        pytest.param(
            "controller/api.py", "\n\ndef _late() -> None:\n    import pinfold.agent.service  # noqa\n",
            violations, "imports pinfold.agent.service: controller and agent are side by side", id="import",
        ),
        pytest.param(
            "agent/api.py", "\n\ndef _late(agent: Agent) -> int:\n    return len(agent.vms)\n",
            agent_reaches, "reaches into the agent (agent.vms): call its methods", id="agent-state",
        ),
    ],
)  # fmt: skip
def test_the_real_tree_fails_with_an_injected_edge(
    tmp_path: Path, module: str, appended: str, check: Callable[[Path], list[str]], found: str
) -> None:
    """The real sources, copied, with one wrong line added (an import of the agent
    in the controller, a read of the agent's VMs in its API): caught, and only it."""
    for path in modules(SRC).values():
        copy = tmp_path / path.relative_to(SRC)
        copy.parent.mkdir(parents=True, exist_ok=True)
        copy.write_text(path.read_text())
    with (tmp_path / "pinfold" / module).open("a") as file:
        file.write(appended)
    problems = check(tmp_path)
    assert len(problems) == 1, problems
    assert problems[0].startswith("pinfold." + module.removesuffix(".py").replace("/", ".") + ":")
    assert found in problems[0]


def test_no_module_reaches_into_the_agent() -> None:
    assert agent_reaches(SRC) == []


def test_a_reach_into_the_agent_is_caught(tmp_path: Path) -> None:
    """Each way of naming an agent is caught outside the core; the core itself,
    the agent's methods and other objects' attributes of the same names are not."""
    src = _tree(
        tmp_path,
        {
            "pinfold/agent/api.py": (
                "def f(agent, self, rig, config):\n"
                "    agent.snapshot()\n"
                "    return (agent.vms, self.agent.lock, rig.agent.store, self._agent.driver,\n"
                "            host_agent.allocator, config.store, self.vms, agent.settings)\n"
            ),
            "pinfold/rapid/vmm.py": "def g(self):\n    self.agent.disks = None\n",
            "pinfold/agent/warm.py": "def h(self, agent):\n    return self.vms, agent.lock\n",
        },
    )
    assert [problem.split(" reaches")[0] + " " + problem.split("(")[1].split(")")[0]
            for problem in agent_reaches(src)] == [
        "pinfold.agent.api:3 agent.vms",
        "pinfold.agent.api:3 self.agent.lock",
        "pinfold.agent.api:3 rig.agent.store",
        "pinfold.agent.api:3 self._agent.driver",
        "pinfold.agent.api:4 host_agent.allocator",
        "pinfold.rapid.vmm:2 self.agent.disks",
    ]  # fmt: skip


def test_rapid_reaches_the_agent_only_through_its_backend_adapter(tmp_path: Path) -> None:
    """RAPID's VMM talks to whatever runs VMs through `rapid.backend.Backend`:
    an import of the agent from the VMM is caught, the adapter's and the
    endpoint's are not."""
    src = _tree(
        tmp_path,
        {
            "pinfold/agent/service.py": "",
            "pinfold/agent/monitor.py": "",
            "pinfold/rapid/vmm.py": "from pinfold.agent.service import AgentError\n",
            "pinfold/rapid/handlers.py": "def f():\n    import pinfold.agent.monitor\n",
            "pinfold/rapid/agent_backend.py": "from pinfold.agent.service import Agent\n",
            "pinfold/rapid/endpoint.py": "from pinfold.agent import monitor, service\n",
        },
    )
    rule = "in pinfold.rapid only pinfold.rapid.agent_backend, pinfold.rapid.endpoint, pinfold.rapid.settings"
    assert sorted(violations(src)) == [
        f"pinfold.rapid.handlers:2 imports pinfold.agent.monitor: {rule} may import pinfold.agent",
        f"pinfold.rapid.vmm:1 imports pinfold.agent.service: {rule} may import pinfold.agent",
    ]


def test_the_openstack_component_imports_only_the_model(tmp_path: Path) -> None:
    """pinfold.openstack sits just above the model: an import of the agent, of
    RAPID or of the shells' common code from it is caught; RAPID's back-end
    over it is not."""
    src = _tree(
        tmp_path,
        {
            "pinfold/model/errors.py": "",
            "pinfold/web.py": "",
            "pinfold/agent/service.py": "",
            "pinfold/rapid/backend.py": "",
            "pinfold/openstack/errors.py": "from pinfold.model.errors import ErrorCode\n",
            "pinfold/openstack/cloud.py": "from pinfold.agent.service import A\nfrom pinfold import web\n",
            "pinfold/openstack/flavors.py": "def f():\n    from pinfold.rapid import backend\n",
            "pinfold/rapid/openstack_backend.py": "from pinfold.openstack.errors import x\n",
        },
    )
    assert sorted(violations(src)) == [
        "pinfold.openstack.cloud:1 imports pinfold.agent.service: clouds is below shells",
        "pinfold.openstack.cloud:2 imports pinfold.web: clouds is below shell-common",
        "pinfold.openstack.flavors:2 imports pinfold.rapid.backend: only pinfold.rapid, "
        "pinfold.agent.daemon, pinfold.cli may import pinfold.rapid",
    ]
