"""The ``operations`` table, defined in each domain schema by that domain's tables module."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg

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
    return sa.Table(
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
        sa.Index("uq_operations_tenant_request_id", "tenant", "request_id", unique=True),
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
    )
