"""webhooks: list indexes (tenant, filtered column, create_time, id) and retention indexes.

Revision ID: webhooks_0006
Revises: webhooks_0005
Create Date: 2026-12-04
"""

import sqlalchemy as sa
from alembic import op

from app.migrations.baseline import add_scale_indexes, drop_scale_indexes

revision = "webhooks_0006"
down_revision = "webhooks_0005"
branch_labels = None
depends_on = None
SCHEMA = "webhooks"


def upgrade() -> None:
    add_scale_indexes(SCHEMA)
    op.drop_index("ix_deliveries_endpoint_id_state", "deliveries", schema=SCHEMA)
    op.create_index(
        "ix_deliveries_endpoint_id_create_time",
        "deliveries",
        ["endpoint_id", "create_time", "id"],
        schema=SCHEMA,
    )
    op.create_index(
        "ix_deliveries_endpoint_id_state",
        "deliveries",
        ["endpoint_id", "state", "create_time", "id"],
        schema=SCHEMA,
    )
    op.create_index(
        "ix_deliveries_endpoint_id_event_type",
        "deliveries",
        ["endpoint_id", "event_type", "create_time", "id"],
        schema=SCHEMA,
    )
    op.create_index(
        "ix_deliveries_end_time",
        "deliveries",
        ["end_time"],
        schema=SCHEMA,
        postgresql_where=sa.text("end_time IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_deliveries_end_time", "deliveries", schema=SCHEMA)
    op.drop_index("ix_deliveries_endpoint_id_event_type", "deliveries", schema=SCHEMA)
    op.drop_index("ix_deliveries_endpoint_id_state", "deliveries", schema=SCHEMA)
    op.drop_index("ix_deliveries_endpoint_id_create_time", "deliveries", schema=SCHEMA)
    op.create_index(
        "ix_deliveries_endpoint_id_state", "deliveries", ["endpoint_id", "state"], schema=SCHEMA
    )
    drop_scale_indexes(SCHEMA)
