"""Bearer tokens kept in a data directory: created once, random, mode 0600."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["MIN_TOKEN_LENGTH", "TokenError", "token_in", "write_token"]

#: the shortest token accepted from a file or a setting: an empty or short one
#: (a file truncated by a crash, say) would open every guarded route
MIN_TOKEN_LENGTH = 16


class TokenError(ValueError):
    """A token file that holds no usable token."""


def token_in(path: Path) -> str:
    """The token stored at `path`, or a new random one written there.

    The new file is written whole under a temporary name (mode 0600 from the
    start) and then linked into place, so that a crash never leaves an empty
    token file behind and two processes starting together agree on one token."""
    if not path.exists():
        _create(path, secrets.token_urlsafe(32))
    token = path.read_text(encoding="utf-8").strip()
    if len(token) < MIN_TOKEN_LENGTH:
        raise TokenError(
            f"{path} holds no usable token (fewer than {MIN_TOKEN_LENGTH} characters): "
            "delete it to have a new one made, or write one there"
        )
    return token


def write_token(path: Path, token: str) -> None:
    """Write `token` to `path` (mode 0600), replacing what was there: whole
    or not at all, so a crash leaves the old token or the new one, never a
    truncated file (a host's credential, given once, must not be half lost)."""
    with _scratch(path, token) as scratch:
        try:
            os.replace(scratch, path)
        except OSError as exc:
            raise TokenError(f"cannot write {path}: {exc}") from exc


def _create(path: Path, token: str) -> None:
    """Write `token` to `path` unless another process got there first."""
    with _scratch(path, token) as scratch:
        try:
            os.link(scratch, path)
        except FileExistsError:
            pass  # another process made it first: its token stands
        except OSError as exc:  # a filesystem without hard links (vfat, some FUSE mounts)
            raise TokenError(f"cannot create {path}: {exc}") from exc


@contextmanager
def _scratch(path: Path, token: str) -> Iterator[Path]:
    """`token` written and synced to a new file beside `path`, mode 0600 from
    the start, removed afterwards unless the caller moved it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = path.with_name(f".{path.name}.{secrets.token_hex(8)}")
    descriptor = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(token + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        yield scratch
    finally:
        scratch.unlink(missing_ok=True)
