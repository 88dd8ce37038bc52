"""Hosts keep the heartbeat period their agent registered with: a host is
down after three of its own periods missed, not three of the controller's.

Revision ID: 0003
Revises: 0002
Create Date: 2025-01-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("hosts", sa.Column("heartbeat_period_s", sa.Double(), nullable=True))


def downgrade() -> None:
    # A plain ALTER TABLE ... DROP COLUMN (SQLite >= 3.35, PostgreSQL), not a
    # batch: rebuilding `hosts` would drop it, which SQLite refuses with foreign
    # keys on while `vms.host_id` refers to it (any database with a VM).
    op.drop_column("hosts", "heartbeat_period_s")
