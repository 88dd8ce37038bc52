"""The closed set of error codes: every code has a status and a message,
every code the sources raise is in it, an unknown code fails where it is
written, and both daemons answer JSON errors with `code`."""

from __future__ import annotations

import ast
import importlib
from collections.abc import Iterator
from http import HTTPStatus
from pathlib import Path

import httpx
import pytest

import pinfold
from pinfold.agent.disks import DiskError
from pinfold.agent.service import AgentError
from pinfold.controller.service import ControllerError, NoHostError
from pinfold.controller.store import HostAuthError
from pinfold.model.errors import ERRORS, ErrorCode, PinfoldError
from pinfold.placement import RefusalCode
from pinfold.web import ApiError
from tests.agent.test_api import AUTH, serving
from tests.controller.cluster import LocalCluster

SRC = Path(pinfold.__file__).parent
#: the exceptions whose first argument is an API error code
CODED = {"ApiError", "AgentError", "ControllerError", "DiskError", "HostAuthError", "PinfoldError"}


def test_every_code_has_an_error_status_and_a_one_line_message():
    assert set(ERRORS) == set(ErrorCode)
    for code in ErrorCode:
        assert 400 <= code.status < 600, code
        assert code.message, code
        assert "\n" not in code.message, code


def test_the_placement_cores_refusal_codes_are_error_codes():
    assert {code.value for code in RefusalCode} <= {code.value for code in ErrorCode}


def _literal_codes() -> Iterator[tuple[str, str]]:
    """(where, code) for every string literal handed as the code to a coded exception in src."""
    for path in sorted(SRC.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call) or not node.args:
                continue
            name = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", "")
            first = node.args[0]
            if name in CODED and isinstance(first, ast.Constant) and isinstance(first.value, str):
                yield f"{path.relative_to(SRC)}:{node.lineno}", first.value


def test_every_code_the_sources_raise_is_an_error_code():
    found = list(_literal_codes())
    assert len(found) > 20  # the scan does see the sources' codes
    unknown = [(where, code) for where, code in found if code not in ErrorCode._value2member_map_]
    assert unknown == []


@pytest.mark.parametrize("error", [ApiError, AgentError, ControllerError, PinfoldError])
def test_an_unknown_code_fails_where_it_is_raised_not_as_a_400(error):
    with pytest.raises(ValueError, match="no such code"):
        error("no such code", "detail")


@pytest.mark.parametrize(
    "make",
    [
        lambda: ApiError("unknown vm", "a"),
        lambda: AgentError("stale pins", "a"),
        lambda: ControllerError("agent failed", "a"),
        lambda: NoHostError("0/1 hosts fit", {}),
        lambda: DiskError("disk failed", "a"),
        lambda: HostAuthError("host enrolled", "a"),
    ],
    ids=["api", "agent", "controller", "no-host", "disk", "host-auth"],
)
def test_the_coded_exceptions_carry_an_error_code_and_keep_their_words(make):
    error = make()
    assert isinstance(error.code, ErrorCode)
    assert str(error) == f"{error.code.value}: {error.detail}"


def test_agent_json_errors_carry_the_code(tmp_path, i7):
    with serving(tmp_path, i7) as url, httpx.Client(base_url=url, timeout=10) as http:
        unknown = http.get("/api/v1/vms/ghost")
        invalid = http.post("/api/v1/vms", json={"name": "x", "vcpus": "1"}, headers=AUTH)
        full = http.post("/api/v1/vms", json={"name": "x", "vcpus": 64, "memory_mib": 1}, headers=AUTH)
        route = http.get("/nowhere")
    for response, code in [
        (unknown, ErrorCode.UNKNOWN_VM),
        (invalid, ErrorCode.INVALID_REQUEST),
        (full, ErrorCode.NOT_ENOUGH_CPU),
        (route, ErrorCode.NOT_FOUND),
    ]:
        body = response.json()
        assert (body["error"], body["code"]) == (code, code), response.text
        status = HTTPStatus.UNPROCESSABLE_ENTITY if response is invalid else code.status
        assert response.status_code == status


def test_controller_json_errors_carry_the_code_and_the_hosts_of_a_refusal(tmp_path, i7):
    cluster = LocalCluster(tmp_path, f"sqlite:///{tmp_path / 'controller.db'}", i7)
    try:
        cluster.add_host("h1")
        huge = cluster.http.post("/api/v1/vms", json={"name": "huge", "vcpus": 6, "memory_mib": 40000})
        unknown = cluster.http.get("/api/v1/hosts/ghost")
        anonymous = httpx.get(cluster.url + "/api/v1/vms")
    finally:
        cluster.close()
    body = huge.json()
    assert (huge.status_code, body["error"], body["code"]) == (409, "no host", "no host")
    assert body["hosts"]["h1"].startswith("not enough memory")
    for response, code in [(unknown, ErrorCode.UNKNOWN_HOST), (anonymous, ErrorCode.UNAUTHORIZED)]:
        assert (response.status_code, response.json()["code"]) == (code.status, code), response.text


def test_the_documented_table_has_every_code_with_its_status_and_message():
    docs = (SRC.parents[1] / "docs" / "controller.md").read_text()
    rows = {
        cells[0].strip("`"): cells[1:3]
        for line in docs.splitlines()
        if line.startswith("| `") and len(cells := [cell.strip() for cell in line.strip("|").split("|")]) == 4
    }
    for code in ErrorCode:
        status, message = rows.get(code.value, ["missing", ""])
        assert status.split()[0] == str(code.status.value), code
        assert message == code.message, code


#: exceptions that carry a code and yet stand outside the root, each for a reason
OUTSIDE_THE_ROOT = {
    # the placement core sits below pinfold.model: its refusal codes are ErrorCodes'
    # values, and the agent and the controller wrap PlacementError in their own errors
    "pinfold.placement.errors.PlacementError",
    # the agent's answer as it came (any string, "refused" for a body that is no JSON
    # error): not a code pinfold raises; the controller maps it to its own errors
    "pinfold.controller.agents.AgentRefusedError",
    # the hypervisor's vocabulary ("already exists", "failed"...), below the agent's API:
    # the agent turns it into an AgentError of an ErrorCode (agent/service.py `_refusal`)
    "pinfold.agent.drivers.base.DriverError",
}


def _coded_exception_classes() -> Iterator[str]:
    """The dotted names of the classes in src that give their instances a
    `code` (a class attribute, a property or `self.code = ...`)."""
    for path in sorted(SRC.rglob("*.py")):
        module = ".".join(("pinfold", *path.relative_to(SRC).with_suffix("").parts))
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ClassDef) and _gives_a_code(node):
                yield f"{module}.{node.name}"


def _gives_a_code(cls: ast.ClassDef) -> bool:
    for node in ast.walk(cls):
        if isinstance(node, ast.FunctionDef) and node.name == "code" and node in cls.body:
            return True
        targets = (
            node.targets
            if isinstance(node, ast.Assign)
            else [node.target]
            if isinstance(node, ast.AnnAssign)
            else []
        )
        for target in targets:
            if isinstance(target, ast.Name) and target.id == "code" and node in cls.body:
                return True
            if (
                isinstance(target, ast.Attribute)
                and target.attr == "code"
                and getattr(target.value, "id", "") == "self"
            ):
                return True
    return False


def test_every_exception_that_carries_a_code_derives_from_the_one_root():
    """The issue's "one exception root": an exception an API answers with a
    code is a PinfoldError (its `code` an ErrorCode, its `detail` words)."""
    found = {}
    for dotted in _coded_exception_classes():
        module, _, name = dotted.rpartition(".")
        cls = getattr(importlib.import_module(module), name)
        if isinstance(cls, type) and issubclass(cls, BaseException):
            found[dotted] = cls
    assert "pinfold.agent.service.AgentError" not in found  # the root's subclasses set no code of their own
    assert "pinfold.model.errors.PinfoldError" in found  # the scan does see `self.code = ...`
    outside = sorted(dotted for dotted, cls in found.items() if not issubclass(cls, PinfoldError))
    assert outside == sorted(OUTSIDE_THE_ROOT)
