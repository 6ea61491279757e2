"""platform: operations, outbox and pings.

Revision ID: platform_0001
Revises:
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql as pg

from app.migrations.baseline import create_common, drop_common

revision = "platform_0001"
down_revision = None
branch_labels = None
depends_on = None
SCHEMA = "platform"


def upgrade() -> None:
    create_common(SCHEMA)
    op.create_table(
        "pings",
        sa.Column("id", pg.UUID(as_uuid=True), nullable=False),
        sa.Column("message", sa.Text, nullable=False),
        sa.Column("sleep_seconds", sa.Float, nullable=False),
        sa.Column("steps", sa.Integer, nullable=False),
        sa.Column("fail_attempts", sa.Integer, nullable=False),
        sa.Column("operation_id", pg.UUID(as_uuid=True), nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("complete_time", sa.DateTime(timezone=True)),
        sa.Column("reply", sa.Text),
        sa.Column("worker", sa.Text),
        sa.Column("completions", sa.Integer, nullable=False, server_default="0"),
        sa.PrimaryKeyConstraint("id", name="pk_pings"),
        schema=SCHEMA,
    )


def downgrade() -> None:
    op.drop_table("pings", schema=SCHEMA)
    drop_common(SCHEMA)
