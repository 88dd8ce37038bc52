"""Fixtures for the controller: a fresh database per test, both a SQLite file
and a PostgreSQL database, so every store test runs on the two backends.

PostgreSQL comes from PINFOLD_TEST_POSTGRES_URL (scripts/postgres-up prints
it; scripts/test exports it as root). Without it the PostgreSQL cases skip,
except in CI, which sets PINFOLD_REQUIRE_POSTGRES=1 to make them fail instead.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, make_url
from sqlalchemy.exc import OperationalError

import pinfold
from pinfold.controller.database import connect, create
from pinfold.controller.store import ControllerStore

POSTGRES_URL = os.environ.get("PINFOLD_TEST_POSTGRES_URL", "")
REQUIRE_POSTGRES = os.environ.get("PINFOLD_REQUIRE_POSTGRES") == "1"
I7_TOPOLOGY = Path(pinfold.__file__).parent / "data" / "topology_i7-1185G7.json"


def postgres_or_skip(reason: str) -> None:
    if REQUIRE_POSTGRES:
        pytest.fail(f"{reason} (PINFOLD_REQUIRE_POSTGRES=1)")
    pytest.skip(reason)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of an empty database, made for this test and dropped after it."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'controller.db'}"
    else:
        yield from _postgres_database()


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """`database_url` on PostgreSQL only, for what only PostgreSQL has."""
    yield from _postgres_database()


def _postgres_database() -> Iterator[str]:
    if not POSTGRES_URL:
        postgres_or_skip("PINFOLD_TEST_POSTGRES_URL is not set: run scripts/postgres-up as root")
    # CREATE DATABASE cannot run in a transaction; the name is made here and
    # quoted by the dialect all the same.
    admin = create(POSTGRES_URL).execution_options(isolation_level="AUTOCOMMIT")
    name = f"pinfold_test_{uuid.uuid4().hex}"
    quoted = admin.dialect.identifier_preparer.quote_identifier(name)
    try:
        with admin.connect() as connection:
            connection.exec_driver_sql(f"CREATE DATABASE {quoted}")
    except OperationalError as exc:
        admin.dispose()
        postgres_or_skip(f"cannot create a database on {make_url(POSTGRES_URL)!s}: {exc}")
    try:
        yield make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.exec_driver_sql(f"DROP DATABASE IF EXISTS {quoted} WITH (FORCE)")
        admin.dispose()


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = connect(database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def store(engine: Engine) -> ControllerStore:
    return ControllerStore(engine)


@pytest.fixture(scope="session")
def i7_topology() -> dict[str, Any]:
    """SlackVM's topology of an i7-1185G7: 8 CPUs, 31776 MiB."""
    document: dict[str, Any] = json.loads(I7_TOPOLOGY.read_text(encoding="utf-8"))
    return document
