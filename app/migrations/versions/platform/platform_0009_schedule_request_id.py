"""platform: AIP-155 request id on schedules (one schedule per tenant and request id).

Revision ID: platform_0009
Revises: platform_0008
Create Date: 2026-12-05
"""

import sqlalchemy as sa
from alembic import op

revision = "platform_0009"
down_revision = "platform_0008"
branch_labels = None
depends_on = None
SCHEMA = "platform"


def upgrade() -> None:
    op.add_column("schedules", sa.Column("request_id", sa.Text), schema=SCHEMA)
    op.add_column("schedules", sa.Column("request_hash", sa.Text), schema=SCHEMA)
    op.create_index(
        "uq_schedules_tenant_request_id",
        "schedules",
        ["tenant", "request_id"],
        unique=True,
        schema=SCHEMA,
        postgresql_where=sa.text("request_id IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("uq_schedules_tenant_request_id", "schedules", schema=SCHEMA)
    op.drop_column("schedules", "request_hash", schema=SCHEMA)
    op.drop_column("schedules", "request_id", schema=SCHEMA)
