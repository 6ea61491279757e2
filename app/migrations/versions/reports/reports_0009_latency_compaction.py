"""reports: latency samples as a histogram, compacted by retention into frozen day percentiles.

``delivery_latencies`` (one row per successful delivery, growing without bound) becomes
``delivery_latency_counts``: one row per endpoint-day and latency rounded to 3 significant
digits, with its count. ``endpoint_daily`` and the new ``tenant_daily_latency`` keep a day's
p50/p95 once retention has deleted its samples.

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
    op.create_table(
        "delivery_latency_counts",
        sa.Column("tenant", sa.Text, nullable=False),
        sa.Column("day", sa.Date, nullable=False),
        sa.Column("endpoint_id", sa.Text, nullable=False),
        sa.Column("latency_ms", sa.Float, nullable=False),
        sa.Column("samples", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint(
            "tenant", "day", "endpoint_id", "latency_ms", name="pk_delivery_latency_counts"
        ),
        schema=SCHEMA,
    )
    op.create_index(
        "ix_delivery_latency_counts_day", "delivery_latency_counts", ["day"], schema=SCHEMA
    )
    # The samples so far, rounded to 3 significant digits as new ones are.
    op.execute(
        "INSERT INTO reports.delivery_latency_counts (tenant, day, endpoint_id, latency_ms,"
        " samples) SELECT tenant, day, endpoint_id, rounded, count(*) FROM (SELECT tenant, day,"
        " endpoint_id, CASE WHEN latency_ms > 0 THEN round(latency_ms::numeric,"
        " (2 - floor(log(latency_ms::numeric)))::int)::float8 ELSE 0 END AS rounded"
        " FROM reports.delivery_latencies) AS s GROUP BY tenant, day, endpoint_id, rounded"
    )
    op.drop_table("delivery_latencies", schema=SCHEMA)


def downgrade() -> None:
    op.create_table(
        "delivery_latencies",
        sa.Column("event_id", sa.Uuid, nullable=False),
        sa.Column("tenant", sa.Text, nullable=False),
        sa.Column("endpoint_id", sa.Text, nullable=False),
        sa.Column("day", sa.Date, nullable=False),
        sa.Column("latency_ms", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("event_id", name="pk_delivery_latencies"),
        schema=SCHEMA,
    )
    op.create_index(
        "ix_delivery_latencies_tenant_day_endpoint_id",
        "delivery_latencies",
        ["tenant", "day", "endpoint_id"],
        schema=SCHEMA,
    )
    # One sample per count (the event ids are not kept: new ones stand in for them).
    op.execute(
        "INSERT INTO reports.delivery_latencies (event_id, tenant, endpoint_id, day, latency_ms)"
        " SELECT gen_random_uuid(), tenant, endpoint_id, day, latency_ms"
        " FROM reports.delivery_latency_counts, generate_series(1, samples)"
    )
    op.drop_table("delivery_latency_counts", schema=SCHEMA)
    op.drop_table("tenant_daily_latency", schema=SCHEMA)
    op.drop_column("endpoint_daily", "latency_p95_ms", schema=SCHEMA)
    op.drop_column("endpoint_daily", "latency_p50_ms", schema=SCHEMA)
