"""platform: operations.attempt_base (the attempt cap counts attempts since creation or :retry).

Revision ID: platform_0005
Revises: platform_0004
Create Date: 2026-12-04
"""

from app.migrations.baseline import add_attempt_base, drop_attempt_base

revision = "platform_0005"
down_revision = "platform_0004"
branch_labels = None
depends_on = None
SCHEMA = "platform"


def upgrade() -> None:
    add_attempt_base(SCHEMA)


def downgrade() -> None:
    drop_attempt_base(SCHEMA)
