"""Tables of the ``reports`` schema."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg

from domains.operations.tables import operations_table
from domains.operations.unit_of_work import DomainTables
from domains.shared.inbox import inbox_table
from domains.shared.tables import make_metadata, outbox_table

SCHEMA = "reports"
metadata = make_metadata(SCHEMA)
operations = operations_table(metadata)
outbox = outbox_table(metadata)
inbox = inbox_table(metadata)
tables = DomainTables(
    schema=SCHEMA, metadata=metadata, operations=operations, outbox=outbox, inbox=inbox
)

reports = sa.Table(
    "reports",
    metadata,
    sa.Column("id", pg.UUID(as_uuid=True), primary_key=True),
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
    sa.CheckConstraint("status IN ('PENDING','SUCCEEDED','FAILED')", name="status"),
    sa.CheckConstraint("type IN ('dataset_daily','endpoint_daily','digest')", name="type"),
    sa.CheckConstraint("format IN ('csv','json')", name="format"),
    sa.CheckConstraint("end_date >= start_date", name="period"),
    # List indexes: the tenant, the filtered column, then the order key (create_time, id).
    sa.Index("ix_reports_tenant_create_time", "tenant", "create_time", "id"),
    sa.Index("ix_reports_tenant_type", "tenant", "type", "create_time", "id"),
    sa.Index("ix_reports_tenant_format", "tenant", "format", "create_time", "id"),
    sa.Index("ix_reports_tenant_type_format", "tenant", "type", "format", "create_time", "id"),
    sa.Index("ix_reports_operation_id", "operation_id"),
)
"""Requested reports (one per ``POST /v1/reports``), with the outcome of their generation."""

report_files = sa.Table(
    "report_files",
    metadata,
    sa.Column(
        "report_id",
        pg.UUID(as_uuid=True),
        sa.ForeignKey("reports.reports.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("content", sa.LargeBinary, nullable=False),
    sa.Column("content_type", sa.Text, nullable=False),
    sa.Column("sha256", sa.Text, nullable=False),
    sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
)
"""Generated files, stored in PostgreSQL (durable with the report row, no shared volume)."""

applied_events = sa.Table(
    "applied_events",
    metadata,
    sa.Column("event_id", pg.UUID(as_uuid=True), primary_key=True),
    sa.Column("type", sa.Text, nullable=False),
    sa.Column("tenant", sa.Text, nullable=False),
    sa.Column("outcome", sa.Text, nullable=False),
    sa.Column("event_time", sa.DateTime(timezone=True), nullable=False),
    sa.Column("applied_time", sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint("outcome IN ('applied','ignored')", name="outcome"),
    sa.Index("ix_applied_events_applied_time", "applied_time"),
)
"""Integration events already applied: inserted with the projection change, so an event id is
counted once however often it is delivered."""

dataset_daily = sa.Table(
    "dataset_daily",
    metadata,
    sa.Column("tenant", sa.Text, primary_key=True),
    sa.Column("dataset_id", sa.Text, primary_key=True),
    sa.Column("day", sa.Date, primary_key=True),
    sa.Column("dataset", sa.Text, nullable=False),
    sa.Column("imports_completed", sa.Integer, nullable=False, server_default="0"),
    sa.Column("imports_failed", sa.Integer, nullable=False, server_default="0"),
    sa.Column("rows_total", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("rows_accepted", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("rows_rejected", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("update_time", sa.DateTime(timezone=True), nullable=False),
    sa.Index("ix_dataset_daily_tenant_day", "tenant", "day"),
)
"""Projection: per tenant, dataset and UTC day, imports and rows."""

endpoint_daily = sa.Table(
    "endpoint_daily",
    metadata,
    sa.Column("tenant", sa.Text, primary_key=True),
    sa.Column("endpoint_id", sa.Text, primary_key=True),
    sa.Column("day", sa.Date, primary_key=True),
    sa.Column("endpoint", sa.Text, nullable=False),
    sa.Column("deliveries_succeeded", sa.Integer, nullable=False, server_default="0"),
    sa.Column("deliveries_failed", sa.Integer, nullable=False, server_default="0"),
    sa.Column("deliveries_dead", sa.Integer, nullable=False, server_default="0"),
    sa.Column("update_time", sa.DateTime(timezone=True), nullable=False),
    # Frozen when the day's latency samples are compacted (retention); NULL while they exist.
    sa.Column("latency_p50_ms", sa.Float, nullable=True),
    sa.Column("latency_p95_ms", sa.Float, nullable=True),
    sa.Index("ix_endpoint_daily_tenant_day", "tenant", "day"),
)
"""Projection: per tenant, webhook endpoint and UTC day, delivery outcomes."""

delivery_latencies = sa.Table(
    "delivery_latency_counts",
    metadata,
    sa.Column("tenant", sa.Text, primary_key=True),
    sa.Column("day", sa.Date, primary_key=True),
    sa.Column("endpoint_id", sa.Text, primary_key=True),
    # Rounded to 3 significant digits (events.latency_bucket): a few thousand values at most.
    sa.Column("latency_ms", sa.Float, primary_key=True),
    sa.Column("samples", sa.BigInteger, nullable=False),
    # Retention finds the days due for compaction without walking the table.
    sa.Index("ix_delivery_latency_counts_day", "day"),
)
"""Latency samples of successful deliveries as a histogram: how many deliveries of an
endpoint-day took each (rounded) latency. p50/p95 are computed at report time exactly as
``percentile_cont`` over the samples would; the table stops growing once a day's distinct
values are seen. Retention folds a day's figures into ``endpoint_daily`` and
``tenant_daily_latency`` and deletes its rows, so the table holds a few days at most."""

tenant_daily_latency = sa.Table(
    "tenant_daily_latency",
    metadata,
    sa.Column("tenant", sa.Text, primary_key=True),
    sa.Column("day", sa.Date, primary_key=True),
    sa.Column("latency_p50_ms", sa.Float, nullable=False),
    sa.Column("latency_p95_ms", sa.Float, nullable=False),
)
"""A tenant's p50/p95 delivery latency over all its endpoints for one compacted day (the digest
report's figures once the day's samples are gone)."""
