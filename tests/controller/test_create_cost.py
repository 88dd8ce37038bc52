"""What one create costs the controller's database (issue 16): a create
reads the rows it needs, not every host's.

Profiled with 20 sim agents (py-spy on the controller, BENCHMARKS.md): a
quarter of a create's time went to reading every host's row, with its last
heartbeat's JSON, only to show the one VM's host state in the answer.
"""

from __future__ import annotations

import dataclasses
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


def statements(local: LocalCluster, action: Any) -> list[str]:
    """Every statement the controller's engine runs while `action` runs."""
    seen: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        seen.append(statement)

    engine = local.controller.store.engine
    event.listen(engine, "before_cursor_execute", record)
    try:
        action()
    finally:
        event.remove(engine, "before_cursor_execute", record)
    return seen


def heartbeat_reads(local: LocalCluster, action: Any) -> list[str]:
    """The statements that read hosts' heartbeats while `action` runs, other
    than the agents' own heartbeats (which write them)."""
    return [statement for statement in statements(local, action) if HEARTBEATS.search(statement)]


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


def test_a_create_reads_no_heartbeat_when_its_agent_told_the_pinning(three_hosts):
    """The answer's pinning comes from the agent's answer, the host's state
    from its liveness columns: no host's heartbeat JSON is read (issue 16,
    round 4: decoding it was part of every create's cost)."""

    def create() -> None:
        body = {"name": "one", "vcpus": 1, "memory_mib": 256}
        response = three_hosts.http.post("/api/v1/vms", json=body, headers=ADMIN_AUTH)
        assert response.status_code == 201, response.text
        assert response.json()["host_state"] == "up"
        assert response.json()["pinning"], response.json()

    assert heartbeat_reads(three_hosts, create) == []


def test_a_reservation_reads_its_hosts_vms_by_their_size_only(three_hosts):
    """Under the host's lock, the reservation reads the VMs the host holds:
    their names and sizes, not whole rows (NICs, first-boot digests...)."""
    for i in range(3):
        body = {"name": f"before{i}", "vcpus": 1, "memory_mib": 256}
        assert three_hosts.http.post("/api/v1/vms", json=body, headers=ADMIN_AUTH).status_code == 201

    def create() -> None:
        body = {"name": "one", "vcpus": 1, "memory_mib": 256}
        assert three_hosts.http.post("/api/v1/vms", json=body, headers=ADMIN_AUTH).status_code == 201

    seen = statements(three_hosts, create)
    held = [s for s in seen if re.search(r"\bFROM vms\b.*\bvms\.target_host_id = ", s, re.S)]
    assert held, seen
    for statement in held:
        columns = statement.split("FROM")[0]
        assert "vms.nics" not in columns, statement
        assert "vms.first_boot_digest" not in columns, statement


def test_single_reads_open_no_transaction_on_sqlite(tmp_path, i7):
    """A read of one VM or one host is one SELECT: on SQLite without BEGIN
    and COMMIT around it (`database.ONE_STATEMENT`), which were two more
    calls into SQLite, each a wait for the GIL under load."""
    local = LocalCluster(tmp_path, f"sqlite:///{tmp_path / 'controller.db'}", i7)
    try:
        local.add_host("h1", driver=SimDriver())
        local.wait(lambda: len(local.controller.hosts()) == 1, "one host")
        body = {"name": "one", "vcpus": 1, "memory_mib": 256}
        assert local.http.post("/api/v1/vms", json=body, headers=ADMIN_AUTH).status_code == 201
        store = local.controller.store

        def read() -> None:
            assert store.vm("one") is not None
            assert store.vm("none") is None
            light, full = store.host("h1", heartbeat=False), store.host("h1")
            assert light is not None
            assert full is not None
            assert full.heartbeat is not None
            assert light == dataclasses.replace(full, heartbeat=None)

        seen = statements(local, read)
        assert [s for s in seen if s.strip().upper().startswith(("BEGIN", "COMMIT"))] == []
        assert len([s for s in seen if s.lstrip().upper().startswith("SELECT")]) == 4, seen
    finally:
        local.close()
