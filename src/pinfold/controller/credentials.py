"""Host credentials: each enrolled host's own bearer token, issued by the
controller when the host enrols with the cluster's enrolment token.

Only the credential's SHA-256 is stored (a database leak then gives no
heartbeat rights); a credential is 32 random bytes, so a plain hash is
enough (nothing to guess, no need for a slow one). Hashes are compared in
constant time."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

__all__ = ["Enrolment", "HostCredential", "Proof", "digest", "matches", "new_credential"]


@dataclass(frozen=True, slots=True)
class Enrolment:
    """A registration made with the enrolment token: it may only add a host
    that holds no credential yet, which then gets the one of `digest`."""

    digest: str


@dataclass(frozen=True, slots=True)
class HostCredential:
    """A registration made with a host credential (its SHA-256 `digest`):
    good only for the host it was issued to."""

    digest: str


Proof = Enrolment | HostCredential


def new_credential() -> tuple[str, str]:
    """A fresh credential and its digest."""
    credential = secrets.token_urlsafe(32)
    return credential, digest(credential)


def digest(credential: str) -> str:
    return hashlib.sha256(credential.encode()).hexdigest()


def matches(stored: str | None, presented: str) -> bool:
    """Whether a presented digest is the stored one (never when none is stored)."""
    return stored is not None and hmac.compare_digest(stored.encode(), presented.encode())
