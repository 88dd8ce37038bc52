"""Bearer tokens kept in a data directory: created once, random, mode 0600."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

__all__ = ["token_in"]


def token_in(path: Path) -> str:
    """The token stored at `path`, or a new random one written there (the
    file created with mode 0600 in one step, so it is never readable by others)."""
    if path.exists():
        return path.read_text(encoding="utf-8").strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(token + "\n")
    return token
