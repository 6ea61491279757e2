"""imports: operations and outbox partitioned by time (by UUIDv7 id, one partition per day).

Revision ID: imports_0010
Revises: imports_0009
Create Date: 2026-12-05
"""

from app.migrations.partitioning import partition_common, unpartition_common

revision = "imports_0010"
down_revision = "imports_0009"
branch_labels = None
depends_on = None
SCHEMA = "imports"


def upgrade() -> None:
    partition_common(SCHEMA)


def downgrade() -> None:
    unpartition_common(SCHEMA)
