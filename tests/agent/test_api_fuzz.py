"""schemathesis against the agent's own OpenAPI document, over a real server
on loopback with a valid token: whatever it sends, no 5xx. (schemathesis's
pytest plugin does not run under pytest 9 yet, so the operations are driven
through its Python API and Hypothesis directly.)"""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, given, settings

from tests.agent.test_api import AUTH, agent_url  # noqa: F401  (the fixture)


def test_no_generated_request_makes_the_agent_fail(agent_url):  # noqa: F811
    schema = schemathesis.openapi.from_url(agent_url + "/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]  # type: ignore[union-attr]
    assert len(operations) >= 12
    calls = 0
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def call(case) -> None:
            nonlocal calls
            calls += 1
            response = case.call(headers=dict(AUTH), timeout=10)
            assert response.status_code < 500, f"{case.method} {case.formatted_path}: {response.text}"

        call()
    assert calls >= len(operations)
