"""Tables of the ``platform`` schema."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg

from domains.operations.tables import operations_table
from domains.operations.unit_of_work import DomainTables
from domains.shared.tables import make_metadata, outbox_table

SCHEMA = "platform"
metadata = make_metadata(SCHEMA)
operations = operations_table(metadata)
outbox = outbox_table(metadata)
tables = DomainTables(schema=SCHEMA, metadata=metadata, operations=operations, outbox=outbox)

pings = sa.Table(
    "pings",
    metadata,
    sa.Column("id", pg.UUID(as_uuid=True), primary_key=True),
    sa.Column("message", sa.Text, nullable=False),
    sa.Column("sleep_seconds", sa.Float, nullable=False),
    sa.Column("steps", sa.Integer, nullable=False),
    sa.Column("fail_attempts", sa.Integer, nullable=False),
    sa.Column("operation_id", pg.UUID(as_uuid=True), nullable=False),
    sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
    sa.Column("complete_time", sa.DateTime(timezone=True)),
    sa.Column("reply", sa.Text),
    sa.Column("worker", sa.Text),
    sa.Column("completions", sa.Integer, nullable=False, server_default="0"),
    sa.Column("tenant", sa.Text, nullable=False, server_default="default"),  # platform_0004
    # Retention deletes answered pings by age without walking the table.
    sa.Index(
        "ix_pings_complete_time",
        "complete_time",
        postgresql_where=sa.text("complete_time IS NOT NULL"),
    ),
)

ping_effects = sa.Table(
    "ping_effects",
    metadata,
    sa.Column("id", pg.UUID(as_uuid=True), primary_key=True),
    sa.Column("operation_id", pg.UUID(as_uuid=True), nullable=False),
    sa.Column("attempt", sa.Integer, nullable=False),
    sa.Column("worker", sa.Text, nullable=False),
    sa.Column("applied_time", sa.DateTime(timezone=True), nullable=False),
    sa.Index("ix_ping_effects_operation_id", "operation_id"),
)
"""Append-only log of every application of a ping's effect: no uniqueness guard on purpose, so a
broken fencing token shows as two rows for one operation (the fault suite's oracle)."""

# Scheduled work (schedules API, DB-backed beat with one leader).
schedules = sa.Table(
    "schedules",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("tenant", sa.Text, nullable=False),
    sa.Column("display_name", sa.Text, nullable=False, server_default=""),
    sa.Column("workflow", sa.Text),
    sa.Column("task", sa.Text),
    sa.Column("args", pg.JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
    sa.Column("cron", sa.Text),
    sa.Column("interval_seconds", sa.Float),
    sa.Column("time_zone", sa.Text, nullable=False, server_default="UTC"),
    sa.Column("enabled", sa.Boolean, nullable=False, server_default=sa.true()),
    sa.Column("catch_up", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("system", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
    sa.Column("update_time", sa.DateTime(timezone=True), nullable=False),
    sa.Column("next_run_time", sa.DateTime(timezone=True)),
    sa.Column("last_run_time", sa.DateTime(timezone=True)),
    sa.Column("last_operation", sa.Text),
    sa.Column("request_id", sa.Text),
    sa.Column("request_hash", sa.Text),
    sa.CheckConstraint("(cron IS NULL) <> (interval_seconds IS NULL)", name="timing"),
    sa.CheckConstraint("(workflow IS NULL) <> (task IS NULL)", name="target"),
    sa.Index("ix_schedules_due", "next_run_time", postgresql_where=sa.text("enabled")),
    sa.Index("ix_schedules_tenant_id", "tenant", "id"),
    # AIP-155: one schedule per (tenant, request_id); concurrent twins meet here.
    sa.Index(
        "uq_schedules_tenant_request_id",
        "tenant",
        "request_id",
        unique=True,
        postgresql_where=sa.text("request_id IS NOT NULL"),
    ),
)

schedule_runs = sa.Table(
    "schedule_runs",
    metadata,
    # The primary key is the "one fire per slot" guarantee: a second beat (or a retry) that
    # fires the same slot hits it and does nothing.
    sa.Column("schedule_id", sa.Text, primary_key=True),
    sa.Column("fire_time", sa.DateTime(timezone=True), primary_key=True),
    sa.Column("tenant", sa.Text, nullable=False),
    sa.Column("workflow", sa.Text),
    sa.Column("task", sa.Text),
    sa.Column("args", pg.JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
    sa.Column("state", sa.Text, nullable=False),
    sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
    sa.Column("fired_by", sa.Text, nullable=False),
    sa.Column("manual", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("operation", sa.Text),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("error", sa.Text),
    sa.Index(
        "ix_schedule_runs_pending", "create_time", postgresql_where=sa.text("state = 'PENDING'")
    ),
)

beat_leader = sa.Table(
    "beat_leader",
    metadata,
    sa.Column("name", sa.Text, primary_key=True),
    sa.Column("holder", sa.Text, nullable=False),
    sa.Column("node", sa.Text, nullable=False),
    sa.Column("acquired_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
)

beat_nodes = sa.Table(
    "beat_nodes",
    metadata,
    sa.Column("holder", sa.Text, primary_key=True),
    sa.Column("node", sa.Text, nullable=False),
    sa.Column("leader", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("last_seen", sa.DateTime(timezone=True), nullable=False),
)

schedule_seeds = sa.Table(
    "schedule_seeds",
    metadata,
    # Default schedules created once (a user may delete them; they are not re-created).
    sa.Column("key", sa.Text, primary_key=True),
    sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
)

api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("id", pg.UUID(as_uuid=True), primary_key=True),
    sa.Column("prefix", sa.Text, nullable=False),
    sa.Column("secret_hash", sa.Text, nullable=False),
    sa.Column("tenant", sa.Text, nullable=False),
    sa.Column("name", sa.Text, nullable=False, server_default=""),
    sa.Column("scopes", pg.JSONB, nullable=False),
    sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
    sa.Column("expire_time", sa.DateTime(timezone=True)),
    sa.Column("revoke_time", sa.DateTime(timezone=True)),
    sa.Index("uq_api_keys_prefix", "prefix", unique=True),
    sa.Index("ix_api_keys_tenant", "tenant"),
)
"""The ``platform.api_keys`` table: prefix and secret digest, never the secret."""
