"""reports: integration-event inbox (what this consumer owes handling, re-dispatched when lost).

Revision ID: reports_0004
Revises: reports_0003
Create Date: 2026-12-04
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql as pg

revision = "reports_0004"
down_revision = "reports_0003"
branch_labels = None
depends_on = None
SCHEMA = "reports"
TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "inbox",
        sa.Column("event_id", pg.UUID(as_uuid=True), nullable=False),
        sa.Column("consumer", sa.Text, nullable=False),
        sa.Column("event_type", sa.Text, nullable=False),
        sa.Column("envelope", pg.JSONB, nullable=False),
        sa.Column("state", sa.Text, nullable=False),
        sa.Column("received_time", TS, nullable=False),
        sa.Column("dispatch_time", TS, nullable=False),
        sa.Column("dispatch_count", sa.Integer, nullable=False, server_default="1"),
        sa.Column("handled_time", TS),
        sa.Column("error", sa.Text),
        sa.PrimaryKeyConstraint("event_id", "consumer", name="pk_inbox"),
        sa.CheckConstraint("state IN ('PENDING','HANDLED','FAILED')", name="ck_inbox_state"),
        schema=SCHEMA,
    )
    op.create_index(
        "ix_inbox_pending",
        "inbox",
        ["dispatch_time"],
        schema=SCHEMA,
        postgresql_where=sa.text("state = 'PENDING'"),
    )


def downgrade() -> None:
    op.drop_index("ix_inbox_pending", table_name="inbox", schema=SCHEMA)
    op.drop_table("inbox", schema=SCHEMA)
