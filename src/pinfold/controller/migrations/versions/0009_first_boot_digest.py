"""VMs keep a salted digest of their create's SSH keys and user data
(`first_boot_digest`, `pinfold.model.vm.first_boot_digest`): the directory
keeps neither (user data may hold secrets; the agent's seed has them), so a
create sent again under the same name with other keys or user data was taken
for the same request and answered with the VM made from the first. NULL: a
VM reserved before this migration, whose inputs are unknown (a repeat of it
is still taken for the same request).

Revision ID: 0009
Revises: 0008
Create Date: 2025-01-08
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # a plain ADD COLUMN, nullable: no batch, so SQLite does not copy `vms` (see 0008)
    op.add_column("vms", sa.Column("first_boot_digest", sa.String(160), nullable=True))


def downgrade() -> None:
    # A plain ALTER TABLE ... DROP COLUMN (SQLite >= 3.35, PostgreSQL), not a batch (see 0003, 0008).
    op.drop_column("vms", "first_boot_digest")
