"""The agent's live-migration routes (docs/agent.md, "Live migration"):
prepare, commit and abort on the target, send on the source. The controller
calls them in that order; agents never call each other.

The prepare body carries the VM as the source's `GET /api/v1/vms/{name}`
shows it: the fields a placement needs are read (and bounded as a create's
are), the rest of that view (state, pinning, addresses) is ignored. Its
NICs keep their MACs, so each must name one. A VM with a cloud-init seed
has it carried too (`seed`, base64, at most `MAX_SEED_BYTES`), read from the
source's `GET /api/v1/vms/{name}/seed`.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import FastAPI, Response
from fastapi.params import Depends
from pydantic import BaseModel, ConfigDict, Field

from pinfold.agent.core import AgentError
from pinfold.agent.migration import Outgoing
from pinfold.agent.seed import MAX_SEED_BYTES
from pinfold.agent.service import Agent
from pinfold.agent.store import StoredVM
from pinfold.bodies import CreateNIC
from pinfold.model.vm import (
    MAC_PATTERN,
    MAX_IMAGE_LENGTH,
    MAX_NAME_LENGTH,
    MAX_NICS,
    MAX_OWNER_LENGTH,
    MAX_RATIO,
    MAX_VCPUS,
    MAX_VM_MEMORY_MIB,
    NAME_PATTERN,
    NIC,
    VMRequest,
)

__all__ = ["add_migration_routes"]

#: a host's name as the controller's directory has it
HOST_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"
#: no CPU number is this large on any host pinfold runs on
MAX_CPU = 65535
#: a libvirt URI (qemu+tcp://127.0.0.1:16509/system, qemu+unix:///system?socket=...)
LIBVIRT_URI_PATTERN = r"^[a-z][a-z0-9+]*://[^\s]*$"
#: QEMU's migration stream: TCP to a host, optionally a port
MIGRATE_URI_PATTERN = r"^tcp://[A-Za-z0-9.:\[\]-]+$"
#: standard base64, padded
BASE64_PATTERN = r"^[A-Za-z0-9+/]*={0,2}$"


class IncomingNIC(CreateNIC):
    """A NIC as the source shows it: its MAC is required (it keeps it), its
    learnt addresses are ignored."""

    model_config = ConfigDict(strict=True, extra="ignore")
    mac: str = Field(max_length=17, pattern=MAC_PATTERN)


class IncomingVM(BaseModel):
    """The VM a prepare reserves, read from the source's view of it."""

    model_config = ConfigDict(strict=True, extra="ignore")
    name: str = Field(min_length=1, max_length=MAX_NAME_LENGTH, pattern=NAME_PATTERN)
    vcpus: int = Field(ge=1, le=MAX_VCPUS)
    memory_mib: int = Field(ge=1, le=MAX_VM_MEMORY_MIB)
    ratio: float = Field(ge=1.0, le=MAX_RATIO)
    owner: str = Field(default="", max_length=MAX_OWNER_LENGTH)
    image: str = Field(default="", max_length=MAX_IMAGE_LENGTH)
    #: the hypervisor's name of it on the source ("": its name), kept on the target
    domain: str = Field(default="", max_length=MAX_NAME_LENGTH, pattern=f"^$|{NAME_PATTERN}")
    nics: list[IncomingNIC] = Field(default_factory=list, max_length=MAX_NICS)

    def to_request(self) -> VMRequest:
        nics = tuple(
            NIC(network=n.network or "", bridge=n.bridge or "", mac=n.mac.lower()) for n in self.nics
        )
        return VMRequest(
            self.name, self.vcpus, self.memory_mib, self.ratio, self.owner, self.image, nics=nics
        )


class Prepare(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")
    vm: IncomingVM
    source: str = Field(pattern=HOST_PATTERN)
    #: the VM's cloud-init seed, base64, as the source's `GET /api/v1/vms/{name}/seed` gave it
    seed: str | None = Field(default=None, max_length=4 * ((MAX_SEED_BYTES + 2) // 3), pattern=BASE64_PATTERN)

    def seed_bytes(self) -> bytes | None:
        """The seed's bytes; AgentError "invalid request" for base64 that does not decode."""
        try:
            return None if self.seed is None else base64.b64decode(self.seed, validate=True)
        except binascii.Error as error:
            raise AgentError("invalid request", f"seed: not base64 ({error})") from error


class Send(BaseModel):
    """The target's answer to its prepare, as the controller passes it on."""

    model_config = ConfigDict(strict=True, extra="forbid")
    target: str = Field(pattern=HOST_PATTERN)
    cpus: list[Annotated[int, Field(ge=0, le=MAX_CPU)]] = Field(min_length=1, max_length=MAX_CPU + 1)
    libvirt_uri: str | None = Field(default=None, max_length=1024, pattern=LIBVIRT_URI_PATTERN)
    migrate_uri: str | None = Field(default=None, max_length=1024, pattern=MIGRATE_URI_PATTERN)

    def to_outgoing(self) -> Outgoing:
        return Outgoing(self.target, frozenset(self.cpus), self.libvirt_uri, self.migrate_uri)


def add_migration_routes(
    app: FastAPI,
    agent: Agent,
    auth: Depends,
    call: Callable[[Callable[[], Any]], Any],
    view: Callable[[StoredVM], dict[str, Any]],
) -> None:
    """The four routes, each behind the agent token (`auth`); `call` turns
    the agent's refusals into JSON errors, `view` shows a VM as GET does.
    Registered before the power actions' `/vms/{name}/{action}`, which would
    take `migrate` for an unknown action."""

    @app.post("/api/v1/migrations", status_code=201, dependencies=[auth])
    def prepare(body: Prepare) -> dict[str, Any]:
        request = body.vm.to_request()
        domain = body.vm.domain or body.vm.name
        incoming = call(lambda: agent.prepare_incoming(request, domain, body.source, body.seed_bytes()))
        return {
            "name": incoming.vm.spec.name, "cpus": incoming.cpus, "libvirt_uri": incoming.libvirt_uri,
            "migrate_uri": incoming.migrate_uri, "domain_xml": None,
        }  # fmt: skip

    @app.get("/api/v1/vms/{name}/seed", dependencies=[auth])
    def seed(name: str) -> Response:
        """The VM's cloud-init seed as it is (404 "not found" when it has none)."""
        return Response(call(lambda: agent.seed_of(name)), media_type="application/octet-stream")

    @app.post("/api/v1/vms/{name}/migrate", dependencies=[auth])
    def send(name: str, body: Send) -> dict[str, Any]:
        vm, seconds, downtime_ms = call(lambda: agent.migrate_out(name, body.to_outgoing()))
        return {"name": vm.spec.name, "target": body.target, "seconds": seconds, "downtime_ms": downtime_ms}

    @app.post("/api/v1/migrations/{name}/commit", dependencies=[auth])
    def commit(name: str) -> dict[str, Any]:
        return view(call(lambda: agent.commit_incoming(name)))

    @app.delete("/api/v1/migrations/{name}", status_code=204, dependencies=[auth])
    def abort(name: str) -> Response:
        call(lambda: agent.abort_incoming(name))
        return Response(status_code=204)
