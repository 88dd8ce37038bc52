"""Run the migrations on the connection `database.upgrade` passes in
`config.attributes["connection"]`; there is no offline (SQL script) mode."""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from pinfold.controller.models import Base


def run_migrations(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=Base.metadata)
    with context.begin_transaction():
        context.run_migrations()


connection = context.config.attributes.get("connection")
if not isinstance(connection, Connection):
    raise RuntimeError("pinfold's migrations run through pinfold.controller.database.upgrade only")
run_migrations(connection)
