"""VMs keep the NICs their agent reports in its heartbeats (network or
bridge, the MAC it chose, the addresses it learnt), as JSON: the API, the
CLI, the dashboard and /metrics show a VM's addresses from the database, as
any controller replica reads it. NULL: not reported yet (existing VMs, until
their agent's next heartbeat; an agent older than this sends none).

Revision ID: 0006
Revises: 0005
Create Date: 2025-01-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("vms", sa.Column("reported_nics", sa.JSON(), nullable=True))


def downgrade() -> None:
    # A plain ALTER TABLE ... DROP COLUMN (SQLite >= 3.35, PostgreSQL), not a batch (see 0003).
    op.drop_column("vms", "reported_nics")
