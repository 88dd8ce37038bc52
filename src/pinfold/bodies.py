"""The JSON bodies the agent's and the controller's HTTP APIs both take.

`CreateVM` is a VM create as `POST /api/v1/vms` reads it, bounded by
`pinfold.model.vm`'s limits, so that both APIs refuse the same bodies with the
same 422 and publish the same OpenAPI constraints; `to_request` hands the
shells the one `VMRequest` they act on. The controller's body adds `policy`
(controller/api.py). The request's room for NICs, SSH keys and user data is
not in the body yet: a client cannot send what no shell reads.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from pinfold.model.vm import (
    MAX_IMAGE_LENGTH,
    MAX_NAME_LENGTH,
    MAX_OWNER_LENGTH,
    MAX_RATIO,
    MAX_VCPUS,
    MAX_VM_MEMORY_MIB,
    NAME_PATTERN,
    VMRequest,
)

__all__ = ["CreateVM"]


class CreateVM(BaseModel):
    #: JSON numbers are taken as they are: `"1"` or `true` is no vCPU count
    model_config = ConfigDict(strict=True)
    name: str = Field(min_length=1, max_length=MAX_NAME_LENGTH, pattern=NAME_PATTERN)
    vcpus: int = Field(ge=1, le=MAX_VCPUS)
    memory_mib: int = Field(ge=1, le=MAX_VM_MEMORY_MIB)
    ratio: float = Field(default=1.0, ge=1.0, le=MAX_RATIO)
    owner: str = Field(default="", max_length=MAX_OWNER_LENGTH)
    image: str = Field(default="", max_length=MAX_IMAGE_LENGTH)

    def to_request(self) -> VMRequest:
        return VMRequest(self.name, self.vcpus, self.memory_mib, self.ratio, self.owner, self.image)
