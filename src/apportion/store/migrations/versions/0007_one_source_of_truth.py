"""One source of truth: what every server needs from the database alone.

Servers and the leader with its epoch; agents' sessions (any server may
answer an agent); alerts and their webhook deliveries; task logs and stored
blobs (checkpoints); a job's restart backoff; the epoch that placed a task;
and a unique index that refuses a second live attempt of one task.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

LIVE = "state IN ('scheduled', 'starting', 'running')"


def _serial() -> sa.types.TypeEngine[int]:
    return sa.BigInteger().with_variant(sa.Integer, "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("not_before", sa.Float))
        for column in ("tasks_active", "tasks_succeeded", "task_failures"):
            batch.add_column(sa.Column(column, sa.Integer, nullable=False, server_default="0"))
    with op.batch_alter_table("tasks") as batch:
        batch.add_column(sa.Column("epoch", sa.BigInteger))
    op.drop_index("ix_tasks_job", "tasks")
    op.create_index("ix_tasks_job", "tasks", ["job_id", "index"])
    # A database written before this revision may hold two live attempts of
    # one task (the bug this revision closes): keep the oldest; the orphaned
    # allocation of the other is released when a server starts.
    op.execute(
        "UPDATE tasks SET state = 'lost', reason = 'a second live attempt of this task "
        "(found by migration 0007)' "
        f"WHERE {LIVE} AND EXISTS (SELECT 1 FROM tasks AS t WHERE t.job_id = tasks.job_id "
        "AND t.\"index\" = tasks.\"index\" AND t.state IN ('scheduled', 'starting', 'running') "
        "AND (t.created_at < tasks.created_at OR (t.created_at = tasks.created_at "
        "AND t.id < tasks.id)))"
    )
    for column, states in (("tasks_active", LIVE.replace("state IN ", "")),
                           ("tasks_succeeded", "('succeeded')"),
                           ("task_failures", "('failed', 'lost')")):
        op.execute(f"UPDATE jobs SET {column} = (SELECT count(*) FROM tasks "
                   f"WHERE tasks.job_id = jobs.id AND tasks.state IN {states})")
    op.create_index("ix_tasks_allocation", "tasks", ["allocation_id"])
    op.create_index("ux_tasks_live", "tasks", ["job_id", "index"], unique=True,
                    sqlite_where=sa.text(LIVE), postgresql_where=sa.text(LIVE))
    op.create_table(
        "cluster_leader",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("epoch", sa.BigInteger, nullable=False),
        sa.Column("server_id", sa.String(128)),
        sa.Column("since", sa.Float),
    )
    op.execute("INSERT INTO cluster_leader (id, epoch) VALUES (1, 0)")
    op.create_table(
        "servers",
        sa.Column("id", sa.String(128), primary_key=True),
        sa.Column("url", sa.String(1024)),
        sa.Column("version", sa.String(32), nullable=False),
        sa.Column("started_at", sa.Float, nullable=False),
        sa.Column("last_seen", sa.Float, nullable=False),
        sa.Column("stopped_at", sa.Float),
    )
    op.create_table(
        "agent_sessions",
        sa.Column("node", sa.String(253), sa.ForeignKey("nodes.name", ondelete="CASCADE"),
                  primary_key=True),
        sa.Column("agent_id", sa.String(64), nullable=False),
        sa.Column("heartbeat_s", sa.Float, nullable=False),
        sa.Column("stop_after_s", sa.Float, nullable=False),
        sa.Column("server_id", sa.String(128)),
        sa.Column("registered_at", sa.Float, nullable=False),
        sa.Column("last_seen", sa.Float, nullable=False),
        sa.Column("heartbeat_at", sa.Float),
        sa.Column("usage", sa.JSON),
        sa.Column("tasks", sa.JSON),
        sa.Column("rescans", sa.Integer, nullable=False),
        sa.Column("drain_deadline", sa.Float),
        sa.Column("prior_state", sa.String(16)),
    )
    op.create_table(
        "alerts",
        sa.Column("id", _serial(), primary_key=True, autoincrement=True),
        sa.Column("fingerprint", sa.String(128), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("severity", sa.String(16), nullable=False),
        sa.Column("started_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.Column("resolved_at", sa.Float),
        sa.Column("body", sa.JSON, nullable=False),
    )
    op.create_index("ix_alerts_state", "alerts", ["state", "updated_at"])
    op.create_index("ux_alerts_firing", "alerts", ["fingerprint"], unique=True,
                    sqlite_where=sa.text("state = 'firing'"),
                    postgresql_where=sa.text("state = 'firing'"))
    op.create_table(
        "alert_deliveries",
        sa.Column("id", _serial(), primary_key=True, autoincrement=True),
        sa.Column("key", sa.String(128), nullable=False, unique=True),
        sa.Column("url", sa.String(2048), nullable=False),
        sa.Column("body", sa.LargeBinary, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("next_at", sa.Float, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("done_at", sa.Float),
        sa.Column("last_error", sa.String(512)),
    )
    op.create_index("ix_alert_deliveries_due", "alert_deliveries", ["state", "next_at"])
    op.create_table(
        "task_logs",
        sa.Column("task_id", sa.String(40), primary_key=True),
        sa.Column("stream", sa.String(8), primary_key=True),
        sa.Column("offset", sa.BigInteger, primary_key=True),
        sa.Column("data", sa.LargeBinary, nullable=False),
    )
    op.create_table(
        "blobs",
        sa.Column("key", sa.String(512), primary_key=True),
        sa.Column("part", sa.Integer, primary_key=True),
        sa.Column("data", sa.LargeBinary, nullable=False),
    )


def downgrade() -> None:
    for table in ("blobs", "task_logs", "alert_deliveries", "alerts", "agent_sessions",
                  "servers", "cluster_leader"):
        op.drop_table(table)
    op.drop_index("ux_tasks_live", "tasks")
    op.drop_index("ix_tasks_allocation", "tasks")
    op.drop_index("ix_tasks_job", "tasks")
    op.create_index("ix_tasks_job", "tasks", ["job_id"])
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("epoch")
    with op.batch_alter_table("jobs") as batch:
        for column in ("task_failures", "tasks_succeeded", "tasks_active", "not_before"):
            batch.drop_column(column)
