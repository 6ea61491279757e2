"""webhooks: operations and outbox partitioned by time (by UUIDv7 id, one partition per day).

Revision ID: webhooks_0009
Revises: webhooks_0008
Create Date: 2026-12-05
"""

from app.migrations.partitioning import partition_common, unpartition_common

revision = "webhooks_0009"
down_revision = "webhooks_0008"
branch_labels = None
depends_on = None
SCHEMA = "webhooks"


def upgrade() -> None:
    partition_common(SCHEMA)


def downgrade() -> None:
    unpartition_common(SCHEMA)
