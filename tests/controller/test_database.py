"""Engines and migrations: the migrated schema is the models' schema, on
SQLite and PostgreSQL, and SQLite is set up as the store relies on."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, event, inspect, text

from pinfold.controller import database
from pinfold.controller.database import HEAD_REVISION, WRITE, alembic_config, connect, create, upgrade
from pinfold.controller.feasibility import Feasibility
from pinfold.controller.models import Base
from pinfold.controller.store import ControllerStore
from pinfold.model.vm import VMRequest, same_first_boot


def differences(engine: Engine) -> list[object]:
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return list(compare_metadata(context, Base.metadata))


def test_migrations_create_the_schema_of_the_models(engine: Engine) -> None:
    assert differences(engine) == []
    assert set(inspect(engine).get_table_names()) >= {"hosts", "vms", "events", "vm_sequence"}


def test_schema_comparison_sees_a_missing_schema(database_url: str) -> None:
    """The comparison above is live: an unmigrated database differs from the models."""
    engine = create(database_url)
    try:
        added = {
            diff[1].name for diff in differences(engine) if isinstance(diff, tuple) and diff[0] == "add_table"
        }
        assert added == set(Base.metadata.tables)
    finally:
        engine.dispose()


def test_connect_leaves_the_database_at_head_and_again_is_a_no_op(database_url: str) -> None:
    for _ in range(2):  # a second controller starting on the same database
        engine = connect(database_url)
        try:
            with engine.connect() as connection:
                config = alembic_config(connection)
                head = ScriptDirectory.from_config(config).get_current_head()
                assert MigrationContext.configure(connection).get_current_revision() == head == "0010"
        finally:
            engine.dispose()


def test_a_database_at_head_is_opened_without_alembic(database_url: str) -> None:
    """HEAD_REVISION is Alembic's head (a new migration must change it), and a
    controller opening a database at head never imports Alembic: its import
    and its scripts were a tenth of a restart's imports."""
    connect(database_url).dispose()
    engine = create(database_url)
    try:
        with engine.connect() as connection:
            assert ScriptDirectory.from_config(alembic_config(connection)).get_current_head() == HEAD_REVISION
    finally:
        engine.dispose()
    code = (
        "import sys; from pinfold.controller.database import connect; "
        f"connect({database_url!r}).dispose(); print('alembic' in sys.modules)"
    )
    answer = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert answer.stdout.strip() == "False", answer.stderr


def test_downgrade_to_base_then_upgrade_again(engine: Engine) -> None:
    with engine.connect() as connection, connection.begin():
        command.downgrade(alembic_config(connection), "base")
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    upgrade(engine)
    assert differences(engine) == []


def downgrade(engine: Engine, revision: str) -> None:
    """Down to `revision`, as a writer (SQLite: the write lock taken at BEGIN)."""
    with engine.connect() as connection:
        connection.execution_options(**{WRITE: True})
        with connection.begin():
            command.downgrade(alembic_config(connection), revision)


@pytest.mark.parametrize("revision", ["0002", "0001"])
def test_downgrade_keeps_the_hosts_and_vms_of_a_database_in_use(
    engine: Engine, i7_topology: dict[str, Any], revision: str
) -> None:
    """Dropping a column of `hosts` must not rebuild the table: with foreign
    keys on, SQLite refuses to drop a table that `vms.host_id` refers to."""
    store = ControllerStore(engine)
    store.register_host("h1", "http://h1:8099", i7_topology, 6, 0, 1000.0, 10.0)
    store.reserve(VMRequest("v1", 1, 512), "h1", Feasibility(), 1000.0)
    downgrade(engine, revision)
    columns = {column["name"] for column in inspect(engine).get_columns("hosts")}
    assert "heartbeat_period_s" not in columns
    assert ("down" in columns) == (revision == "0002")
    with engine.connect() as connection:
        assert connection.exec_driver_sql("SELECT id FROM hosts").scalars().all() == ["h1"]
        assert connection.exec_driver_sql("SELECT name, host_id FROM vms").all() == [("v1", "h1")]
    upgrade(engine)
    assert differences(engine) == []
    assert [vm.name for vm in ControllerStore(engine).vms("h1")] == ["v1"]


def test_sqlite_is_durable_and_checks_foreign_keys(tmp_path: Path) -> None:
    engine = connect(f"sqlite:///{tmp_path / 'sub' / 'controller.db'}")
    try:
        with engine.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert connection.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
            assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    finally:
        engine.dispose()


def test_sqlite_write_transaction_takes_the_write_lock_at_begin(tmp_path: Path) -> None:
    path = tmp_path / "controller.db"
    engine = connect(f"sqlite:///{path}")
    other = sqlite3.connect(path, timeout=0, isolation_level=None)
    try:
        with engine.connect() as connection:
            connection.execution_options(**{WRITE: True})
            with connection.begin(), pytest.raises(sqlite3.OperationalError, match="locked"):
                other.execute("BEGIN IMMEDIATE")
            other.execute("BEGIN IMMEDIATE")  # free again once committed
            other.execute("ROLLBACK")
    finally:
        other.close()
        engine.dispose()


def test_sqlite_read_transaction_leaves_writers_free(tmp_path: Path) -> None:
    path = tmp_path / "controller.db"
    engine = connect(f"sqlite:///{path}")
    other = sqlite3.connect(path, timeout=0, isolation_level=None)
    try:
        with engine.connect() as connection, connection.begin():
            connection.exec_driver_sql("SELECT count(*) FROM hosts").scalar()
            other.execute("BEGIN IMMEDIATE")
            other.execute("ROLLBACK")
    finally:
        other.close()
        engine.dispose()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        pytest.param("sqlite://", "must be a file", id="sqlite-memory-default"),
        pytest.param("sqlite:///:memory:", "must be a file", id="sqlite-memory"),
        pytest.param("mysql://user@localhost/db", "unsupported database", id="mysql"),
    ],
)
def test_connect_refuses_databases_the_controller_cannot_use(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        connect(url)


def test_bare_postgresql_url_uses_psycopg() -> None:
    engine = create("postgresql://user:secret@localhost/db")
    try:
        assert engine.dialect.driver == "psycopg"
    finally:
        engine.dispose()


def test_the_database_keeps_its_connections_between_bursts(database_url: str) -> None:
    """Twelve connections held at once, three times over (bursts of requests),
    with a pool of twelve: twelve connections are opened, once (SQLAlchemy's
    default pool kept five and opened the other seven again each time: 26; a
    PostgreSQL server process each, a SQLite file opened and its schema read)."""
    engine = connect(database_url, pool_size=12)
    engine.dispose()  # the migration's connection: from here on, every one is counted
    opened: list[object] = []
    event.listen(engine, "connect", lambda connection, _record: opened.append(connection))
    try:
        for _ in range(3):
            held = [engine.connect() for _ in range(12)]
            for connection in held:
                assert connection.exec_driver_sql("SELECT 1").scalar() == 1
                connection.close()
        assert len(opened) == 12
        assert (engine.pool.size(), engine.pool.checkedout()) == (12, 0)  # type: ignore[attr-defined]
    finally:
        engine.dispose()


def _server_ends_every_connection_to(url: str) -> None:
    """What a server restart or an administrator does to the controller's
    connections: the server side closes them, the pool does not know."""
    admin = create(url).execution_options(isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            ended = connection.exec_driver_sql(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                " AND backend_type = 'client backend'"
            )
            assert ended.scalar()
    finally:
        admin.dispose()


def test_a_postgresql_connection_the_server_closed_is_replaced_before_use(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pooled connection idle past `PING_AFTER_IDLE_S` is pinged when taken
    and, closed by the server, replaced: the statement runs (without the
    ping it fails with 'terminating connection due to administrator
    command'). The pool then drops its other connections too as they are
    taken, a ping or not: the second one here is taken as used a moment
    ago, unpinged, and works."""
    engine = connect(postgres_url, pool_size=2)
    try:
        with engine.connect() as one, engine.connect() as two:
            assert one.exec_driver_sql("SELECT 1").scalar() == two.exec_driver_sql("SELECT 1").scalar() == 1
        _server_ends_every_connection_to(postgres_url)
        monkeypatch.setattr(database, "PING_AFTER_IDLE_S", 0.0)  # idle long enough, without waiting
        with engine.connect() as connection:
            assert connection.exec_driver_sql("SELECT 2").scalar() == 2
            monkeypatch.setattr(database, "PING_AFTER_IDLE_S", 3600.0)  # no more pings
            with engine.connect() as other:
                assert other.exec_driver_sql("SELECT 3").scalar() == 3
    finally:
        engine.dispose()


def test_a_postgresql_connection_in_use_a_moment_ago_is_not_pinged(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLAlchemy's `pool_pre_ping` sent a ping before every transaction: a
    round trip to the server each (issue 16, fifteenth round). Only a
    connection idle for longer than `PING_AFTER_IDLE_S` is pinged now."""
    engine = connect(postgres_url, pool_size=2)
    pings: list[object] = []
    ping = engine.dialect.do_ping

    def counted(dbapi_connection: Any) -> bool:
        pings.append(dbapi_connection)
        return ping(dbapi_connection)

    monkeypatch.setattr(engine.dialect, "do_ping", counted)
    try:
        for _ in range(10):
            with engine.connect() as connection:
                assert connection.exec_driver_sql("SELECT 1").scalar() == 1
        assert pings == []
        monkeypatch.setattr(database, "PING_AFTER_IDLE_S", 0.0)
        for _ in range(3):
            with engine.connect() as connection:
                assert connection.exec_driver_sql("SELECT 1").scalar() == 1
        assert len(pings) == 3
    finally:
        engine.dispose()


def test_a_single_read_opens_no_transaction_on_postgresql(postgres_url: str) -> None:
    """The store's one-statement reads (a VM, a host, a credential) run in
    autocommit on PostgreSQL: the statement is its own transaction (it began
    when the query did), with no BEGIN and ROLLBACK round trips around it.
    A read in a session still runs in a transaction, begun before it."""
    store = ControllerStore(connect(postgres_url))
    started = text("SELECT xact_start = query_start FROM pg_stat_activity WHERE pid = pg_backend_pid()")
    try:
        assert [tuple(row) for row in store._fetch(started)] == [(True,)]
        with store._read() as session:
            assert session.execute(started).scalar() is False
        assert [tuple(row) for row in store._fetch(started)] == [(True,)]  # the pool's reset kept nothing
    finally:
        store.engine.dispose()


def test_0009_keeps_the_vms_and_leaves_their_first_boot_digest_unknown(
    engine: Engine, i7_topology: dict[str, Any]
) -> None:
    """A VM reserved before 0009 has no digest of its keys and user data
    (NULL, not a digest of none): a repeat with any is taken for the same
    request, as before. One reserved after has one, salted (two VMs with the
    same inputs have unrelated digests), and only its own inputs match it."""
    store = ControllerStore(engine)
    store.register_host("h1", "http://h1:8099", i7_topology, 6, 0, 1000.0, 10.0)
    store.reserve(VMRequest("old", 1, 512), "h1", Feasibility(), 1000.0)
    downgrade(engine, "0008")
    assert "first_boot_digest" not in {column["name"] for column in inspect(engine).get_columns("vms")}
    upgrade(engine)
    assert differences(engine) == []
    old = store.vm("old")
    assert old is not None
    assert old.first_boot_digest is None
    assert same_first_boot(old.first_boot_digest, ("ssh-ed25519 AAAA x",), "anything")
    keyed = [VMRequest(name, 1, 512, ssh_keys=("k1", "k2"), user_data="#!/bin/sh\n") for name in ("a", "b")]
    for request in keyed:
        store.reserve(request, "h1", Feasibility(), 1001.0)
    a, b = store.vm("a"), store.vm("b")
    assert a is not None
    assert b is not None
    assert a.first_boot_digest != b.first_boot_digest
    assert same_first_boot(a.first_boot_digest, ("k2", "k1"), "#!/bin/sh\n")
    assert not same_first_boot(a.first_boot_digest, ("k1",), "#!/bin/sh\n")
    assert not same_first_boot(a.first_boot_digest, ("k1", "k2"), "#!/bin/sh\n ")
