"""Each host its own credential: the digest of the credential issued at
enrolment, the agent's own API token (the controller calls the agent with
it), and the credentials of removed hosts (revoked).

Revision ID: 0004
Revises: 0003
Create Date: 2025-01-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("hosts", sa.Column("credential_digest", sa.String(64), nullable=True))
    op.add_column("hosts", sa.Column("agent_token", sa.String(512), nullable=True))
    op.create_table(
        "revoked_credentials",
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("host_id", sa.String(63), nullable=False),
        sa.Column("revoked_at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("digest", name=op.f("pk_revoked_credentials")),
    )


def downgrade() -> None:
    # A plain ALTER TABLE ... DROP COLUMN (SQLite >= 3.35, PostgreSQL), not a
    # batch: rebuilding `hosts` would drop it, which SQLite refuses with foreign
    # keys on while `vms.host_id` refers to it (any database with a VM).
    op.drop_table("revoked_credentials")
    op.drop_column("hosts", "agent_token")
    op.drop_column("hosts", "credential_digest")
