"""imports: AIP-155 request id on datasets (one dataset per tenant and request id).

Self-contained (two columns and one index on ``datasets``): if another imports revision
lands first, only ``down_revision`` needs re-pointing.

Revision ID: imports_0008
Revises: imports_0007
Create Date: 2026-12-05
"""

import sqlalchemy as sa
from alembic import op

revision = "imports_0008"
down_revision = "imports_0007"
branch_labels = None
depends_on = None
SCHEMA = "imports"


def upgrade() -> None:
    op.add_column("datasets", sa.Column("request_id", sa.Text), schema=SCHEMA)
    op.add_column("datasets", sa.Column("request_hash", sa.Text), schema=SCHEMA)
    op.create_index(
        "uq_datasets_tenant_request_id",
        "datasets",
        ["tenant", "request_id"],
        unique=True,
        schema=SCHEMA,
        postgresql_where=sa.text("request_id IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("uq_datasets_tenant_request_id", "datasets", schema=SCHEMA)
    op.drop_column("datasets", "request_hash", schema=SCHEMA)
    op.drop_column("datasets", "request_id", schema=SCHEMA)
