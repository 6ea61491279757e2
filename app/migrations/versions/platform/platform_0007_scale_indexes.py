"""platform: list indexes (tenant, filtered column, create_time, id) and retention indexes.

Revision ID: platform_0007
Revises: platform_0006
Create Date: 2026-12-04
"""

from app.migrations.baseline import add_scale_indexes, drop_scale_indexes

revision = "platform_0007"
down_revision = "platform_0006"
branch_labels = None
depends_on = None
SCHEMA = "platform"


def upgrade() -> None:
    add_scale_indexes(SCHEMA)


def downgrade() -> None:
    drop_scale_indexes(SCHEMA)
