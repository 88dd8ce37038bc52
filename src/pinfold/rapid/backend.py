"""What RAPID's VMM needs from whatever runs its VMs: the `Backend` Protocol.

The VMM talks to its VMs only through this, so that another back-end can sit
behind the same VMM: the pinfold agent (`pinfold.rapid.agent_backend`), or an
OpenStack cloud (`pinfold.rapid.openstack_backend`, as RAPID's own
`openStackSupport` did). Keep it
small: each method is one the VMM calls, typed with `pinfold.model` types only
(a back-end's own types stay behind it), so that a new back-end has little to
write and nothing of the agent to import.

Names are the VMM's (`rapid-user-<id>`, `rapid-helper-<n>`). A refusal or a
failure is a `PinfoldError` whose `code` is an `ErrorCode`: the VMM reads
`UNKNOWN_VM` (a delete of a VM gone already is as good as done) and logs the
rest.
"""

from __future__ import annotations

from typing import Protocol

from pinfold.model.lifecycle import VMState
from pinfold.model.vm import VMRequest

__all__ = ["Backend"]


class Backend(Protocol):
    """Runs RAPID's VMs (see the module's docstring)."""

    def create(self, request: VMRequest) -> None:
        """Make and boot the VM; a refusal (sizes, room, name taken) raises."""

    def delete(self, name: str) -> None:
        """Delete the VM and its disk; raises `UNKNOWN_VM` for none of that name."""

    def suspend(self, name: str) -> None:
        """Pause the running VM."""

    def resume(self, name: str) -> None:
        """Run the paused VM again."""

    def resize(self, name: str, vcpus: int, memory_mib: int) -> None:
        """Give the VM these sizes (in effect at once for placement, at its next boot at the latest)."""

    def vms(self) -> dict[str, VMState]:
        """Every VM the back-end runs for its users (RAPID's among them), by
        name, with its guest's state now: `MISSING` for one that has gone
        from under the back-end."""

    def state(self, name: str) -> VMState | None:
        """The VM's guest's state now; None for no such VM."""

    def addresses(self, name: str) -> list[str]:
        """The VM's IPv4 addresses as the back-end knows them; none yet: empty."""

    def hypervisor_name(self, name: str) -> str | None:
        """The VM's name at the hypervisor, for RAPID's `ipShellPath` script
        (`sh script <name>`); None for no such VM."""

    def disk_allocated_bytes(self, name: str) -> int | None:
        """The bytes the VM's disk takes on the host; None for none known."""

    def vcpus(self, name: str) -> int | None:
        """The VM's vCPUs as the back-end placed it; None for no such VM."""

    def cores(self) -> int:
        """The CPUs VMs are placed on, the core count the DS admits starts by."""
