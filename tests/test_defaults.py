"""Defaults are named once (`pinfold.model.defaults`, and the placement
core's own in `pinfold.placement`): no settings field, dataclass field,
function parameter or CLI option spells one of them as a literal, so that a
change of a default cannot miss one of its copies."""

from __future__ import annotations

import ast
from pathlib import Path

import pinfold
from pinfold.agent.config import AgentConfig
from pinfold.agent.service import AgentSettings
from pinfold.controller.config import ControllerConfig
from pinfold.model import defaults
from pinfold.sim.replay import Scenario

SRC = Path(pinfold.__file__).parent
#: the settings whose defaults `pinfold.model.defaults` names, wherever they are declared
NAMED = {
    "critical_size", "policy", "default_policy", "segregated_policy", "reserved_memory_mib",
    "heartbeat_period_s", "monitor_period_s", "shutdown_timeout_s", "stale_after_s", "agent_timeout_s",
    "action_timeout_s", "agent_action_timeout_s", "port", "agent_port", "controller_port",
    "migration_timeout_s", "coalesce_at_most",
    "database_pool_size", "pool_size",
}  # fmt: skip


def _declared_defaults(tree: ast.Module) -> list[tuple[str, ast.expr]]:
    """(name, default) of every annotated field and every function parameter."""
    found: list[tuple[str, ast.expr]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
            found.append((node.target.id, node.value))
        elif isinstance(node, ast.arguments):
            positional = [*node.posonlyargs, *node.args]
            with_defaults = positional[len(positional) - len(node.defaults) :]
            found += [(a.arg, d) for a, d in zip(with_defaults, node.defaults, strict=True)]
            found += [
                (a.arg, d) for a, d in zip(node.kwonlyargs, node.kw_defaults, strict=True) if d is not None
            ]
    return found


def _literal(value: ast.expr) -> ast.Constant | None:
    """The literal a default is, looking into `Field(default=...)` and `typer.Option(...)`."""
    if isinstance(value, ast.Call):
        keywords = {k.arg: k.value for k in value.keywords}
        if "default" in keywords:
            value = keywords["default"]
        elif isinstance(value.func, ast.Attribute) and value.func.attr == "Option" and value.args:
            value = value.args[0]
    if isinstance(value, ast.Constant) and value.value is not None:
        return value
    return None


def literal_defaults(src: Path) -> list[str]:
    found = []
    for path in sorted(src.rglob("*.py")):
        for name, value in _declared_defaults(ast.parse(path.read_text())):
            literal = _literal(value)
            if name in NAMED and literal is not None:
                found.append(f"{path.relative_to(src)}:{literal.lineno} {name} = {literal.value!r}")
    return found


def test_no_default_is_spelled_twice() -> None:
    assert literal_defaults(SRC) == []


def test_the_check_finds_a_literal_default(tmp_path: Path) -> None:
    (tmp_path / "m.py").write_text(
        "def f(critical_size: int = 6, name: str = 'x') -> None: ...\n"
        "class C:\n    policy: str = Field(default='progress', min_length=1)\n"
        "def g(port: int = typer.Option(8100, help='h')) -> None: ...\n"
    )
    assert literal_defaults(tmp_path) == [
        "m.py:1 critical_size = 6",
        "m.py:3 policy = 'progress'",
        "m.py:4 port = 8100",
    ]


def test_the_named_defaults_are_the_ones_in_force() -> None:
    agent, controller = AgentConfig(), ControllerConfig()
    assert agent.critical_size == AgentSettings().critical_size == Scenario().critical_size == 6
    assert agent.reserved_memory_mib == AgentSettings().reserved_memory_mib == 0
    assert controller.policy == Scenario().policy == defaults.DEFAULT_POLICY == "progress"
    assert agent.monitor_period_s == controller.heartbeat_period_s == defaults.HEARTBEAT_PERIOD_S
    assert agent.shutdown_timeout_s < controller.agent_action_timeout_s == defaults.ACTION_TIMEOUT_S
    assert (agent.port, controller.port) == (defaults.AGENT_PORT, defaults.CONTROLLER_PORT)
    # a source agent cancels a send before the controller stops waiting for its answer
    limit = agent.migration_timeout_s
    assert limit == AgentSettings().migration_timeout_s == defaults.MIGRATION_LIMIT_S
    assert limit <= defaults.MAX_MIGRATION_LIMIT_S < defaults.MIGRATION_TIMEOUT_S
