"""platform: operations and outbox partitioned by time (by UUIDv7 id, one partition per day).

Revision ID: platform_0010
Revises: platform_0009
Create Date: 2026-12-05
"""

from app.migrations.partitioning import partition_common, unpartition_common

revision = "platform_0010"
down_revision = "platform_0009"
branch_labels = None
depends_on = None
SCHEMA = "platform"


def upgrade() -> None:
    partition_common(SCHEMA)


def downgrade() -> None:
    unpartition_common(SCHEMA)
