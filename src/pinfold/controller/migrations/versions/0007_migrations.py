"""Live migration (issue 15): a VM may be `migrating` (the state CHECK widened),
holding room on the host it moves to as well (`vms.target_host_id`), and every
migration is recorded in `migrations` (in flight and done: progress, the
dashboard, the consolidation budget).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

_STATES = "'reserved', 'running', 'paused', 'shutoff', 'failed', 'deleting', 'missing'"


def upgrade() -> None:
    # batch: SQLite cannot alter a CHECK in place, so the table is copied
    # (nothing refers to vms yet: 0008 adds group_members after it)
    with op.batch_alter_table("vms") as batch:
        batch.drop_constraint(batch.f("ck_vms_state_known"), type_="check")
        batch.create_check_constraint("state_known", sa.text(f"state IN ({_STATES}, 'migrating')"))
        batch.add_column(sa.Column("target_host_id", sa.String(63), nullable=True))
        batch.create_index(batch.f("ix_vms_target_host_id"), ["target_host_id"])
    op.create_table(
        "migrations",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("vm", sa.String(255), nullable=False),
        sa.Column("source", sa.String(63), nullable=False),
        sa.Column("target", sa.String(63), nullable=False),
        sa.Column("started", sa.Double(), nullable=False),
        sa.Column("finished", sa.Double(), nullable=True),
        sa.Column("seconds", sa.Double(), nullable=True),
        sa.Column("outcome", sa.String(16), nullable=True),
        sa.Column("detail", sa.String(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_migrations")),
    )
    op.create_index(op.f("ix_migrations_vm"), "migrations", ["vm"])
    op.create_index(op.f("ix_migrations_started"), "migrations", ["started"])


def downgrade() -> None:
    op.drop_table("migrations")
    op.execute(sa.text("UPDATE vms SET state = 'running' WHERE state = 'migrating'"))
    with op.batch_alter_table("vms") as batch:
        batch.drop_index(batch.f("ix_vms_target_host_id"))
        batch.drop_column("target_host_id")
        batch.drop_constraint(batch.f("ck_vms_state_known"), type_="check")
        batch.create_check_constraint("state_known", sa.text(f"state IN ({_STATES})"))
