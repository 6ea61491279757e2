"""reports: retention indexes (applied event ids by time, handled inbox rows by time).

Revision ID: reports_0007
Revises: reports_0006
Create Date: 2026-12-04
"""

import sqlalchemy as sa
from alembic import op

revision = "reports_0007"
down_revision = "reports_0006"
branch_labels = None
depends_on = None
SCHEMA = "reports"


def upgrade() -> None:
    op.create_index(
        "ix_applied_events_applied_time", "applied_events", ["applied_time"], schema=SCHEMA
    )
    op.create_index(
        "ix_inbox_handled_time",
        "inbox",
        ["handled_time"],
        schema=SCHEMA,
        postgresql_where=sa.text("state = 'HANDLED'"),
    )


def downgrade() -> None:
    op.drop_index("ix_inbox_handled_time", "inbox", schema=SCHEMA)
    op.drop_index("ix_applied_events_applied_time", "applied_events", schema=SCHEMA)
