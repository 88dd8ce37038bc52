"""VM groups (Nova's server groups): `groups` (name, policy) and
`group_members` (a VM's group, gone with the VM's row). A table of its own
rather than a column of `vms`: adding a foreign key column to `vms` would
rebuild that table on SQLite, and most VMs are in no group.

Revision ID: 0008
Revises: 0007
Create Date: 2025-01-07

A later migration that copies `vms` (a batch on SQLite) must keep these rows:
with foreign keys on, SQLite's DROP TABLE of the old `vms` deletes them by the cascade.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "groups",
        sa.Column("name", sa.String(63), nullable=False),
        sa.Column("policy", sa.String(32), nullable=False),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.CheckConstraint(
            "policy IN ('affinity', 'anti-affinity', 'soft-affinity', 'soft-anti-affinity')",
            name=op.f("ck_groups_policy_known"),
        ),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_groups")),
    )
    op.create_table(
        "group_members",
        sa.Column("vm_name", sa.String(255), nullable=False),
        sa.Column("group_name", sa.String(63), nullable=False),
        sa.ForeignKeyConstraint(
            ["vm_name"], ["vms.name"], name=op.f("fk_group_members_vm_name_vms"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["group_name"], ["groups.name"], name=op.f("fk_group_members_group_name_groups")
        ),
        sa.PrimaryKeyConstraint("vm_name", name=op.f("pk_group_members")),
    )
    op.create_index(op.f("ix_group_members_group_name"), "group_members", ["group_name"])


def downgrade() -> None:
    op.drop_index(op.f("ix_group_members_group_name"), table_name="group_members")
    op.drop_table("group_members")
    op.drop_table("groups")
