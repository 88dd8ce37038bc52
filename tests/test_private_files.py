"""The databases hold what the tokens guard (VMs, hosts, addresses): their
files, and SQLite's -wal and -shm files beside them, are 0600 like the tokens,
whatever the umask."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from pinfold.agent.store import Store
from pinfold.controller.database import connect
from pinfold.rapid.state import RapidState


@pytest.fixture(params=[0o022, 0o000])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    previous = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(previous)


def modes(database: Path) -> dict[str, str]:
    """The mode of the database and of each of SQLite's files beside it."""
    found = {}
    for suffix in ("", "-wal", "-shm"):
        path = database.with_name(database.name + suffix)
        assert path.exists(), f"{path} was not made: the test would prove nothing"
        found[path.name] = oct(stat.S_IMODE(path.stat().st_mode))
    return found


def expected(database: Path) -> dict[str, str]:
    return {database.name + suffix: "0o600" for suffix in ("", "-wal", "-shm")}


def test_the_controller_database_is_private(tmp_path: Path, umask: int) -> None:
    database = tmp_path / "controller.db"
    engine = connect(f"sqlite:///{database}")
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
            assert modes(database) == expected(database)
    finally:
        engine.dispose()


def test_the_agent_store_is_private(tmp_path: Path, umask: int) -> None:
    database = tmp_path / "agent.db"
    store = Store(database)
    try:
        assert modes(database) == expected(database)
    finally:
        store.close()


def test_the_rapid_state_is_private(tmp_path: Path, umask: int) -> None:
    database = tmp_path / "rapid.db"
    state = RapidState(database)
    try:
        assert modes(database) == expected(database)
    finally:
        state.close()


def test_an_existing_database_made_readable_to_all_is_made_private_again(tmp_path: Path) -> None:
    database = tmp_path / "agent.db"
    Store(database).close()
    database.chmod(0o644)
    store = Store(database)
    try:
        assert modes(database) == expected(database)
    finally:
        store.close()
