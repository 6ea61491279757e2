"""imports: operations and outbox.

Revision ID: imports_0001
Revises:
Create Date: 2026-11-25
"""

from app.migrations.baseline import create_common, drop_common

revision = "imports_0001"
down_revision = None
branch_labels = None
depends_on = None
SCHEMA = "imports"


def upgrade() -> None:
    create_common(SCHEMA)


def downgrade() -> None:
    drop_common(SCHEMA)
