"""Engines for the controller's database, configured once, and its migrations.

SQLite (a file: embedded, zero setup) or PostgreSQL (by URL: production, and
several controller replicas on one database). What the store's correctness
leans on is set here, in one place:

- SQLite: WAL (readers do not wait for the writer), `synchronous=FULL` (a
  commit is on disk before it is acknowledged), foreign keys on, and a busy
  timeout so that writers queue instead of failing. Python's sqlite3 module
  would issue a deferred BEGIN only before the first write, so SQLAlchemy
  issues BEGIN itself (the pysqlite recipe of SQLAlchemy's SQLite docs):
  `BEGIN IMMEDIATE` for connections marked with the `WRITE` execution option,
  so a write transaction holds the database's write lock from its first read
  (what `ControllerStore.reserve` relies on), plain `BEGIN` for reads, and
  none for connections marked `ONE_STATEMENT` (a single SELECT reads one
  snapshot by itself; BEGIN and COMMIT around it were two more calls into
  SQLite, each a wait for the GIL when requests run side by side).
- PostgreSQL: READ COMMITTED, stated rather than assumed: after waiting for a
  host's row lock, `reserve` must see the VMs the previous holder committed,
  which REPEATABLE READ's older snapshot would hide. A connection for one
  statement (`one_statement`) runs in autocommit: no BEGIN and ROLLBACK
  around the one SELECT, each a round trip to the server.

Migrations run at connect, to head, under a lock (the SQLite write lock, a
PostgreSQL advisory lock) so that replicas starting together do not race.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import URL, Connection, Engine, create_engine, event, func, inspect, make_url, select
from sqlalchemy.exc import InvalidatePoolError
from sqlalchemy.orm import Session, sessionmaker

from pinfold.model.defaults import DATABASE_POOL_SIZE
from pinfold.private import private_database

if TYPE_CHECKING:
    from alembic.config import Config

__all__ = [
    "ONE_STATEMENT",
    "WRITE",
    "alembic_config",
    "connect",
    "create",
    "one_statement",
    "sessions",
    "upgrade",
]

#: Execution option marking a connection whose transactions will write.
WRITE = "pinfold_write"
#: Execution option marking a connection that runs one read-only statement, alone.
ONE_STATEMENT = "pinfold_one_statement"

#: How long a SQLite writer waits for the write lock before failing.
SQLITE_BUSY_TIMEOUT_S = 30
#: A PostgreSQL connection idle in the pool for longer than this is pinged
#: before it is handed out (see `_create_postgresql`).
PING_AFTER_IDLE_S = 1.0
#: Where a pooled connection's record keeps when it came back to the pool.
_RETURNED = "pinfold_returned"

#: pg_advisory_xact_lock key serialising migrations ("pinfold" in ASCII).
MIGRATION_LOCK_KEY = 0x70696E666F6C64

SCRIPT_LOCATION = "pinfold.controller:migrations"
#: the newest migration's revision: a database already there is not handed to
#: Alembic at all (its import and its scripts were a tenth of a restart's
#: imports). tests/controller/test_database.py checks that it is Alembic's head:
#: a new migration changes it.
HEAD_REVISION = "0010"


def connect(url: str | URL, pool_size: int = DATABASE_POOL_SIZE) -> Engine:
    """An engine on `url`, its schema migrated to head.

    `sqlite:///path/controller.db` (the parent directory is created) or
    `postgresql+psycopg://user:password@host/db` (a bare `postgresql://` uses
    psycopg too, the driver pinfold depends on), with `pool_size` connections
    kept open (see `_create_sqlite` and `_create_postgresql`).
    """
    engine = create(url, pool_size)
    try:
        upgrade(engine)
    except BaseException:
        engine.dispose()
        raise
    return engine


def create(url: str | URL, pool_size: int = DATABASE_POOL_SIZE) -> Engine:
    """An engine on `url` with pinfold's settings, without migrating."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return _create_sqlite(parsed, pool_size)
    if backend == "postgresql":
        return _create_postgresql(parsed, pool_size)
    raise ValueError(f"unsupported database {parsed.drivername!r}: use sqlite:///path or postgresql://")


def sessions(engine: Engine) -> sessionmaker[Session]:
    """Sessions on `engine`. Objects stay readable after commit: the store
    copies them into records before the session closes anyway."""
    return sessionmaker(bind=engine, expire_on_commit=False)


def one_statement(connection: Connection) -> Connection:
    """Mark `connection` for one read-only statement run alone: no
    transaction is opened around it (see the module's docstring)."""
    if connection.dialect.name == "postgresql":
        return connection.execution_options(isolation_level="AUTOCOMMIT")
    return connection.execution_options(**{ONE_STATEMENT: True})


def upgrade(target: Engine | str | URL) -> None:
    """Migrate the database to the newest revision, in one transaction."""
    engine = target if isinstance(target, Engine) else create(target)
    try:
        with engine.connect() as connection:
            connection.execution_options(**{WRITE: True})
            with connection.begin():
                if connection.dialect.name == "postgresql":
                    connection.execute(select(func.pg_advisory_xact_lock(MIGRATION_LOCK_KEY)))
                if _revisions(connection) == {HEAD_REVISION}:
                    return
                from alembic import command

                command.upgrade(alembic_config(connection), "head")
    finally:
        if engine is not target:
            engine.dispose()


def _revisions(connection: Connection) -> set[str]:
    """The revisions the database says it is at (none: a new database)."""
    if not inspect(connection).has_table("alembic_version"):
        return set()
    return set(connection.exec_driver_sql("SELECT version_num FROM alembic_version").scalars())


def alembic_config(connection: Connection) -> Config:
    """Alembic's configuration, built in code: the scripts ship inside the
    package, and `migrations/env.py` runs on `connection`."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", SCRIPT_LOCATION)
    config.attributes["connection"] = connection
    return config


def _pooled(pool_size: int) -> dict[str, int]:
    """`create_engine`'s pool options for both databases: `pool_size`
    connections kept open, as many more opened under load. At the default (20),
    twice it is the server's worker threads (40): a request waits for a
    connection only when every thread holds one. SQLAlchemy's default kept 5
    and closed the rest as they came back, so under 8 clients most requests
    opened one: a PostgreSQL server process (BENCHMARKS.md, issue 16, ninth
    round), or a SQLite file with its pragmas and schema read again (1,813 in
    6,000 requests; tenth round)."""
    return {"pool_size": pool_size, "max_overflow": pool_size}


def _create_sqlite(url: URL, pool_size: int) -> Engine:
    """Pooled (`_pooled`), the most recently returned connection first (LIFO):
    under light load the same few connections, and their page caches, serve
    every request."""
    if url.database in (None, "", ":memory:") or (url.database or "").startswith("file::memory:"):
        raise ValueError("the controller's SQLite database must be a file: sqlite:///path/controller.db")
    private_database(Path(url.database or ""))
    engine = create_engine(
        url,
        connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S, "check_same_thread": False},
        pool_use_lifo=True,
        **_pooled(pool_size),
    )
    event.listen(engine, "connect", _on_sqlite_connect)
    event.listen(engine, "begin", _on_sqlite_begin)
    return engine


def _on_sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    # sqlite3 must not issue BEGIN itself: _on_sqlite_begin does, choosing the kind.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
    finally:
        cursor.close()


def _on_sqlite_begin(connection: Connection) -> None:
    options = connection.get_execution_options()
    if options.get(WRITE):
        connection.exec_driver_sql("BEGIN IMMEDIATE")
    elif not options.get(ONE_STATEMENT):
        connection.exec_driver_sql("BEGIN")


def _create_postgresql(url: URL, pool_size: int) -> Engine:
    """Pooled (`_pooled`): with 20 kept, a registration cost the machine 7.1-8.4
    ms of CPU, against 10.4-11.3 with SQLAlchemy's default (BENCHMARKS.md,
    issue 16, ninth round).

    A connection that sat in the pool longer than `PING_AFTER_IDLE_S` is
    pinged before use and replaced if the server closed it (a restart, an
    administrator, an idle timeout): what SQLAlchemy's `pool_pre_ping` does,
    but that pinged at every checkout, a round trip before each transaction,
    two of a create's 14 (fifteenth round). A connection used within the
    second is taken as alive; if the server went away in that second, the
    request using it fails (nothing is written) and SQLAlchemy then discards
    every pooled connection, so the next requests open new ones."""
    if url.drivername == "postgresql":
        url = url.set(drivername="postgresql+psycopg")
    engine = create_engine(url, isolation_level="READ COMMITTED", **_pooled(pool_size))
    event.listen(engine, "checkin", _note_return)
    event.listen(engine, "checkout", _ping_if_idle(engine))
    return engine


def _note_return(_dbapi_connection: Any, record: Any) -> None:
    record.info[_RETURNED] = time.monotonic()


def _ping_if_idle(engine: Engine) -> Any:
    """The pool's checkout hook: raising `InvalidatePoolError` makes the pool
    drop the connection and hand out another (a new one if need be), and
    drop the others too when they are next taken: the server that closed
    this one closed them as well, those used a moment ago included."""

    def ping(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        returned = record.info.get(_RETURNED)
        if returned is None or time.monotonic() - returned <= PING_AFTER_IDLE_S:
            return  # new, or in use a moment ago
        try:
            engine.dialect.do_ping(dbapi_connection)
        except engine.dialect.loaded_dbapi.Error as exc:
            if engine.dialect.is_disconnect(exc, dbapi_connection, None):
                raise InvalidatePoolError(str(exc)) from exc
            raise

    return ping
