"""Tables, in SQLAlchemy Core. The migrations create exactly these.

The ledger's invariant is also the database's: ``node_resources`` keeps each
node's allocated amount per resource beside its capacity, a grant raises it
with ``UPDATE ... WHERE allocated + :q <= capacity``, and a CHECK constraint
refuses any row where it would pass capacity, whoever writes it.
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

LIVE_TASK_STATES = "state IN ('scheduled', 'starting', 'running')"
"""A task attempt that holds its allocation (``tasks.state``)."""

nodes = sa.Table(
    "nodes",
    metadata,
    sa.Column("name", sa.String(253), primary_key=True),
    sa.Column("labels", sa.JSON, nullable=False),
    sa.Column("specs", sa.JSON, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("health", sa.String(16), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
)

node_resources = sa.Table(
    "node_resources",
    metadata,
    sa.Column(
        "node", sa.String(253), sa.ForeignKey("nodes.name", ondelete="CASCADE"), primary_key=True
    ),
    sa.Column("resource", sa.String(63), primary_key=True),
    sa.Column("capacity", sa.BigInteger, nullable=False),
    sa.Column("allocated", sa.BigInteger, nullable=False),
    sa.CheckConstraint(
        "allocated >= 0 AND allocated <= capacity", name="allocated_within_capacity"
    ),
)

devices = sa.Table(
    "devices",
    metadata,
    sa.Column(
        "node", sa.String(253), sa.ForeignKey("nodes.name", ondelete="CASCADE"), primary_key=True
    ),
    sa.Column("resource", sa.String(63), primary_key=True),
    sa.Column("device_id", sa.String(128), primary_key=True),
    sa.Column("position", sa.Integer, nullable=False),
    sa.Column("model", sa.String(128)),
    sa.Column("memory", sa.BigInteger),
    sa.Column("uuid", sa.String(128)),
    sa.Column("serial", sa.String(128)),
    sa.Column("attrs", sa.JSON, nullable=False),
    sa.Column("allocation_id", sa.String(40)),
)

allocations = sa.Table(
    "allocations",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("node", sa.String(253), nullable=False),
    sa.Column("owner", sa.String(253)),
    sa.Column("resources", sa.JSON, nullable=False),
    sa.Column("devices", sa.JSON, nullable=False),
    sa.Column("labels", sa.JSON, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("reason", sa.String(32)),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("released_at", sa.Float),
    sa.Index("ix_allocations_state_node", "state", "node"),
    sa.Index("ix_allocations_owner", "owner"),
)

tokens = sa.Table(
    "tokens",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("name", sa.String(253), nullable=False),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("created_at", sa.Float, nullable=False),
    # A dashboard session's token ends; an API token made by hand does not (NULL).
    sa.Column("expires_at", sa.Float),
)

# -- one-time sign-in codes for the dashboard (service/tokens_service.py) ----------

login_codes = sa.Table(
    "login_codes",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("code_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("name", sa.String(253), nullable=False),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("expires_at", sa.Float, nullable=False),
    sa.Column("used_at", sa.Float),
)

events = sa.Table(
    "events",
    metadata,
    sa.Column(
        "id",
        sa.BigInteger().with_variant(sa.Integer, "sqlite"),
        primary_key=True,
        autoincrement=True,
    ),
    sa.Column("kind", sa.String(64), nullable=False),
    sa.Column("subject", sa.String(253), nullable=False),
    sa.Column("origin", sa.String(64), nullable=False),
    sa.Column("data", sa.JSON, nullable=False),
    sa.Column("at", sa.Float, nullable=False),
)

queues = sa.Table(
    "queues",
    metadata,
    sa.Column("name", sa.String(253), primary_key=True),
    sa.Column("quota", sa.JSON, nullable=False),
    sa.Column("weight", sa.Float, nullable=False),
    sa.Column("min_priority", sa.Integer),
    sa.Column("max_priority", sa.Integer),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
)

jobs = sa.Table(
    "jobs",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("name", sa.String(253)),
    sa.Column("owner", sa.String(253)),
    sa.Column("queue", sa.String(253), nullable=False),
    sa.Column("priority", sa.Integer, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("spec", sa.JSON, nullable=False),
    sa.Column("submit_time", sa.Float, nullable=False),
    sa.Column("started_at", sa.Float),
    sa.Column("ended_at", sa.Float),
    sa.Column("reason", sa.String(512)),
    sa.Column("exit_code", sa.Integer),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("preemptions", sa.Integer, nullable=False),
    sa.Column("not_before", sa.Float),
    # Counted as tasks change, in the same transaction: a task's end then
    # needs no scan of a 10,000-task job's other tasks.
    sa.Column("tasks_active", sa.Integer, nullable=False, server_default="0"),
    sa.Column("tasks_succeeded", sa.Integer, nullable=False, server_default="0"),
    sa.Column("task_failures", sa.Integer, nullable=False, server_default="0"),
    sa.Index("ix_jobs_state", "state"),
)

tasks = sa.Table(
    "tasks",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("job_id", sa.String(40), nullable=False),
    sa.Column("index", sa.Integer, nullable=False),
    sa.Column("attempt", sa.Integer, nullable=False),
    sa.Column("node", sa.String(253), nullable=False),
    sa.Column("allocation_id", sa.String(40), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("exit_code", sa.Integer),
    sa.Column("reason", sa.String(512)),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("started_at", sa.Float),
    sa.Column("ended_at", sa.Float),
    sa.Column("checkpoint", sa.String(512)),
    sa.Column("stop_state", sa.String(16)),
    sa.Column("stop_reason", sa.String(512)),
    sa.Column("epoch", sa.BigInteger),
    sa.Index("ix_tasks_job", "job_id", "index"),
    sa.Index("ix_tasks_node_state", "node", "state"),
    sa.Index("ix_tasks_allocation", "allocation_id"),
    # The database itself refuses a second live attempt of one task, whoever
    # writes it: two servers, or a leader deposed mid-cycle.
    sa.Index("ux_tasks_live", "job_id", "index", unique=True,
             sqlite_where=sa.text(LIVE_TASK_STATES),
             postgresql_where=sa.text(LIVE_TASK_STATES)),
)

# -- metric history (service/history_service.py) ------------------------------------

history_series = sa.Table(
    "history_series",
    metadata,
    sa.Column(
        "id",
        sa.BigInteger().with_variant(sa.Integer, "sqlite"),
        primary_key=True,
        autoincrement=True,
    ),
    sa.Column("key", sa.String(1024), nullable=False, unique=True),
    sa.Column("metric", sa.String(64), nullable=False),
    sa.Column("labels", sa.JSON, nullable=False),
)

history_samples = sa.Table(
    "history_samples",
    metadata,
    sa.Column("series_id", sa.BigInteger, primary_key=True),
    sa.Column("at", sa.Float, primary_key=True),
    sa.Column("value", sa.Float, nullable=False),
    sa.Index("ix_history_samples_at", "at"),
)

history_rollups = sa.Table(
    "history_rollups",
    metadata,
    sa.Column("series_id", sa.BigInteger, primary_key=True),
    sa.Column("start", sa.Float, primary_key=True),
    sa.Column("step", sa.Float, nullable=False),
    sa.Column("min", sa.Float, nullable=False),
    sa.Column("max", sa.Float, nullable=False),
    sa.Column("mean", sa.Float, nullable=False),
    sa.Column("count", sa.Integer, nullable=False),
    sa.Column("last", sa.Float, nullable=False),
    sa.Index("ix_history_rollups_start", "start"),
)

# -- task usage records (service/usage_service.py) -----------------------------------

task_usage = sa.Table(
    "task_usage",
    metadata,
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
    sa.Index("ix_task_usage_name", "name", "finished_at"),
    sa.Index("ix_task_usage_owner", "owner", "finished_at"),
)

# -- one-time join tokens for provider-made nodes (service/join_tokens.py) ----------

join_tokens = sa.Table(
    "join_tokens",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("pool", sa.String(64), nullable=False),
    sa.Column("node", sa.String(253), nullable=False),
    sa.Column("labels", sa.JSON, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("expires_at", sa.Float, nullable=False),
    sa.Column("used_at", sa.Float),
)

# -- servers and the leader (service/leadership.py) ---------------------------------

cluster_leader = sa.Table(
    "cluster_leader",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("epoch", sa.BigInteger, nullable=False),
    sa.Column("server_id", sa.String(128)),
    sa.Column("since", sa.Float),
)

servers = sa.Table(
    "servers",
    metadata,
    sa.Column("id", sa.String(128), primary_key=True),
    sa.Column("url", sa.String(1024)),
    sa.Column("version", sa.String(32), nullable=False),
    sa.Column("started_at", sa.Float, nullable=False),
    sa.Column("last_seen", sa.Float, nullable=False),
    sa.Column("stopped_at", sa.Float),
)

# -- agents' sessions (service/agents_service.py) ------------------------------------

agent_sessions = sa.Table(
    "agent_sessions",
    metadata,
    sa.Column(
        "node", sa.String(253), sa.ForeignKey("nodes.name", ondelete="CASCADE"), primary_key=True
    ),
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

# -- alerts (service/alerts_service.py) -----------------------------------------------

alerts = sa.Table(
    "alerts",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True,
              autoincrement=True),
    sa.Column("fingerprint", sa.String(128), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("severity", sa.String(16), nullable=False),
    sa.Column("started_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.Column("resolved_at", sa.Float),
    sa.Column("body", sa.JSON, nullable=False),
    sa.Index("ix_alerts_state", "state", "updated_at"),
    sa.Index("ux_alerts_firing", "fingerprint", unique=True,
             sqlite_where=sa.text("state = 'firing'"),
             postgresql_where=sa.text("state = 'firing'")),
)

alert_deliveries = sa.Table(
    "alert_deliveries",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True,
              autoincrement=True),
    sa.Column("key", sa.String(128), nullable=False, unique=True),
    sa.Column("url", sa.String(2048), nullable=False),
    sa.Column("body", sa.LargeBinary, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("next_at", sa.Float, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("done_at", sa.Float),
    sa.Column("last_error", sa.String(512)),
    sa.Index("ix_alert_deliveries_due", "state", "next_at"),
)

# -- task logs and stored blobs (service/task_files.py) -------------------------------

task_logs = sa.Table(
    "task_logs",
    metadata,
    sa.Column("task_id", sa.String(40), primary_key=True),
    sa.Column("stream", sa.String(8), primary_key=True),
    sa.Column("offset", sa.BigInteger, primary_key=True),
    sa.Column("data", sa.LargeBinary, nullable=False),
)

blobs = sa.Table(
    "blobs",
    metadata,
    sa.Column("key", sa.String(512), primary_key=True),
    sa.Column("part", sa.Integer, primary_key=True),
    sa.Column("data", sa.LargeBinary, nullable=False),
)
