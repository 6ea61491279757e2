"""reports: latency samples compacted by retention (frozen day percentiles, an index by day).

Revision ID: reports_0009
Revises: reports_0008
Create Date: 2026-12-05
"""

import sqlalchemy as sa
from alembic import op

revision = "reports_0009"
down_revision = "reports_0008"
branch_labels = None
depends_on = None
SCHEMA = "reports"


def upgrade() -> None:
    op.add_column(
        "endpoint_daily", sa.Column("latency_p50_ms", sa.Float, nullable=True), schema=SCHEMA
    )
    op.add_column(
        "endpoint_daily", sa.Column("latency_p95_ms", sa.Float, nullable=True), schema=SCHEMA
    )
    op.create_table(
        "tenant_daily_latency",
        sa.Column("tenant", sa.Text, nullable=False),
        sa.Column("day", sa.Date, nullable=False),
        sa.Column("latency_p50_ms", sa.Float, nullable=False),
        sa.Column("latency_p95_ms", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("tenant", "day", name="pk_tenant_daily_latency"),
        schema=SCHEMA,
    )
    op.create_index("ix_delivery_latencies_day", "delivery_latencies", ["day"], schema=SCHEMA)


def downgrade() -> None:
    op.drop_index("ix_delivery_latencies_day", "delivery_latencies", schema=SCHEMA)
    op.drop_table("tenant_daily_latency", schema=SCHEMA)
    op.drop_column("endpoint_daily", "latency_p95_ms", schema=SCHEMA)
    op.drop_column("endpoint_daily", "latency_p50_ms", schema=SCHEMA)
