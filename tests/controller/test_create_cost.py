"""What one create costs the controller's database (issue 16): a create
reads the rows it needs, not every host's.

Profiled with 20 sim agents (py-spy on the controller, BENCHMARKS.md): a
quarter of a create's time went to reading every host's row, with its last
heartbeat's JSON, only to show the one VM's host state in the answer.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import event

from pinfold.agent.drivers import SimDriver
from tests.controller.cluster import ADMIN_AUTH, LocalCluster

#: a SELECT of the hosts' heartbeat column
HEARTBEATS = re.compile(r"\bSELECT\b.*\bhosts\.heartbeat\b.*\bFROM hosts\b", re.S)
#: ... restricted to one host
ONE_HOST = re.compile(r"\bWHERE hosts\.id = ", re.S)


@pytest.fixture
def three_hosts(tmp_path, database_url, i7) -> Iterator[LocalCluster]:
    local = LocalCluster(tmp_path, database_url, i7)
    for host_id in ("h1", "h2", "h3"):
        local.add_host(host_id, driver=SimDriver())
    local.wait(lambda: len(local.controller.hosts()) == 3, "three hosts")
    yield local
    local.close()


def heartbeat_reads(local: LocalCluster, action: Any) -> list[str]:
    """The statements that read hosts' heartbeats while `action` runs, other
    than the agents' own heartbeats (which write them)."""
    seen: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if HEARTBEATS.search(statement):
            seen.append(statement)

    engine = local.controller.store.engine
    event.listen(engine, "before_cursor_execute", record)
    try:
        action()
    finally:
        event.remove(engine, "before_cursor_execute", record)
    return seen


def test_a_create_reads_only_its_own_hosts_row(three_hosts):
    def create() -> None:
        body = {"name": "one", "vcpus": 1, "memory_mib": 256}
        response = three_hosts.http.post("/api/v1/vms", json=body, headers=ADMIN_AUTH)
        assert response.status_code == 201, response.text
        assert response.json()["host_state"] == "up"

    reads = heartbeat_reads(three_hosts, create)
    every_host = [statement for statement in reads if not ONE_HOST.search(statement)]
    assert every_host == []


def test_a_vms_view_and_action_read_only_its_own_hosts_row(three_hosts):
    body = {"name": "one", "vcpus": 1, "memory_mib": 256}
    assert three_hosts.http.post("/api/v1/vms", json=body, headers=ADMIN_AUTH).status_code == 201

    def show_and_suspend() -> None:
        assert three_hosts.http.get("/api/v1/vms/one").json()["host_state"] == "up"
        assert three_hosts.http.post("/api/v1/vms/one/suspend").json()["host_state"] == "up"

    reads = heartbeat_reads(three_hosts, show_and_suspend)
    assert [statement for statement in reads if not ONE_HOST.search(statement)] == []
