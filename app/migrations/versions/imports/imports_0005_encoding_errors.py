"""imports: per-import encoding_errors option (fail | replace | reject_row).

Revision ID: imports_0005
Revises: imports_0004
Create Date: 2026-12-04
"""

import sqlalchemy as sa
from alembic import op

revision = "imports_0005"
down_revision = "imports_0004"
branch_labels = None
depends_on = None
SCHEMA = "imports"


def upgrade() -> None:
    op.add_column(
        "imports",
        sa.Column("encoding_errors", sa.Text, nullable=False, server_default="fail"),
        schema=SCHEMA,
    )


def downgrade() -> None:
    op.drop_column("imports", "encoding_errors", schema=SCHEMA)
