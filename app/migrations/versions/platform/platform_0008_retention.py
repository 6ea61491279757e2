"""platform: retention index (answered pings by completion time).

Revision ID: platform_0008
Revises: platform_0007
Create Date: 2026-12-04
"""

import sqlalchemy as sa
from alembic import op

revision = "platform_0008"
down_revision = "platform_0007"
branch_labels = None
depends_on = None
SCHEMA = "platform"


def upgrade() -> None:
    op.create_index(
        "ix_pings_complete_time",
        "pings",
        ["complete_time"],
        schema=SCHEMA,
        postgresql_where=sa.text("complete_time IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_pings_complete_time", "pings", schema=SCHEMA)
