"""webhooks: retention indexes (received events by time, handled inbox rows by time).

Revision ID: webhooks_0007
Revises: webhooks_0006
Create Date: 2026-12-04
"""

import sqlalchemy as sa
from alembic import op

revision = "webhooks_0007"
down_revision = "webhooks_0006"
branch_labels = None
depends_on = None
SCHEMA = "webhooks"


def upgrade() -> None:
    op.create_index(
        "ix_received_events_receive_time", "received_events", ["receive_time"], schema=SCHEMA
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
    op.drop_index("ix_received_events_receive_time", "received_events", schema=SCHEMA)
