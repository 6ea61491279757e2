"""imports: import_chunks.keys_sorted (a chunk staged in key order with distinct keys).

Revision ID: imports_0011
Revises: imports_0010
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = "imports_0011"
down_revision = "imports_0010"
branch_labels = None
depends_on = None
SCHEMA = "imports"


def upgrade() -> None:
    # false for every existing chunk: their merge keeps sorting and de-duplicating in SQL.
    op.add_column(
        "import_chunks",
        sa.Column("keys_sorted", sa.Boolean, nullable=False, server_default=sa.false()),
        schema=SCHEMA,
    )


def downgrade() -> None:
    op.drop_column("import_chunks", "keys_sorted", schema=SCHEMA)
