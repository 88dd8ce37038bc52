"""An index holding what scheduling reads of every host each second
(`ControllerStore.liveness`: id, draining, last heartbeat, down, heartbeat
period), so that the read is an index-only scan. In SQLite's table, `down`
and `heartbeat_period_s` (added by 0002 and 0003) come after the heartbeat's
JSON, so reading them walked that JSON's overflow pages: with 10,000 hosts and
3 KB heartbeats, 46 ms against 19 ms from the index.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-04
"""

from __future__ import annotations

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

COLUMNS = ["id", "draining", "last_heartbeat", "down", "heartbeat_period_s"]


def upgrade() -> None:
    op.create_index("ix_hosts_liveness", "hosts", COLUMNS)


def downgrade() -> None:
    op.drop_index("ix_hosts_liveness", table_name="hosts")
