"""reports: reports, their files, applied event ids and the daily projections.

Revision ID: reports_0003
Revises: reports_0002
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql as pg

revision = "reports_0003"
down_revision = "reports_0002"
branch_labels = None
depends_on = None
SCHEMA = "reports"


def upgrade() -> None:
    op.create_table(
        "reports",
        sa.Column("id", pg.UUID(as_uuid=True), nullable=False),
        sa.Column("tenant", sa.Text, nullable=False),
        sa.Column("type", sa.Text, nullable=False),
        sa.Column("format", sa.Text, nullable=False),
        sa.Column("period_label", sa.Text, nullable=False),
        sa.Column("start_date", sa.Date, nullable=False),
        sa.Column("end_date", sa.Date, nullable=False),
        sa.Column("operation_id", pg.UUID(as_uuid=True), nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("complete_time", sa.DateTime(timezone=True)),
        sa.Column("size_bytes", sa.BigInteger),
        sa.Column("row_count", sa.Integer),
        sa.Column("error", sa.Text),
        sa.PrimaryKeyConstraint("id", name="pk_reports"),
        sa.CheckConstraint("status IN ('PENDING','SUCCEEDED','FAILED')", name="ck_reports_status"),
        sa.CheckConstraint(
            "type IN ('dataset_daily','endpoint_daily','digest')", name="ck_reports_type"
        ),
        sa.CheckConstraint("format IN ('csv','json')", name="ck_reports_format"),
        sa.CheckConstraint("end_date >= start_date", name="ck_reports_period"),
        schema=SCHEMA,
    )
    op.create_index("ix_reports_tenant_id", "reports", ["tenant", "id"], schema=SCHEMA)
    op.create_index("ix_reports_operation_id", "reports", ["operation_id"], schema=SCHEMA)
    op.create_table(
        "report_files",
        sa.Column("report_id", pg.UUID(as_uuid=True), nullable=False),
        sa.Column("content", sa.LargeBinary, nullable=False),
        sa.Column("content_type", sa.Text, nullable=False),
        sa.Column("sha256", sa.Text, nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("report_id", name="pk_report_files"),
        sa.ForeignKeyConstraint(
            ["report_id"],
            [f"{SCHEMA}.reports.id"],
            name="fk_report_files_report_id_reports",
            ondelete="CASCADE",
        ),
        schema=SCHEMA,
    )
    op.create_table(
        "applied_events",
        sa.Column("event_id", pg.UUID(as_uuid=True), nullable=False),
        sa.Column("type", sa.Text, nullable=False),
        sa.Column("tenant", sa.Text, nullable=False),
        sa.Column("outcome", sa.Text, nullable=False),
        sa.Column("event_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("applied_time", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("event_id", name="pk_applied_events"),
        sa.CheckConstraint("outcome IN ('applied','ignored')", name="ck_applied_events_outcome"),
        schema=SCHEMA,
    )
    op.create_table(
        "dataset_daily",
        sa.Column("tenant", sa.Text, nullable=False),
        sa.Column("dataset_id", sa.Text, nullable=False),
        sa.Column("day", sa.Date, nullable=False),
        sa.Column("dataset", sa.Text, nullable=False),
        sa.Column("imports_completed", sa.Integer, nullable=False, server_default="0"),
        sa.Column("imports_failed", sa.Integer, nullable=False, server_default="0"),
        sa.Column("rows_total", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("rows_accepted", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("rows_rejected", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("update_time", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("tenant", "dataset_id", "day", name="pk_dataset_daily"),
        schema=SCHEMA,
    )
    op.create_index(
        "ix_dataset_daily_tenant_day", "dataset_daily", ["tenant", "day"], schema=SCHEMA
    )
    op.create_table(
        "endpoint_daily",
        sa.Column("tenant", sa.Text, nullable=False),
        sa.Column("endpoint_id", sa.Text, nullable=False),
        sa.Column("day", sa.Date, nullable=False),
        sa.Column("endpoint", sa.Text, nullable=False),
        sa.Column("deliveries_succeeded", sa.Integer, nullable=False, server_default="0"),
        sa.Column("deliveries_failed", sa.Integer, nullable=False, server_default="0"),
        sa.Column("deliveries_dead", sa.Integer, nullable=False, server_default="0"),
        sa.Column("update_time", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("tenant", "endpoint_id", "day", name="pk_endpoint_daily"),
        schema=SCHEMA,
    )
    op.create_index(
        "ix_endpoint_daily_tenant_day", "endpoint_daily", ["tenant", "day"], schema=SCHEMA
    )
    op.create_table(
        "delivery_latencies",
        sa.Column("event_id", pg.UUID(as_uuid=True), nullable=False),
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


def downgrade() -> None:
    op.drop_table("delivery_latencies", schema=SCHEMA)
    op.drop_table("endpoint_daily", schema=SCHEMA)
    op.drop_table("dataset_daily", schema=SCHEMA)
    op.drop_table("applied_events", schema=SCHEMA)
    op.drop_table("report_files", schema=SCHEMA)
    op.drop_table("reports", schema=SCHEMA)
