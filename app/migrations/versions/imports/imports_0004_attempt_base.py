"""imports: operations.attempt_base (the attempt cap counts attempts since creation or :retry).

Revision ID: imports_0004
Revises: imports_0003
Create Date: 2026-12-04
"""

from app.migrations.baseline import add_attempt_base, drop_attempt_base

revision = "imports_0004"
down_revision = "imports_0003"
branch_labels = None
depends_on = None
SCHEMA = "imports"


def upgrade() -> None:
    add_attempt_base(SCHEMA)


def downgrade() -> None:
    drop_attempt_base(SCHEMA)
