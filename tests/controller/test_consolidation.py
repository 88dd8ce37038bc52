"""The consolidation policy with real sim agents: one round (`Consolidator.step`,
called directly) empties a lightly used host onto a fuller one, within its
budget; GET /api/v1/consolidation/plan is the same plan as a dry run."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pinfold.controller.consolidation import ConsolidationSettings, Consolidator
from tests.controller.cluster import LocalCluster
from tests.controller.test_migration import create, migrations, on_agents, vm


@pytest.fixture
def cluster(tmp_path, database_url, i7) -> Iterator[LocalCluster]:
    local = LocalCluster(tmp_path, database_url, i7)
    yield local
    local.close()


def lightly_used_h2(cluster: LocalCluster) -> None:
    """h1 holds three VMs, h2 one small one (created while h1 was draining)."""
    cluster.add_host("h1")
    create(cluster, "a", vcpus=2, memory_mib=4096, ratio=1.0)
    create(cluster, "b", vcpus=2, memory_mib=4096, ratio=2.0)
    create(cluster, "c", vcpus=1, memory_mib=2048, ratio=2.0)
    cluster.add_host("h2")
    assert cluster.http.post("/api/v1/hosts/h1/drain").status_code == 200
    create(cluster, "small", vcpus=1, memory_mib=512, ratio=2.0)
    assert cluster.http.post("/api/v1/hosts/h1/undrain").status_code == 200
    assert vm(cluster, "small")["host"] == "h2"


def test_one_round_empties_the_lightly_used_host(cluster):
    lightly_used_h2(cluster)
    told: list[str] = []
    consolidator = Consolidator(cluster.controller, ConsolidationSettings(enabled=True), told.append)
    dry = cluster.http.get("/api/v1/consolidation/plan")
    assert dry.status_code == 200, dry.text
    assert dry.json()["enabled"] is False  # the API's own policy: off by default
    assert [(m["vm"], m["source"], m["target"]) for m in dry.json()["migrations"]] == [("small", "h2", "h1")]
    assert on_agents(cluster)["h2"] == {"small"}  # a dry run moves nothing
    done = consolidator.step()
    assert [(m.vm, m.source, m.target, m.outcome) for m in done] == [("small", "h2", "h1", "done")]
    assert on_agents(cluster) == {"h1": {"a", "b", "c", "small"}, "h2": set()}
    assert vm(cluster, "small")["host"] == "h1"
    assert len(told) == 1
    assert "1 migrations empty 1 hosts" in told[0]
    assert "h2 (1 VMs" in told[0]
    # the next round has nothing to do: h2 is empty, h1 has nowhere to go, and small is cooling down
    assert consolidator.step() == []
    assert [m["outcome"] for m in migrations(cluster)] == ["done"]


def test_a_round_keeps_to_its_budget(cluster):
    lightly_used_h2(cluster)
    settings = ConsolidationSettings(enabled=True, per_hour=1)
    consolidator = Consolidator(cluster.controller, settings, lambda _: None)
    cluster.controller.migrate("c", "h2")  # one migration this hour already: the budget is spent
    plan = consolidator.plan()
    assert plan.migrations == ()
    assert "budget is spent" in plan.explain()
    assert consolidator.step() == []
    assert on_agents(cluster) == {"h1": {"a", "b"}, "h2": {"small", "c"}}
