"""platform: schedules, their runs (one per slot), the beat leader lease and beat nodes.

Revision ID: platform_0003
Revises: platform_0002
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql as pg

revision = "platform_0003"
down_revision = "platform_0002"
branch_labels = None
depends_on = None
SCHEMA = "platform"


def upgrade() -> None:
    op.create_table(
        "schedules",
        sa.Column("id", sa.Text, nullable=False),
        sa.Column("tenant", sa.Text, nullable=False),
        sa.Column("display_name", sa.Text, nullable=False, server_default=""),
        sa.Column("workflow", sa.Text),
        sa.Column("task", sa.Text),
        sa.Column("args", pg.JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
        sa.Column("cron", sa.Text),
        sa.Column("interval_seconds", sa.Float),
        sa.Column("time_zone", sa.Text, nullable=False, server_default="UTC"),
        sa.Column("enabled", sa.Boolean, nullable=False, server_default=sa.true()),
        sa.Column("catch_up", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("system", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("update_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("next_run_time", sa.DateTime(timezone=True)),
        sa.Column("last_run_time", sa.DateTime(timezone=True)),
        sa.Column("last_operation", sa.Text),
        sa.PrimaryKeyConstraint("id", name="pk_schedules"),
        sa.CheckConstraint(
            "(cron IS NULL) <> (interval_seconds IS NULL)", name="ck_schedules_timing"
        ),
        sa.CheckConstraint("(workflow IS NULL) <> (task IS NULL)", name="ck_schedules_target"),
        schema=SCHEMA,
    )
    op.create_index(
        "ix_schedules_due",
        "schedules",
        ["next_run_time"],
        schema=SCHEMA,
        postgresql_where=sa.text("enabled"),
    )
    op.create_index("ix_schedules_tenant_id", "schedules", ["tenant", "id"], schema=SCHEMA)
    op.create_table(
        "schedule_runs",
        sa.Column("schedule_id", sa.Text, nullable=False),
        sa.Column("fire_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("tenant", sa.Text, nullable=False),
        sa.Column("workflow", sa.Text),
        sa.Column("task", sa.Text),
        sa.Column("args", pg.JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
        sa.Column("state", sa.Text, nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("fired_by", sa.Text, nullable=False),
        sa.Column("manual", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("operation", sa.Text),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("error", sa.Text),
        sa.PrimaryKeyConstraint("schedule_id", "fire_time", name="pk_schedule_runs"),
        schema=SCHEMA,
    )
    op.create_index(
        "ix_schedule_runs_pending",
        "schedule_runs",
        ["create_time"],
        schema=SCHEMA,
        postgresql_where=sa.text("state = 'PENDING'"),
    )
    op.create_table(
        "beat_leader",
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("holder", sa.Text, nullable=False),
        sa.Column("node", sa.Text, nullable=False),
        sa.Column("acquired_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_beat_leader"),
        schema=SCHEMA,
    )
    op.create_table(
        "beat_nodes",
        sa.Column("holder", sa.Text, nullable=False),
        sa.Column("node", sa.Text, nullable=False),
        sa.Column("leader", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("holder", name="pk_beat_nodes"),
        schema=SCHEMA,
    )
    op.create_table(
        "schedule_seeds",
        sa.Column("key", sa.Text, nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("key", name="pk_schedule_seeds"),
        schema=SCHEMA,
    )


def downgrade() -> None:
    op.drop_table("schedule_seeds", schema=SCHEMA)
    op.drop_table("beat_nodes", schema=SCHEMA)
    op.drop_table("beat_leader", schema=SCHEMA)
    op.drop_index("ix_schedule_runs_pending", table_name="schedule_runs", schema=SCHEMA)
    op.drop_table("schedule_runs", schema=SCHEMA)
    op.drop_index("ix_schedules_tenant_id", table_name="schedules", schema=SCHEMA)
    op.drop_index("ix_schedules_due", table_name="schedules", schema=SCHEMA)
    op.drop_table("schedules", schema=SCHEMA)
