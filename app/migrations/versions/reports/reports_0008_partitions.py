"""reports: operations and outbox partitioned by time (by UUIDv7 id, one partition per day).

Revision ID: reports_0008
Revises: reports_0007
Create Date: 2026-12-05
"""

from app.migrations.partitioning import partition_common, unpartition_common

revision = "reports_0008"
down_revision = "reports_0007"
branch_labels = None
depends_on = None
SCHEMA = "reports"


def upgrade() -> None:
    partition_common(SCHEMA)


def downgrade() -> None:
    unpartition_common(SCHEMA)
