"""Agents run tasks: where a task's checkpoint is kept, and the stop the
server asked of a running task (so a restarted server still asks for it).

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.add_column(sa.Column("checkpoint", sa.String(512)))
        batch.add_column(sa.Column("stop_state", sa.String(16)))
        batch.add_column(sa.Column("stop_reason", sa.String(512)))


def downgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        for column in ("stop_reason", "stop_state", "checkpoint"):
            batch.drop_column(column)
