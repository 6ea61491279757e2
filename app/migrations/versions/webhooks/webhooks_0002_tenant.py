"""webhooks: operations record the tenant that created them; request ids are unique per tenant.

Revision ID: webhooks_0002
Revises: webhooks_0001
Create Date: 2026-11-25
"""

from app.migrations.baseline import add_operation_tenant, drop_operation_tenant

revision = "webhooks_0002"
down_revision = "webhooks_0001"
branch_labels = None
depends_on = None
SCHEMA = "webhooks"


def upgrade() -> None:
    add_operation_tenant(SCHEMA)


def downgrade() -> None:
    drop_operation_tenant(SCHEMA)
