"""webhooks: AIP-155 request ids on endpoints and published events.

Endpoints get the request id and its body fingerprint (one endpoint per tenant and request
id); received events get the fingerprint only: a published event's id is derived from the
tenant and request id, so the primary key already makes it once.

Revision ID: webhooks_0008
Revises: webhooks_0007
Create Date: 2026-12-05
"""

import sqlalchemy as sa
from alembic import op

revision = "webhooks_0008"
down_revision = "webhooks_0007"
branch_labels = None
depends_on = None
SCHEMA = "webhooks"


def upgrade() -> None:
    op.add_column("endpoints", sa.Column("request_id", sa.Text), schema=SCHEMA)
    op.add_column("endpoints", sa.Column("request_hash", sa.Text), schema=SCHEMA)
    op.create_index(
        "uq_endpoints_tenant_request_id",
        "endpoints",
        ["tenant", "request_id"],
        unique=True,
        schema=SCHEMA,
        postgresql_where=sa.text("request_id IS NOT NULL"),
    )
    op.add_column("received_events", sa.Column("request_hash", sa.Text), schema=SCHEMA)


def downgrade() -> None:
    op.drop_column("received_events", "request_hash", schema=SCHEMA)
    op.drop_index("uq_endpoints_tenant_request_id", "endpoints", schema=SCHEMA)
    op.drop_column("endpoints", "request_hash", schema=SCHEMA)
    op.drop_column("endpoints", "request_id", schema=SCHEMA)
