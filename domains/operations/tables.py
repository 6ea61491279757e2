"""The ``operations`` table, defined in each domain schema by that domain's tables module."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg

from domains.shared.partitions import PARTITION_BY, partitioned

LIST_INDEXES: dict[str, tuple[str, ...]] = {
    "create_time": (),
    "state": ("state",),
    "done": ("done",),
    "type": ("type",),
    "target": ("target",),
    "type_done": ("type", "done"),
}
"""Index name suffix -> columns between ``tenant`` and ``(create_time, id)``."""


def operations_table(metadata: sa.MetaData) -> sa.Table:
    """Defines the ``operations`` table in a domain's schema.

    Args:
        metadata: The domain's metadata (its schema).

    Returns:
        The table.
    """
    table = sa.Table(
        "operations",
        metadata,
        sa.Column("id", pg.UUID(as_uuid=True), primary_key=True),
        sa.Column("domain", sa.Text, nullable=False),
        sa.Column("type", sa.Text, nullable=False),
        sa.Column("target", sa.Text, nullable=False),
        sa.Column("state", sa.Text, nullable=False),
        sa.Column("done", sa.Boolean, nullable=False),
        sa.Column("progress", pg.JSONB, nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("attempt_base", sa.Integer, nullable=False, server_default="0"),
        sa.Column("dispatch_count", sa.Integer, nullable=False),
        sa.Column("dispatch", pg.JSONB, nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("update_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("start_time", sa.DateTime(timezone=True)),
        sa.Column("end_time", sa.DateTime(timezone=True)),
        sa.Column("heartbeat_time", sa.DateTime(timezone=True)),
        sa.Column("dispatch_time", sa.DateTime(timezone=True)),
        sa.Column("error", pg.JSONB),
        sa.Column("response", pg.JSONB),
        sa.Column("request_id", sa.Text),
        sa.Column("request_hash", sa.Text),
        sa.Column("lease_seconds", sa.Float, nullable=False),
        sa.Column("pending_deadline_seconds", sa.Float, nullable=False),
        sa.Column("correlation_id", sa.Text),
        sa.Column("tenant", sa.Text, nullable=False, server_default="default"),
        sa.CheckConstraint(
            "state IN ('PENDING','RUNNING','SUCCEEDED','FAILED','CANCELLING','CANCELLED')",
            name="state",
        ),
        # Request ids are unique per tenant in ``operation_requests`` (a unique index of a
        # partitioned table must hold the partition key).
        sa.Index(
            "ix_operations_active",
            "state",
            "update_time",
            postgresql_where=sa.text("NOT done"),
        ),
        # The list indexes: tenant, the filtered column, then the order key (create_time, id),
        # so every filter the API accepts reads only the rows of its page (api/v1/operations.py).
        *(
            sa.Index(f"ix_operations_tenant_{name}", "tenant", *columns, "create_time", "id")
            for name, columns in LIST_INDEXES.items()
        ),
        # Retention (purge_done) finds old done operations without walking the table.
        sa.Index("ix_operations_end_time", "end_time", postgresql_where=sa.text("done")),
        # Time partitions by id (UUIDv7): retention drops whole days (domains/shared/partitions).
        postgresql_partition_by=PARTITION_BY,
    )
    if f"{metadata.schema}.operation_requests" not in metadata.tables:
        operation_requests_table(metadata)
    return partitioned(table)


def operation_requests_table(metadata: sa.MetaData) -> sa.Table:
    """Defines ``operation_requests``: AIP-155 request ids, unique per tenant.

    The unique index ``operations`` had: a partitioned table cannot enforce uniqueness on
    columns that do not hold its partition key. A create carrying a request id writes its row
    here in the same statement as the operation, so a concurrent twin fails on this key.

    Args:
        metadata: The domain's metadata.

    Returns:
        The table.
    """
    return sa.Table(
        "operation_requests",
        metadata,
        sa.Column("tenant", sa.Text, primary_key=True),
        sa.Column("request_id", sa.Text, primary_key=True),
        sa.Column("operation_id", pg.UUID(as_uuid=True), nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.Index("ix_operation_requests_create_time", "create_time"),
    )
