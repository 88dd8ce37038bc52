"""VMs keep the NICs their create asked for (network or bridge, MAC if
given), as JSON: a stale reservation's agent is asked for the same NICs, and
the same create sent again is compared with them. Existing VMs have none.

Revision ID: 0005
Revises: 0004
Create Date: 2025-01-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("vms", sa.Column("nics", sa.JSON(), nullable=False, server_default="[]"))


def downgrade() -> None:
    # A plain ALTER TABLE ... DROP COLUMN (SQLite >= 3.35, PostgreSQL), not a batch (see 0003).
    op.drop_column("vms", "nics")
