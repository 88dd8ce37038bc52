"""`AgentBackend`: RAPID's `Backend` over a pinfold agent's public methods.

The one module of the VMM's side that knows the agent's service (with the
endpoint that wires it; tests/test_layers.py holds the rest of `pinfold.rapid`
to that). The agent's refusals are `AgentError`s, a `PinfoldError`, so they
pass through as the Protocol wants them.
"""

from __future__ import annotations

from pinfold.agent.service import Agent
from pinfold.model.lifecycle import VMState
from pinfold.model.vm import VMRequest

__all__ = ["AgentBackend"]


class AgentBackend:
    """Each call is the agent's method of the moment (looked up at the call,
    so a test that replaces one on the agent replaces it here too)."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent

    def create(self, request: VMRequest) -> None:
        self.agent.create(request)

    def delete(self, name: str) -> None:
        self.agent.delete(name)

    def suspend(self, name: str) -> None:
        self.agent.suspend(name)

    def resume(self, name: str) -> None:
        self.agent.resume(name)

    def resize(self, name: str, vcpus: int, memory_mib: int) -> None:
        self.agent.resize(name, vcpus, memory_mib)

    def vms(self) -> dict[str, VMState]:
        """A VM the agent marked missing stays so (its domain went at some point:
        the agent never recreates it); another has its guest's state now."""
        found = {}
        for vm in self.agent.user_vms():
            name = vm.spec.name
            now = None if vm.state is VMState.MISSING else self.agent.guest_state(name)
            found[name] = vm.state if now is None else now
        return found

    def state(self, name: str) -> VMState | None:
        return self.agent.guest_state(name)

    def addresses(self, name: str) -> list[str]:
        return self.agent.addresses(name)

    def hypervisor_name(self, name: str) -> str | None:
        """The VM's domain (a VM handed out by a warm pool keeps its domain's name)."""
        vm = self.agent.find(name)
        return None if vm is None else vm.domain

    def disk_allocated_bytes(self, name: str) -> int | None:
        return self.agent.disk_allocated_bytes(name)

    def vcpus(self, name: str) -> int | None:
        vm = self.agent.find(name)
        return None if vm is None else vm.spec.vcpus

    def cores(self) -> int:
        return len(self.agent.topology.usable_cpus)
