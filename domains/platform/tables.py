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
)
