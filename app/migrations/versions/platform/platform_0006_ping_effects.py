"""platform: ping_effects, the append-only log of every ping effect applied (fault oracle).

Revision ID: platform_0006
Revises: platform_0005
Create Date: 2026-12-04
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql as pg

revision = "platform_0006"
down_revision = "platform_0005"
branch_labels = None
depends_on = None
SCHEMA = "platform"


def upgrade() -> None:
    op.create_table(
        "ping_effects",
        sa.Column("id", pg.UUID(as_uuid=True), nullable=False),
        sa.Column("operation_id", pg.UUID(as_uuid=True), nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("worker", sa.Text, nullable=False),
        sa.Column("applied_time", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_ping_effects"),
        schema=SCHEMA,
    )
    op.create_index("ix_ping_effects_operation_id", "ping_effects", ["operation_id"], schema=SCHEMA)


def downgrade() -> None:
    op.drop_table("ping_effects", schema=SCHEMA)
