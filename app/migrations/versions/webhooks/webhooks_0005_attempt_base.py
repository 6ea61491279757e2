"""webhooks: operations.attempt_base (the attempt cap counts attempts since creation or :retry).

Revision ID: webhooks_0005
Revises: webhooks_0004
Create Date: 2026-12-04
"""

from app.migrations.baseline import add_attempt_base, drop_attempt_base

revision = "webhooks_0005"
down_revision = "webhooks_0004"
branch_labels = None
depends_on = None
SCHEMA = "webhooks"


def upgrade() -> None:
    add_attempt_base(SCHEMA)


def downgrade() -> None:
    drop_attempt_base(SCHEMA)
