"""openstacksdk's and keystoneauth's exceptions, translated once into
pinfold's error codes (`PinfoldError`), with the cloud's own words as the
detail, in one line, and never a traceback.

| the cloud says | code |
|---|---|
| 401, or keystoneauth's `Unauthorized` / auth plugin errors | `cloud auth failed` |
| 403 or 413 naming a quota ("Quota exceeded for instances") | `quota exceeded` |
| a 403 naming a policy or authorization ("Policy doesn't allow ...") | `cloud auth failed` |
| another 403 ("Only volume-backed servers are allowed for flavors with zero disk") | `invalid request` |
| 400/404 naming a flavor, an image, a network | `unknown flavor`, `unknown image`, `unknown network` |
| another 404 | the caller's `missing` code (`unknown vm` for a server) |
| 409 (the server's state forbids the action) | `invalid` |
| another 400 | `invalid request` |
| a server's fault "No valid host was found" | `no valid host` |
| no answer (connection refused, timeout, DNS) | `cloud unreachable` |
| 5xx, or anything else of openstacksdk | `hypervisor failed` |

Why not more: Nova's answers carry no machine-readable cause beyond the
status, so the few causes a caller acts on are recognised by Nova's stable
phrases ("could not be found", "Quota exceeded", "No valid host").
"""

from __future__ import annotations

import re

import requests
from keystoneauth1 import exceptions as ksa
from openstack import exceptions as sdk

from pinfold.model.errors import ErrorCode, PinfoldError

__all__ = ["cloud_words", "fault_error", "translate"]

#: the longest detail kept (a Nova fault's message can carry a whole traceback's worth)
MAX_DETAIL = 400

_MISSING_THING = (
    (re.compile(r"\bflavor(ref)?\b", re.IGNORECASE), ErrorCode.UNKNOWN_FLAVOR),
    (re.compile(r"\bimage(ref)?\b", re.IGNORECASE), ErrorCode.UNKNOWN_IMAGE),
    (re.compile(r"\bnetwork\b", re.IGNORECASE), ErrorCode.UNKNOWN_NETWORK),
)
_NOT_FOUND = re.compile(
    r"could not be found|not found|can ?not find|invalid imageref|invalid flavorref", re.IGNORECASE
)
_QUOTA = re.compile(r"quota", re.IGNORECASE)
_POLICY = re.compile(r"polic(y|ies)|authoriz|permission|forbidden", re.IGNORECASE)
_NO_VALID_HOST = re.compile(r"no valid host", re.IGNORECASE)


def cloud_words(error: BaseException) -> str:
    """What the cloud (or the library) said, in one line of at most MAX_DETAIL characters."""
    if isinstance(error, sdk.HttpException):
        said = error.details or error.message or ""
        words = f"{error.status_code}: {said}" if error.status_code else str(said)
    elif isinstance(error, ksa.ClientException):
        words = error.message or type(error).__name__
    else:
        words = str(error) or type(error).__name__
    line = " ".join(str(words).split())
    return line if len(line) <= MAX_DETAIL else line[: MAX_DETAIL - 3] + "..."


def fault_error(message: str) -> PinfoldError:
    """A server gone to ERROR, by its fault's message (Nova's words)."""
    words = " ".join(message.split())[:MAX_DETAIL] or "the server went to ERROR without a fault"
    if _NO_VALID_HOST.search(words):
        return PinfoldError(ErrorCode.NO_VALID_HOST, words)
    if _QUOTA.search(words):
        return PinfoldError(ErrorCode.QUOTA_EXCEEDED, words)
    return PinfoldError(ErrorCode.HYPERVISOR_FAILED, words)


def translate(error: BaseException, missing: ErrorCode = ErrorCode.UNKNOWN_VM) -> PinfoldError:
    """The `PinfoldError` for an exception of openstacksdk, keystoneauth or
    requests (see the module's table); `missing` is the code of a 404 that
    names nothing more precise (the thing the caller looked for)."""
    if isinstance(error, PinfoldError):
        return error
    wrapped = error.__cause__ or error.__context__
    if type(error) is sdk.SDKException and isinstance(
        wrapped, ksa.ClientException | requests.RequestException
    ):
        return translate(wrapped, missing)  # `Connection.authorize` wraps keystoneauth's error in a bare one
    words = cloud_words(error)
    if isinstance(error, ksa.ConnectionError | ksa.DiscoveryFailure | requests.ConnectionError):
        return PinfoldError(ErrorCode.CLOUD_UNREACHABLE, words)
    if isinstance(error, ksa.Unauthorized | ksa.AuthorizationFailure | ksa.MissingRequiredOptions):
        return PinfoldError(ErrorCode.CLOUD_AUTH_FAILED, words)
    if isinstance(error, ksa.HttpError):
        return _by_status(error.http_status, words, missing)
    if isinstance(error, sdk.ResourceFailure) and _NO_VALID_HOST.search(words):
        return PinfoldError(ErrorCode.NO_VALID_HOST, words)
    if isinstance(error, sdk.HttpException) and error.status_code is not None:
        return _by_status(error.status_code, words, missing)
    return PinfoldError(ErrorCode.HYPERVISOR_FAILED, words)


def _by_status(status: int, words: str, missing: ErrorCode) -> PinfoldError:
    if status == 401:
        return PinfoldError(ErrorCode.CLOUD_AUTH_FAILED, words)
    if status in (403, 413) and _QUOTA.search(words):
        return PinfoldError(ErrorCode.QUOTA_EXCEEDED, words)
    if status == 403 and _POLICY.search(words):
        return PinfoldError(ErrorCode.CLOUD_AUTH_FAILED, words)
    if status in (400, 404) and _NOT_FOUND.search(words):
        for pattern, code in _MISSING_THING:
            if pattern.search(words):
                return PinfoldError(code, words)
    if status == 404:
        return PinfoldError(missing, words)
    if status == 409:
        return PinfoldError(ErrorCode.INVALID, words)
    if 400 <= status < 500:
        return PinfoldError(ErrorCode.INVALID_REQUEST, words)
    return PinfoldError(ErrorCode.HYPERVISOR_FAILED, words)
