"""Tables of the ``webhooks`` schema."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg

from domains.operations.tables import operations_table
from domains.operations.unit_of_work import DomainTables
from domains.shared.inbox import inbox_table
from domains.shared.tables import make_metadata, outbox_table

SCHEMA = "webhooks"
metadata = make_metadata(SCHEMA)
operations = operations_table(metadata)
outbox = outbox_table(metadata)
inbox = inbox_table(metadata)
tables = DomainTables(
    schema=SCHEMA, metadata=metadata, operations=operations, outbox=outbox, inbox=inbox
)

_TS = sa.DateTime(timezone=True)

endpoints = sa.Table(
    "endpoints",
    metadata,
    sa.Column("id", pg.UUID(as_uuid=True), primary_key=True),
    sa.Column("tenant", sa.Text, nullable=False),
    sa.Column("url", sa.Text, nullable=False),
    sa.Column("description", sa.Text, nullable=False, server_default=""),
    sa.Column("event_types", pg.JSONB, nullable=False),
    sa.Column("enabled", sa.Boolean, nullable=False),
    sa.Column("disabled_reason", sa.Text),
    sa.Column("secret", sa.Text, nullable=False),
    sa.Column("previous_secret", sa.Text),
    sa.Column("previous_secret_expire_time", _TS),
    sa.Column("rate_limit", sa.Float),
    sa.Column("consecutive_failures", sa.Integer, nullable=False, server_default="0"),
    sa.Column("failing_since", _TS),
    sa.Column("breaker_state", sa.Text, nullable=False, server_default="CLOSED"),
    sa.Column("breaker_until", _TS),
    sa.Column("create_time", _TS, nullable=False),
    sa.Column("update_time", _TS, nullable=False),
    sa.Column("request_id", sa.Text),
    sa.Column("request_hash", sa.Text),
    sa.CheckConstraint("breaker_state IN ('CLOSED','OPEN','HALF_OPEN')", name="breaker_state"),
    sa.Index("ix_endpoints_tenant_id", "tenant", "id"),
    # AIP-155: one endpoint per (tenant, request_id); concurrent twins meet here.
    sa.Index(
        "uq_endpoints_tenant_request_id",
        "tenant",
        "request_id",
        unique=True,
        postgresql_where=sa.text("request_id IS NOT NULL"),
    ),
    sa.Index(
        "ix_endpoints_breaker_until",
        "breaker_until",
        postgresql_where=sa.text("breaker_state != 'CLOSED'"),
    ),
)

deliveries = sa.Table(
    "deliveries",
    metadata,
    sa.Column("id", pg.UUID(as_uuid=True), primary_key=True),
    sa.Column("tenant", sa.Text, nullable=False),
    sa.Column(
        "endpoint_id",
        pg.UUID(as_uuid=True),
        sa.ForeignKey("webhooks.endpoints.id", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("event_id", pg.UUID(as_uuid=True), nullable=False),
    sa.Column("event_type", sa.Text, nullable=False),
    sa.Column("body", sa.Text, nullable=False),
    sa.Column("state", sa.Text, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("cycle_attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("next_attempt_time", _TS),
    sa.Column("lease_until", _TS),
    sa.Column("last_status_code", sa.Integer),
    sa.Column("last_error", sa.Text),
    sa.Column("create_time", _TS, nullable=False),
    sa.Column("update_time", _TS, nullable=False),
    sa.Column("end_time", _TS),
    sa.CheckConstraint(
        "state IN ('PENDING','SENDING','SUCCEEDED','FAILED','DEAD','PAUSED')", name="state"
    ),
    sa.Index("uq_deliveries_event_id_endpoint_id", "event_id", "endpoint_id", unique=True),
    sa.Index("ix_deliveries_endpoint_id_id", "endpoint_id", "id"),
    # List indexes: the endpoint, the filtered column, then the order key (create_time, id).
    sa.Index("ix_deliveries_endpoint_id_create_time", "endpoint_id", "create_time", "id"),
    sa.Index("ix_deliveries_endpoint_id_state", "endpoint_id", "state", "create_time", "id"),
    sa.Index(
        "ix_deliveries_endpoint_id_event_type", "endpoint_id", "event_type", "create_time", "id"
    ),
    # Retention: done deliveries by age.
    sa.Index(
        "ix_deliveries_end_time", "end_time", postgresql_where=sa.text("end_time IS NOT NULL")
    ),
    sa.Index(
        "ix_deliveries_lease_until",
        "lease_until",
        postgresql_where=sa.text("state = 'SENDING'"),
    ),
    sa.Index(
        "ix_deliveries_next_attempt_time",
        "next_attempt_time",
        postgresql_where=sa.text("state = 'PENDING'"),
    ),
)

attempts = sa.Table(
    "attempts",
    metadata,
    sa.Column("id", pg.UUID(as_uuid=True), primary_key=True),
    sa.Column(
        "delivery_id",
        pg.UUID(as_uuid=True),
        sa.ForeignKey("webhooks.deliveries.id", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("tenant", sa.Text, nullable=False),
    sa.Column("attempt", sa.Integer, nullable=False),
    sa.Column("time", _TS, nullable=False),
    sa.Column("status_code", sa.Integer),
    sa.Column("duration_ms", sa.Float, nullable=False),
    sa.Column("response_body", sa.Text, nullable=False, server_default=""),
    sa.Column("error", sa.Text),
    sa.Index("ix_attempts_delivery_id_attempt", "delivery_id", "attempt"),
)

received_events = sa.Table(
    "received_events",
    metadata,
    sa.Column("event_id", pg.UUID(as_uuid=True), primary_key=True),
    sa.Column("type", sa.Text, nullable=False),
    sa.Column("tenant", sa.Text, nullable=False),
    sa.Column("receive_time", _TS, nullable=False),
    sa.Column("deliveries", sa.Integer, nullable=False),
    # Published events with an AIP-155 request id: fingerprint of the publish request.
    sa.Column("request_hash", sa.Text),
    sa.Index("ix_received_events_receive_time", "receive_time"),
)
