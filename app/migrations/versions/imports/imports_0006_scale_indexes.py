"""imports: list indexes (tenant, filtered column, create_time, id) and retention indexes.

Revision ID: imports_0006
Revises: imports_0005
Create Date: 2026-12-04
"""

from app.migrations.baseline import add_scale_indexes, drop_scale_indexes

revision = "imports_0006"
down_revision = "imports_0005"
branch_labels = None
depends_on = None
SCHEMA = "imports"


def upgrade() -> None:
    add_scale_indexes(SCHEMA)


def downgrade() -> None:
    drop_scale_indexes(SCHEMA)
