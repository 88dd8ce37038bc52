"""The closed set of error codes the agent's and the controller's HTTP APIs
answer, each with its HTTP status and a stable one-line message, and the one
exception root that carries a code.

A code is a short stable string (clients and tests compare codes, never the
`detail` prose). A JSON error is `{"error": code, "code": code, "detail": ...}`
(and `"hosts"` for a placement no host took). A code that is not a member of
`ErrorCode` cannot be raised: `ErrorCode("typo")` is a `ValueError` where it is
written, not a silent 400 at the client.

Two answers do not follow the table, and say so here: FastAPI's own schema
validation answers `invalid request` with 422 (the table's 400 is for checks
pinfold makes itself); and a framework error whose status has no code here (none
of today's routes raises one) answers with its status and the status's phrase.

Nothing here imports more than the standard library (see `pinfold.model`).
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from http import HTTPStatus
from types import MappingProxyType
from typing import Final, NamedTuple

__all__ = ["ERRORS", "ErrorCode", "ErrorInfo", "PinfoldError", "error_body"]


class ErrorCode(StrEnum):
    """Every code an API answers. Its value is the wire string; the members
    shared with the placement core (`RefusalCode`) have the same values."""

    # the request
    INVALID_REQUEST = "invalid request"
    UNAUTHORIZED = "unauthorized"
    PAYLOAD_TOO_LARGE = "payload too large"
    REQUEST_TIMEOUT = "request timeout"
    NOT_FOUND = "not found"
    METHOD_NOT_ALLOWED = "method not allowed"
    # VMs
    UNKNOWN_VM = "unknown vm"
    DUPLICATE_NAME = "duplicate name"
    INVALID = "invalid"
    # networks
    UNKNOWN_NETWORK = "unknown network"
    MAC_IN_USE = "mac in use"
    # placement (the placement core's refusal codes, and the controller's summary)
    NOT_ENOUGH_CPU = "not enough cpu"
    NOT_ENOUGH_MEMORY = "not enough memory"
    HOST_UNAVAILABLE = "host unavailable"
    NO_HOST = "no host"
    GROUP_POLICY = "group policy"
    # VM groups (the controller)
    UNKNOWN_GROUP = "unknown group"
    GROUP_EXISTS = "group exists"
    GROUP_IN_USE = "group in use"
    # hosts (the controller)
    UNKNOWN_HOST = "unknown host"
    UNKNOWN_TOPOLOGY = "unknown topology"
    HOST_ENROLLED = "host enrolled"
    HOST_IN_USE = "host in use"
    CREDENTIAL_REVOKED = "credential revoked"
    # failures of what the daemon relies on
    AGENT_FAILED = "agent failed"
    HYPERVISOR_FAILED = "hypervisor failed"
    MIGRATION_FAILED = "migration failed"
    MIGRATION_TIMED_OUT = "migration timed out"
    DISK_FAILED = "disk failed"
    STALE_PINS = "stale pins"
    SERVICE_UNAVAILABLE = "service unavailable"
    # a cloud behind the agent or RAPID (pinfold.openstack): its refusals and failures
    QUOTA_EXCEEDED = "quota exceeded"
    NO_VALID_HOST = "no valid host"
    UNKNOWN_FLAVOR = "unknown flavor"
    UNKNOWN_IMAGE = "unknown image"
    CLOUD_AUTH_FAILED = "cloud auth failed"
    CLOUD_UNREACHABLE = "cloud unreachable"

    @property
    def status(self) -> HTTPStatus:
        """The HTTP status an API answers this code with."""
        return ERRORS[self].status

    @property
    def message(self) -> str:
        """What the code means, in one stable line (the `detail` says more)."""
        return ERRORS[self].message


class ErrorInfo(NamedTuple):
    status: HTTPStatus
    message: str


_CONFLICT = HTTPStatus.CONFLICT
_BAD_GATEWAY = HTTPStatus.BAD_GATEWAY

#: code -> (HTTP status, message); docs/controller.md ("Error codes") shows the same table
ERRORS: Final[Mapping[ErrorCode, ErrorInfo]] = MappingProxyType(
    {
        ErrorCode.INVALID_REQUEST: ErrorInfo(
            HTTPStatus.BAD_REQUEST, "the request is malformed or not allowed"
        ),
        ErrorCode.UNAUTHORIZED: ErrorInfo(HTTPStatus.UNAUTHORIZED, "a valid token or credential is required"),
        ErrorCode.PAYLOAD_TOO_LARGE: ErrorInfo(
            HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "the request body is too large"
        ),
        ErrorCode.REQUEST_TIMEOUT: ErrorInfo(
            HTTPStatus.REQUEST_TIMEOUT, "the request did not arrive in time"
        ),
        ErrorCode.NOT_FOUND: ErrorInfo(HTTPStatus.NOT_FOUND, "no such route or file"),
        ErrorCode.METHOD_NOT_ALLOWED: ErrorInfo(
            HTTPStatus.METHOD_NOT_ALLOWED, "the route does not take this method"
        ),
        ErrorCode.UNKNOWN_VM: ErrorInfo(HTTPStatus.NOT_FOUND, "no VM of that name"),
        ErrorCode.DUPLICATE_NAME: ErrorInfo(_CONFLICT, "a VM of that name exists already"),
        ErrorCode.INVALID: ErrorInfo(_CONFLICT, "the action does not fit the VM's state"),
        ErrorCode.UNKNOWN_NETWORK: ErrorInfo(
            HTTPStatus.UNPROCESSABLE_ENTITY, "the host has no network or bridge of that name"
        ),
        ErrorCode.MAC_IN_USE: ErrorInfo(_CONFLICT, "another NIC has that MAC address"),
        ErrorCode.NOT_ENOUGH_CPU: ErrorInfo(_CONFLICT, "the host has not enough free CPUs at the VM's level"),
        ErrorCode.NOT_ENOUGH_MEMORY: ErrorInfo(_CONFLICT, "the host has not enough free memory"),
        ErrorCode.HOST_UNAVAILABLE: ErrorInfo(_CONFLICT, "the host takes no VMs (down, draining, unusable)"),
        ErrorCode.NO_HOST: ErrorInfo(_CONFLICT, "no host can take the VM (see hosts)"),
        ErrorCode.GROUP_POLICY: ErrorInfo(
            _CONFLICT, "the VM's group rules the host out (affinity, anti-affinity)"
        ),
        ErrorCode.UNKNOWN_GROUP: ErrorInfo(HTTPStatus.NOT_FOUND, "no VM group of that name"),
        ErrorCode.GROUP_EXISTS: ErrorInfo(_CONFLICT, "a VM group of that name exists with another policy"),
        ErrorCode.GROUP_IN_USE: ErrorInfo(_CONFLICT, "the VM group still has VMs"),
        ErrorCode.UNKNOWN_HOST: ErrorInfo(HTTPStatus.NOT_FOUND, "no host of that id"),
        ErrorCode.UNKNOWN_TOPOLOGY: ErrorInfo(
            _CONFLICT, "the controller holds no topology of that digest: send the document"
        ),
        ErrorCode.HOST_ENROLLED: ErrorInfo(
            _CONFLICT, "the host is enrolled and registers with its own credential"
        ),
        ErrorCode.HOST_IN_USE: ErrorInfo(_CONFLICT, "the host still has VMs"),
        ErrorCode.CREDENTIAL_REVOKED: ErrorInfo(
            HTTPStatus.FORBIDDEN, "the host was removed: its credential is revoked"
        ),
        ErrorCode.AGENT_FAILED: ErrorInfo(_BAD_GATEWAY, "the host's agent failed or did not answer"),
        ErrorCode.HYPERVISOR_FAILED: ErrorInfo(_BAD_GATEWAY, "the hypervisor failed"),
        ErrorCode.MIGRATION_FAILED: ErrorInfo(
            _BAD_GATEWAY, "the live migration failed: the VM runs where it was"
        ),
        ErrorCode.MIGRATION_TIMED_OUT: ErrorInfo(
            HTTPStatus.GATEWAY_TIMEOUT,
            "the live migration did not finish in time: cancelled, the VM runs where it was",
        ),
        ErrorCode.DISK_FAILED: ErrorInfo(_BAD_GATEWAY, "a disk could not be made or read"),
        ErrorCode.STALE_PINS: ErrorInfo(
            HTTPStatus.SERVICE_UNAVAILABLE, "no CPUs are handed out while a VM cannot be re-pinned"
        ),
        ErrorCode.SERVICE_UNAVAILABLE: ErrorInfo(
            HTTPStatus.SERVICE_UNAVAILABLE, "too many connections at once"
        ),
        ErrorCode.QUOTA_EXCEEDED: ErrorInfo(_CONFLICT, "the cloud's quota for the project is used up"),
        ErrorCode.NO_VALID_HOST: ErrorInfo(_CONFLICT, "the cloud's scheduler found no host for the VM"),
        ErrorCode.UNKNOWN_FLAVOR: ErrorInfo(
            HTTPStatus.UNPROCESSABLE_ENTITY, "the cloud has no flavor of that name or id, or none fits"
        ),
        ErrorCode.UNKNOWN_IMAGE: ErrorInfo(
            HTTPStatus.UNPROCESSABLE_ENTITY, "the cloud has no image of that name or id"
        ),
        ErrorCode.CLOUD_AUTH_FAILED: ErrorInfo(_BAD_GATEWAY, "the cloud refused pinfold's credentials"),
        ErrorCode.CLOUD_UNREACHABLE: ErrorInfo(_BAD_GATEWAY, "the cloud did not answer"),
    }
)


def error_body(code: str, detail: str) -> dict[str, object]:
    """A JSON error's fields: the code twice (`error` for the clients written
    before `code`), and the detail. `code` is an `ErrorCode` but for the
    framework's answers of a status that has none (see above)."""
    return {"error": code, "code": code, "detail": detail}


class PinfoldError(Exception):
    """The root of pinfold's errors that an API answers: `code` is an
    `ErrorCode` (a string that is none raises `ValueError` here), `detail` the
    words for people. `str(error)` is "code: detail" ("code" without detail)."""

    def __init__(self, code: ErrorCode | str, detail: str = "") -> None:
        self.code = ErrorCode(code)
        self.detail = detail
        super().__init__(f"{self.code}: {detail}" if detail else self.code.value)
