"""platform: schedules (filled in by the schedules work).

Revision ID: platform_0003
Revises: platform_0002
Create Date: 2026-11-25
"""

revision = "platform_0003"
down_revision = "platform_0002"
branch_labels = None
depends_on = None
SCHEMA = "platform"


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
