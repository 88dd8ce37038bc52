"""The JSON bodies the agent's and the controller's HTTP APIs both take.

`CreateVM` is a VM create as `POST /api/v1/vms` reads it, bounded by
`pinfold.model.vm`'s limits, so that both APIs refuse the same bodies with the
same 422 and publish the same OpenAPI constraints; `to_request` hands the
shells the one `VMRequest` they act on. The controller's body adds `policy`
(controller/api.py). `ssh_keys` and `user_data` go into the VM's cloud-init
seed; the bounds here are the coarse ones a schema can state (user data counted
in characters), and `pinfold.model.vm.first_boot_problem` judges the rest (key
format, user data in UTF-8 bytes). The request's room for NICs is not in the
body yet: a client cannot send what no shell reads.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from pinfold.model.vm import (
    MAX_IMAGE_LENGTH,
    MAX_NAME_LENGTH,
    MAX_OWNER_LENGTH,
    MAX_RATIO,
    MAX_SSH_KEY_LENGTH,
    MAX_SSH_KEYS,
    MAX_USER_DATA_BYTES,
    MAX_VCPUS,
    MAX_VM_MEMORY_MIB,
    NAME_PATTERN,
    VMRequest,
)

__all__ = ["CreateVM"]

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
    ssh_keys: list[SSHKey] = Field(default_factory=list, max_length=MAX_SSH_KEYS)
    user_data: str = Field(default="", max_length=MAX_USER_DATA_BYTES)

    def to_request(self) -> VMRequest:
        return VMRequest(
            self.name, self.vcpus, self.memory_mib, self.ratio, self.owner, self.image,
            ssh_keys=tuple(self.ssh_keys), user_data=self.user_data,
        )  # fmt: skip
