"""The first schema: topologies (one row per distinct host model), hosts, VMs
(with the counter their seq is drawn from) and events.

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "topologies",
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("document", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("digest", name=op.f("pk_topologies")),
    )
    op.create_table(
        "hosts",
        sa.Column("id", sa.String(63), nullable=False),
        sa.Column("address", sa.String(2048), nullable=False),
        sa.Column("topology_digest", sa.String(64), nullable=False),
        sa.Column("critical_size", sa.Integer(), nullable=False),
        sa.Column("reserved_memory_mib", sa.Integer(), nullable=False),
        sa.Column("draining", sa.Boolean(), nullable=False),
        sa.Column("registered_at", sa.Double(), nullable=False),
        sa.Column("last_heartbeat", sa.Double(), nullable=False),
        sa.Column("heartbeat", sa.JSON(), nullable=True),
        sa.CheckConstraint("length(id) BETWEEN 1 AND 63", name=op.f("ck_hosts_id_length")),
        sa.ForeignKeyConstraint(
            ["topology_digest"], ["topologies.digest"], name=op.f("fk_hosts_topology_digest_topologies")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_hosts")),
    )
    op.create_table(
        "vm_sequence",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_vm_sequence")),
        sqlite_autoincrement=True,
    )
    op.create_table(
        "vms",
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("host_id", sa.String(63), nullable=True),
        sa.Column("vcpus", sa.Integer(), nullable=False),
        sa.Column("memory_mib", sa.Integer(), nullable=False),
        sa.Column("ratio", sa.Double(), nullable=False),
        sa.Column("owner", sa.String(255), nullable=False),
        sa.Column("image", sa.String(2048), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("detail", sa.String(), nullable=False),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.Column("updated_at", sa.Double(), nullable=False),
        sa.CheckConstraint("vcpus >= 1", name=op.f("ck_vms_vcpus_positive")),
        sa.CheckConstraint("memory_mib >= 1", name=op.f("ck_vms_memory_positive")),
        sa.CheckConstraint("ratio >= 1.0", name=op.f("ck_vms_ratio_at_least_one")),
        sa.CheckConstraint(
            "state IN ('reserved', 'running', 'paused', 'shutoff', 'failed', 'deleting', 'missing')",
            name=op.f("ck_vms_state_known"),
        ),
        sa.ForeignKeyConstraint(["host_id"], ["hosts.id"], name=op.f("fk_vms_host_id_hosts")),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_vms")),
        sa.UniqueConstraint("seq", name=op.f("uq_vms_seq")),
    )
    op.create_index(op.f("ix_vms_host_id"), "vms", ["host_id"])
    op.create_table(
        "events",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("time", sa.Double(), nullable=False),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("subject", sa.String(255), nullable=False),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_events")),
    )


def downgrade() -> None:
    op.drop_table("events")
    op.drop_index(op.f("ix_vms_host_id"), table_name="vms")
    op.drop_table("vms")
    op.drop_table("vm_sequence")
    op.drop_table("hosts")
    op.drop_table("topologies")
