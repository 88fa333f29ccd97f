"""Task usage records: what every finished task asked for and what it used,
keyed by job name, owner and command (the predictor's history); see
service/usage_service.py.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "task_usage",
        sa.Column("task_id", sa.String(40), primary_key=True),
        sa.Column("job_id", sa.String(40), nullable=False),
        sa.Column("name", sa.String(253), nullable=False),
        sa.Column("owner", sa.String(253), nullable=False),
        sa.Column("queue", sa.String(253), nullable=False),
        sa.Column("command", sa.String(1024)),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("requested", sa.JSON, nullable=False),
        sa.Column("used", sa.JSON, nullable=False),
        sa.Column("started_at", sa.Float),
        sa.Column("finished_at", sa.Float, nullable=False),
    )
    op.create_index("ix_task_usage_name", "task_usage", ["name", "finished_at"])
    op.create_index("ix_task_usage_owner", "task_usage", ["owner", "finished_at"])


def downgrade() -> None:
    op.drop_table("task_usage")
