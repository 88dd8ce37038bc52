"""Each host its own credential (issue 11, finding 3.1): the cluster's agent
token only enrols a new host once; heartbeats and re-registrations take the
host's own credential, which `pinfold host remove` revokes; and the
controller calls each agent with that agent's own API token."""

from __future__ import annotations

import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from pinfold.agent.registration import Registrar
from pinfold.cli import app
from pinfold.controller.credentials import Enrolment, HostCredential, digest
from pinfold.controller.feasibility import Feasibility
from pinfold.controller.models import VMState
from pinfold.controller.store import ControllerStore, HostAuthError, HostInUseError
from pinfold.model.vm import VMRequest
from tests.controller.cluster import ADMIN, AGENT, PERIOD_S, LocalCluster, start_host
from tests.servers import free_port

ENROLMENT = {"Authorization": f"Bearer {AGENT}"}


@pytest.fixture
def cluster(tmp_path: Path, i7: Any) -> Iterator[LocalCluster]:
    local = LocalCluster(tmp_path, f"sqlite:///{tmp_path / 'controller.db'}", i7)
    yield local
    local.close()


def credential_of(cluster: LocalCluster, host_id: str) -> dict[str, str]:
    token = (cluster.tmp_path / host_id / "host.token").read_text(encoding="utf-8").strip()
    return {"Authorization": f"Bearer {token}"}


def running_vm(cluster: LocalCluster, host_id: str) -> None:
    """A VM `a` running on `host_id`, last changed more than two periods ago
    (so that a heartbeat without it would make it `missing`)."""
    cluster.http.post(f"/api/v1/hosts/{host_id}/undrain")
    created = cluster.http.post("/api/v1/vms", json={"name": "a", "vcpus": 1, "memory_mib": 128})
    assert created.status_code == 201, created.text
    assert created.json()["host"] == host_id
    record = cluster.controller.store.vm("a")
    assert record is not None
    cluster.wait(lambda: time.time() - record.updated_at > 2 * PERIOD_S + 0.1, "the VM to settle")


def registration(host_id: str, address: str, topology: dict[str, Any]) -> dict[str, Any]:
    return {"host_id": host_id, "address": address, "topology": topology, "critical_size": 6,
            "reserved_memory_mib": 0}  # fmt: skip


def test_the_enrolment_token_cannot_heartbeat_as_an_enrolled_host(cluster: LocalCluster) -> None:
    cluster.add_host("h1")
    running_vm(cluster, "h1")
    forged = cluster.http.post("/api/v1/hosts/h1/heartbeat", json={"vms": {}}, headers=ENROLMENT)
    assert forged.status_code == 401, forged.text
    assert forged.json()["error"] == "unauthorized"
    vm = cluster.controller.store.vm("a")
    assert vm is not None
    assert vm.state is VMState.RUNNING
    after = cluster.controller.store.host("h1")
    assert after is not None
    assert after.heartbeat is not None
    assert "a" in after.heartbeat["vms"]  # the forged heartbeat was not stored


def test_a_heartbeat_is_checked_for_its_credential_before_its_body(cluster: LocalCluster) -> None:
    """The route reads its body itself, in the same worker-thread hop as the
    check (issue 16): a stranger is still told 401 whatever it sends, and
    only the host itself learns of a malformed beat (422, as for any body)."""
    cluster.add_host("h1")
    malformed = b'{"vms": ["not", "a", "mapping"], "usage": {"cpu": {"0": 2.5}}}'
    for presented in (ENROLMENT, {"Authorization": "Bearer not-a-credential"}, {}):
        refused = cluster.http.post("/api/v1/hosts/h1/heartbeat", content=malformed, headers=presented)
        assert refused.status_code == 401, refused.text
    mine = credential_of(cluster, "h1")
    invalid = cluster.http.post("/api/v1/hosts/h1/heartbeat", content=malformed, headers=mine)
    assert invalid.status_code == 422, invalid.text
    assert invalid.json()["error"] == "invalid request"
    assert invalid.json()["detail"].startswith("body.vms: ")
    assert "; body.usage.cpu.0: " in invalid.json()["detail"]
    not_json = cluster.http.post("/api/v1/hosts/h1/heartbeat", content=b"{", headers=mine)
    assert not_json.status_code == 422, not_json.text
    assert cluster.http.post("/api/v1/hosts/h1/heartbeat", content=b"{}", headers=mine).status_code == 200


def test_the_enrolment_token_cannot_register_an_enrolled_host_again(
    cluster: LocalCluster, i7_topology: dict[str, Any]
) -> None:
    host = cluster.add_host("h1")
    body = registration("h1", "http://127.0.0.1:1", i7_topology)
    moved = cluster.http.post("/api/v1/hosts", json=body, headers=ENROLMENT)
    assert moved.status_code == 409, moved.text
    assert moved.json()["error"] == "host enrolled"
    assert "pinfold host remove h1" in moved.json()["detail"]
    assert cluster.http.get("/api/v1/hosts/h1").json()["address"] == host.served.url


def test_a_host_credential_is_good_for_its_own_host_only(
    cluster: LocalCluster, i7_topology: dict[str, Any]
) -> None:
    cluster.add_host("h1")
    h2 = cluster.add_host("h2")
    mine = credential_of(cluster, "h1")
    assert cluster.http.post("/api/v1/hosts/h1/heartbeat", json={}, headers=mine).status_code == 200
    theirs = cluster.http.post("/api/v1/hosts/h2/heartbeat", json={"vms": {}}, headers=mine)
    assert theirs.status_code == 401, theirs.text
    body = registration("h2", "http://127.0.0.1:1", i7_topology)
    moved = cluster.http.post("/api/v1/hosts", json=body, headers=mine)
    assert moved.status_code == 401, moved.text
    assert cluster.http.get("/api/v1/hosts/h2").json()["address"] == h2.served.url
    # and the host's own credential registers it again (an agent restarting)
    again = registration("h1", cluster.hosts["h1"].served.url, i7_topology)
    assert cluster.http.post("/api/v1/hosts", json=again, headers=mine).status_code == 200


def test_host_remove_revokes_the_credential(cluster: LocalCluster, i7_topology: dict[str, Any]) -> None:
    host = cluster.add_host("h1")
    running_vm(cluster, "h1")
    mine = credential_of(cluster, "h1")
    host.registrar.stop()
    env = {"PINFOLD_URL": cluster.url, "PINFOLD_TOKEN": ADMIN, "COLUMNS": "200"}
    refused = CliRunner().invoke(app, ["host", "remove", "h1"], env=env)
    assert refused.exit_code != 0
    assert "--force" in refused.output
    assert cluster.http.get("/api/v1/hosts/h1").status_code == 200
    removed = CliRunner().invoke(app, ["host", "remove", "h1", "--force"], env=env)
    assert removed.exit_code == 0, removed.output
    assert cluster.http.get("/api/v1/hosts/h1").status_code == 404
    assert cluster.controller.store.vm("a") is None
    beat = cluster.http.post("/api/v1/hosts/h1/heartbeat", json={}, headers=mine)
    assert beat.status_code == 403, beat.text
    assert beat.json()["error"] == "credential revoked"
    body = registration("h1", host.served.url, i7_topology)
    assert cluster.http.post("/api/v1/hosts", json=body, headers=mine).status_code == 403
    # the enrolment token enrols it again, as a new host with a new credential
    enrolled = cluster.http.post("/api/v1/hosts", json=body, headers=ENROLMENT)
    assert enrolled.status_code == 200, enrolled.text
    assert enrolled.json()["credential"] != mine["Authorization"].removeprefix("Bearer ")


def test_a_restarted_agent_keeps_working_with_its_stored_credential(cluster: LocalCluster) -> None:
    host = cluster.add_host("h1")
    stored = credential_of(cluster, "h1")
    host.stop()
    again = start_host(cluster.tmp_path, cluster.topology, "h1", cluster.url, agent=host.agent)
    cluster.hosts["h1"] = again
    assert again.registrar.registered, again.registrar.last_error
    assert credential_of(cluster, "h1") == stored
    cluster.wait(lambda: again.registrar.last_error is None, "heartbeats")
    running_vm(cluster, "h1")


def test_the_controller_calls_each_agent_with_its_own_token(cluster: LocalCluster) -> None:
    h1, h2 = cluster.add_host("h1", token="h1-own-api-token-0123456789"), cluster.add_host("h2")
    assert h1.token != h2.token
    for name in ("a", "b"):  # all 8 CPUs of a host each: one on each host
        created = cluster.http.post("/api/v1/vms", json={"name": name, "vcpus": 8, "memory_mib": 128})
        assert created.status_code == 201, created.text
    assert {vm["host"] for vm in cluster.http.get("/api/v1/vms").json()} == {"h1", "h2"}
    # each agent's API refuses the other's token and the enrolment token
    for host, other in ((h1, h2), (h2, h1)):
        for token in (other.token, AGENT):
            answer = httpx.delete(
                f"{host.served.url}/api/v1/vms/a", headers={"Authorization": f"Bearer {token}"}
            )
            assert answer.status_code == 401


def test_a_host_enrolled_before_host_credentials_enrols_once(
    cluster: LocalCluster, i7_topology: dict[str, Any]
) -> None:
    """The upgrade path: a host registered by an older controller has no
    credential; its agent's first registration with the enrolment token is
    taken once and issues one, a second is refused."""
    cluster.controller.store.register_host("old", "http://127.0.0.1:1", i7_topology, 6, 0, time.time())
    body = registration("old", "http://127.0.0.1:2", i7_topology)
    first = cluster.http.post("/api/v1/hosts", json=body, headers=ENROLMENT)
    assert first.status_code == 200, first.text
    assert len(first.json()["credential"]) >= 32
    second = cluster.http.post("/api/v1/hosts", json=body, headers=ENROLMENT)
    assert second.status_code == 409


def test_a_removed_agent_stays_out_until_its_credential_file_is_deleted(cluster: LocalCluster) -> None:
    host = cluster.add_host("h1")
    assert cluster.http.delete("/api/v1/hosts/h1").status_code == 200
    cluster.wait(lambda: "credential revoked" in (host.registrar.last_error or ""), "the refusal")
    host.registrar.beat()  # another round: it tries its revoked credential again, and does not enrol
    assert "credential revoked" in (host.registrar.last_error or "")
    assert cluster.http.get("/api/v1/hosts").json() == []
    old = credential_of(cluster, "h1")
    (cluster.tmp_path / "h1" / "host.token").unlink()
    token = cluster.tmp_path / "h1" / "host.token"
    # the agent writes its new credential once the controller's answer is back: after the host shows
    cluster.wait(
        lambda: cluster.http.get("/api/v1/hosts/h1").status_code == 200 and token.exists(), "the enrolment"
    )
    assert credential_of(cluster, "h1") != old
    cluster.wait(lambda: host.registrar.last_error is None, "heartbeats")


def test_the_store_checks_credentials_under_the_hosts_lock(
    store: ControllerStore, i7_topology: dict[str, Any]
) -> None:
    """On both backends: a removal forgets the VMs only when forced, and a
    registration with a credential revoked since the API looked is refused
    as revoked (not as unknown, which would have its agent enrol again)."""
    mine = digest("h1-credential-0123456789")
    register = partial(store.register_host, "h1", "http://127.0.0.1:1", i7_topology, 6, 0, 1.0)
    register(proof=Enrolment(mine))
    store.reserve(VMRequest("a", 1, 128), "h1", Feasibility(), 2.0)
    with pytest.raises(HostInUseError):
        store.remove_host("h1", force=False, now=3.0)
    assert [vm.name for vm in store.vms("h1")] == ["a"]
    assert [vm.name for vm in store.remove_host("h1", force=True, now=4.0)] == ["a"]
    assert store.host("h1") is None
    assert store.revoked(mine)
    with pytest.raises(HostAuthError) as refused:
        register(proof=HostCredential(mine))
    assert refused.value.code == "credential revoked"
    assert store.host("h1") is None
    register(proof=Enrolment(digest("h1-new-credential-0123456789")))
    assert store.credential("h1") == digest("h1-new-credential-0123456789")


def test_a_credential_that_cannot_be_saved_is_kept_in_memory_and_saved_later(cluster: LocalCluster) -> None:
    """The controller holds the credential's digest once it answered: an agent
    that dropped it (a full or unwritable disk) would be refused for ever."""
    blocker = cluster.tmp_path / "h1" / "host.token"
    blocker.mkdir(parents=True)  # a directory where the file goes: writing it fails, even as root
    host = cluster.add_host("h1")
    assert host.registrar.registered
    assert "could not be saved" in (host.registrar.last_error or "")
    running_vm(cluster, "h1")  # heartbeats go on with the credential kept in memory
    assert cluster.controller.store.vm("a") is not None
    assert cluster.controller.store.vm("a").state == VMState.RUNNING  # type: ignore[union-attr]
    blocker.rmdir()
    cluster.wait(lambda: blocker.is_file() and host.registrar.last_error is None, "the credential saved")
    assert cluster.http.post("/api/v1/hosts/h1/heartbeat", json={"vms": {"a": "running"}},
                             headers=credential_of(cluster, "h1")).status_code == 200  # fmt: skip


def test_a_refused_registration_is_asked_again_ever_less_often(
    cluster: LocalCluster, i7_topology: dict[str, Any], tmp_path: Path
) -> None:
    """A registration the controller refuses (here an address it cannot call:
    422) stays refused until an operator acts: the agent asks again after 2,
    4, 8... seconds, up to its period, not every second as before (each round
    sent the whole topology document, after the digest's 422). A controller
    it cannot reach is tried every second; once registered, the count starts
    again."""
    address = ["http://h9:0"]
    registrar = Registrar(
        cluster.url, AGENT, "h9", lambda: registration("h9", address[0], i7_topology),
        lambda: {"status": {}, "vms": {}, "pins": {}, "vnodes": {}}, 20.0, tmp_path / "h9.token",
    )  # fmt: skip
    try:
        waits = []
        for _ in range(6):
            registrar.beat()
            assert not registrar.registered
            assert "422" in str(registrar.last_error), registrar.last_error
            waits.append(registrar._next_round_s(was_registered=False))
        for wait, most in zip(waits, [2, 4, 8, 16, 20, 20], strict=True):
            assert most * 0.9 <= wait <= most, waits
        address[0] = "http://127.0.0.1:9"
        registrar.beat()
        assert registrar.registered, registrar.last_error
    finally:
        registrar.stop()
    document = registration("h8", "http://127.0.0.1:9", i7_topology)
    unreachable = Registrar(
        f"http://127.0.0.1:{free_port()}", AGENT, "h8", lambda: document, dict, 20.0, tmp_path / "h8.token"
    )
    try:
        unreachable.beat()
        assert "unreachable" in str(unreachable.last_error)
        assert unreachable._next_round_s(was_registered=False) == 1.0
    finally:
        unreachable.stop()
