"""platform: API keys (filled in by the security work).

Revision ID: platform_0004
Revises: platform_0003
Create Date: 2026-11-25
"""

revision = "platform_0004"
down_revision = "platform_0003"
branch_labels = None
depends_on = None
SCHEMA = "platform"


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
