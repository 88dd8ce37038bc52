"""schemathesis against the controller's own OpenAPI document, over a real
server on loopback with two real agents behind it and valid tokens (the agent
token on the agents' routes, the admin token elsewhere): whatever it sends,
no 5xx. Driven through schemathesis's Python API (its pytest plugin does not
run under pytest 9 yet)."""

from __future__ import annotations

from typing import Any

import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode

from tests.controller.cluster import ADMIN_AUTH, AGENT, LocalCluster

AGENT_AUTH = {"Authorization": f"Bearer {AGENT}"}


def test_no_generated_request_makes_the_controller_fail(tmp_path, i7):
    cluster = LocalCluster(tmp_path, f"sqlite:///{tmp_path / 'controller.db'}", i7)
    try:
        cluster.add_host("h1")
        cluster.add_host("h2")
        schema = schemathesis.openapi.from_url(cluster.url + "/openapi.json")
        operations = [result.ok() for result in schema.get_all_operations()]  # type: ignore[union-attr]
        assert len(operations) >= 15
        calls = 0
        for operation in operations:
            path = operation.path
            agents_route = operation.method.upper() == "POST" and (
                path == "/api/v1/hosts" or path.endswith("/heartbeat")
            )
            calls += fuzz(operation, AGENT_AUTH if agents_route else ADMIN_AUTH)
        assert calls >= len(operations)
    finally:
        cluster.close()


def test_no_malformed_heartbeat_is_taken(tmp_path, i7):
    """Heartbeats that break their schema (schemathesis's negative mode: a
    `usage.vnodes` that is a list, a `used_cores` that is a string, ...) are
    refused with a 4xx, never stored half way with a 5xx."""
    cluster = LocalCluster(tmp_path, f"sqlite:///{tmp_path / 'controller.db'}", i7)
    try:
        cluster.add_host("h1")
        schema = schemathesis.openapi.from_url(cluster.url + "/openapi.json")
        operation = schema["/api/v1/hosts/{host_id}/heartbeat"]["POST"]
        assert fuzz(operation, AGENT_AUTH, GenerationMode.NEGATIVE, accept=range(400, 500)) > 0
    finally:
        cluster.close()


def fuzz(operation: Any, headers: dict[str, str], mode: Any = None, accept: range = range(100, 500)) -> int:
    """Run the generated cases of one operation (of `mode`: valid by default);
    how many ran. Each answer's status must be in `accept`."""
    calls = 0

    @given(case=operation.as_strategy() if mode is None else operation.as_strategy(generation_mode=mode))
    @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def call(case: Any) -> None:
        nonlocal calls
        calls += 1
        response = case.call(headers=dict(headers), timeout=30)
        assert response.status_code in accept, f"{case.method} {case.formatted_path}: {response.text}"

    call()
    return calls
