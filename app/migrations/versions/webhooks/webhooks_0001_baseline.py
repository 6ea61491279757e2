"""webhooks: operations and outbox.

Revision ID: webhooks_0001
Revises:
Create Date: 2026-11-25
"""

from app.migrations.baseline import create_common, drop_common

revision = "webhooks_0001"
down_revision = None
branch_labels = None
depends_on = None
SCHEMA = "webhooks"


def upgrade() -> None:
    create_common(SCHEMA)


def downgrade() -> None:
    drop_common(SCHEMA)
