"""imports: operations record the tenant that created them; request ids are unique per tenant.

Revision ID: imports_0002
Revises: imports_0001
Create Date: 2026-11-25
"""

from app.migrations.baseline import add_operation_tenant, drop_operation_tenant

revision = "imports_0002"
down_revision = "imports_0001"
branch_labels = None
depends_on = None
SCHEMA = "imports"


def upgrade() -> None:
    add_operation_tenant(SCHEMA)


def downgrade() -> None:
    drop_operation_tenant(SCHEMA)
