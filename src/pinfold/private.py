"""Files only their owner may read: the databases hold what the tokens guard
(VMs, hosts and their addresses), so they are 0600 like the tokens."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

__all__ = ["private_database"]

#: the files SQLite keeps beside a database in WAL mode
SQLITE_COMPANIONS = ("-wal", "-shm", "-journal")


def private_database(path: Path) -> None:
    """Make the SQLite database `path` (and its directory) if need be, mode
    0600, before SQLite opens it; and put an older one, or its companions,
    back to 0600. SQLite creates a database's -wal and -shm files with the
    database's own mode, so they follow, whatever the umask."""
    path.parent.mkdir(parents=True, exist_ok=True)
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
    for file in (path, *(path.with_name(path.name + suffix) for suffix in SQLITE_COMPANIONS)):
        with contextlib.suppress(FileNotFoundError):
            file.chmod(0o600)
