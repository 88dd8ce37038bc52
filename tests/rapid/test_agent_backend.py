"""AgentBackend: RAPID's Backend over a real agent (sim driver, real SQLite store)."""

from __future__ import annotations

import pytest

from pinfold.agent.drivers import SimDriver
from pinfold.agent.service import Agent, AgentSettings
from pinfold.agent.store import Store
from pinfold.model.errors import ErrorCode, PinfoldError
from pinfold.model.lifecycle import VMState
from pinfold.model.vm import VMRequest
from pinfold.rapid.agent_backend import AgentBackend


def open_agent(tmp_path, topology, driver: SimDriver) -> Agent:
    settings = AgentSettings(domain_type="qemu", disk_dir=tmp_path / "disks")
    return Agent.open(topology, driver, Store(tmp_path / "agent.db"), settings)


def test_vms_are_the_guests_states_now_and_missing_for_a_vm_whose_domain_went(tmp_path, i7):
    """The guest's state, not the agent's record (a crash may have left that
    behind); a VM the agent found gone at its start stays missing."""
    driver = SimDriver()
    agent = open_agent(tmp_path, i7, driver)
    for name in ("rapid-user-1", "rapid-user-2", "rapid-helper-1"):
        agent.create(VMRequest(name, 1, 128, owner="rapid:1"))
    driver.suspend(agent.vms["rapid-user-1"].domain)  # behind the agent's back
    driver.delete(agent.vms["rapid-helper-1"].domain)
    agent.store.close()
    backend = AgentBackend(open_agent(tmp_path, i7, driver))
    try:
        assert backend.vms() == {
            "rapid-user-1": VMState.PAUSED,
            "rapid-user-2": VMState.RUNNING,
            "rapid-helper-1": VMState.MISSING,
        }
        assert backend.state("rapid-user-1") is VMState.PAUSED
        assert backend.state("rapid-user-9") is None
    finally:
        backend.agent.store.close()


def test_the_lifecycle_sizes_and_names_come_from_the_agent(tmp_path, i7):
    driver = SimDriver()
    backend = AgentBackend(open_agent(tmp_path, i7, driver))
    try:
        backend.create(VMRequest("rapid-user-1", 2, 256))
        assert backend.vcpus("rapid-user-1") == 2
        assert backend.vcpus("rapid-user-9") is None
        assert backend.cores() == len(i7.usable_cpus)
        domain = backend.hypervisor_name("rapid-user-1")
        assert domain is not None
        assert domain == backend.agent.vms["rapid-user-1"].domain
        assert backend.hypervisor_name("rapid-user-9") is None
        assert backend.addresses("rapid-user-1") == driver.addresses(domain)
        assert backend.disk_allocated_bytes("rapid-user-1") is None  # no base image, no overlay
        backend.suspend("rapid-user-1")
        assert backend.state("rapid-user-1") is VMState.PAUSED
        backend.resume("rapid-user-1")
        backend.resize("rapid-user-1", 1, 128)
        assert backend.vcpus("rapid-user-1") == 1
        backend.delete("rapid-user-1")
        with pytest.raises(PinfoldError) as refused:  # the code the VMM reads: gone already
            backend.delete("rapid-user-1")
        assert refused.value.code is ErrorCode.UNKNOWN_VM
    finally:
        backend.agent.store.close()
