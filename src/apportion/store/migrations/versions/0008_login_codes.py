"""One-time sign-in codes for the dashboard, and tokens that end (the
sessions those codes are exchanged for); see service/tokens_service.py.

Revision ID: 0008
Revises: 0007
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
        "login_codes",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("code_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("name", sa.String(253), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("expires_at", sa.Float, nullable=False),
        sa.Column("used_at", sa.Float),
    )
    with op.batch_alter_table("tokens") as batch:
        batch.add_column(sa.Column("expires_at", sa.Float))


def downgrade() -> None:
    # Sessions only make sense with their end: they go with the column.
    op.execute("DELETE FROM tokens WHERE expires_at IS NOT NULL")
    with op.batch_alter_table("tokens") as batch:
        batch.drop_column("expires_at")
    op.drop_table("login_codes")
