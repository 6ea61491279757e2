"""reports: operations record the tenant that created them; request ids are unique per tenant.

Revision ID: reports_0002
Revises: reports_0001
Create Date: 2026-11-25
"""

from app.migrations.baseline import add_operation_tenant, drop_operation_tenant

revision = "reports_0002"
down_revision = "reports_0001"
branch_labels = None
depends_on = None
SCHEMA = "reports"


def upgrade() -> None:
    add_operation_tenant(SCHEMA)


def downgrade() -> None:
    drop_operation_tenant(SCHEMA)
