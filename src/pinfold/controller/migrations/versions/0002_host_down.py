"""Hosts remember whether they were reported down, so that the "host down"
and "host up" events survive a controller's restart.

Revision ID: 0002
Revises: 0001
Create Date: 2025-01-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("hosts", sa.Column("down", sa.Boolean(), nullable=False, server_default=sa.false()))


def downgrade() -> None:
    # A plain ALTER TABLE ... DROP COLUMN (SQLite >= 3.35, PostgreSQL), not a
    # batch: rebuilding `hosts` would drop it, which SQLite refuses with foreign
    # keys on while `vms.host_id` refers to it (any database with a VM).
    op.drop_column("hosts", "down")
