"""imports: retention index (finished imports still holding a file, by end time).

Revision ID: imports_0007
Revises: imports_0006
Create Date: 2026-12-04
"""

import sqlalchemy as sa
from alembic import op

revision = "imports_0007"
down_revision = "imports_0006"
branch_labels = None
depends_on = None
SCHEMA = "imports"


def upgrade() -> None:
    op.create_index(
        "ix_imports_complete_time",
        "imports",
        ["complete_time"],
        schema=SCHEMA,
        postgresql_where=sa.text("file_path IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_imports_complete_time", "imports", schema=SCHEMA)
