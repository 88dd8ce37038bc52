"""The JSON bodies the agent's and the controller's HTTP APIs both take.

`CreateVM` is a VM create as `POST /api/v1/vms` reads it, bounded by
`pinfold.model.vm`'s limits, so that both APIs refuse the same bodies with the
same 422 and publish the same OpenAPI constraints; `to_request` hands the
shells the one `VMRequest` they act on. The controller's body adds `policy`
(controller/api.py). `nics` (optional, at most `MAX_NICS`) names each NIC's
network or bridge and, optionally, its MAC; none: the agent's default.
`ssh_keys` and `user_data` go into the VM's cloud-init seed; the bounds here
are the coarse ones a schema can state (user data counted in characters), and
`pinfold.model.vm.first_boot_problem` judges the rest (key format, user data
in UTF-8 bytes).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator

from pinfold.model.vm import (
    BRIDGE_PATTERN,
    MAC_PATTERN,
    MAX_BULK,
    MAX_IMAGE_LENGTH,
    MAX_NAME_LENGTH,
    MAX_NICS,
    MAX_OWNER_LENGTH,
    MAX_RATIO,
    MAX_SSH_KEY_LENGTH,
    MAX_SSH_KEYS,
    MAX_USER_DATA_BYTES,
    MAX_VCPUS,
    MAX_VM_MEMORY_MIB,
    NAME_PATTERN,
    NETWORK_PATTERN,
    NIC,
    VMRequest,
)

__all__ = ["CreateNIC", "CreateVM", "CreateVMBatch", "DeleteVMBatch"]


class CreateNIC(BaseModel):
    """One NIC: exactly one of `network` and `bridge`; `mac` optional (the agent picks one)."""

    model_config = ConfigDict(strict=True, extra="forbid")
    network: str | None = Field(default=None, max_length=63, pattern=NETWORK_PATTERN)
    bridge: str | None = Field(default=None, max_length=15, pattern=BRIDGE_PATTERN)
    mac: str | None = Field(default=None, max_length=17, pattern=MAC_PATTERN)

    @model_validator(mode="after")
    def _one_source(self) -> CreateNIC:
        if (self.network is None) == (self.bridge is None):
            raise ValueError("name exactly one of network and bridge")
        return self

    def to_nic(self) -> NIC:
        return NIC(network=self.network or "", bridge=self.bridge or "", mac=(self.mac or "").lower())


SSHKey = Annotated[str, Field(min_length=1, max_length=MAX_SSH_KEY_LENGTH)]


class CreateVM(BaseModel):
    #: JSON numbers are taken as they are: `"1"` or `true` is no vCPU count
    model_config = ConfigDict(strict=True)
    name: str = Field(min_length=1, max_length=MAX_NAME_LENGTH, pattern=NAME_PATTERN)
    vcpus: int = Field(ge=1, le=MAX_VCPUS)
    memory_mib: int = Field(ge=1, le=MAX_VM_MEMORY_MIB)
    ratio: float = Field(default=1.0, ge=1.0, le=MAX_RATIO)
    owner: str = Field(default="", max_length=MAX_OWNER_LENGTH)
    image: str = Field(default="", max_length=MAX_IMAGE_LENGTH)
    nics: list[CreateNIC] = Field(default_factory=list, max_length=MAX_NICS)
    ssh_keys: list[SSHKey] = Field(default_factory=list, max_length=MAX_SSH_KEYS)
    user_data: str = Field(default="", max_length=MAX_USER_DATA_BYTES)

    def to_request(self) -> VMRequest:
        return VMRequest(
            self.name, self.vcpus, self.memory_mib, self.ratio, self.owner, self.image,
            nics=tuple(nic.to_nic() for nic in self.nics),
            ssh_keys=tuple(self.ssh_keys), user_data=self.user_data,
        )  # fmt: skip


class CreateVMBatch(BaseModel):
    """Many creates in one request to an agent (a controller's bulk create:
    one call per host, not one per VM): each is the body of a single create,
    and each is carried out, and answered, as if it came alone."""

    model_config = ConfigDict(strict=True)
    vms: list[CreateVM] = Field(min_length=1, max_length=MAX_BULK)


class DeleteVMBatch(BaseModel):
    """Many deletes in one request to an agent (deletes a controller does
    together: one call per host), each carried out, and answered, as if alone."""

    model_config = ConfigDict(strict=True)
    names: list[Annotated[str, Field(min_length=1, max_length=MAX_NAME_LENGTH, pattern=NAME_PATTERN)]] = (
        Field(min_length=1, max_length=MAX_BULK)
    )
