"""Frozen DDL of the tables every domain schema starts with (operations, outbox).

Used by each domain's first revision. Never edit: later changes are new revisions.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql as pg


def create_common(schema: str) -> None:
    """Creates ``operations`` and ``outbox`` in ``schema``."""
    op.create_table(
        "operations",
        sa.Column("id", pg.UUID(as_uuid=True), nullable=False),
        sa.Column("domain", sa.Text, nullable=False),
        sa.Column("type", sa.Text, nullable=False),
        sa.Column("target", sa.Text, nullable=False),
        sa.Column("state", sa.Text, nullable=False),
        sa.Column("done", sa.Boolean, nullable=False),
        sa.Column("progress", pg.JSONB, nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False),
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
        sa.PrimaryKeyConstraint("id", name="pk_operations"),
        sa.CheckConstraint(
            "state IN ('PENDING','RUNNING','SUCCEEDED','FAILED','CANCELLING','CANCELLED')",
            name="ck_operations_state",
        ),
        schema=schema,
    )
    op.create_index(
        "uq_operations_request_id", "operations", ["request_id"], unique=True, schema=schema
    )
    op.create_index(
        "ix_operations_active",
        "operations",
        ["state", "update_time"],
        schema=schema,
        postgresql_where=sa.text("NOT done"),
    )
    op.create_index("ix_operations_create_time", "operations", ["create_time"], schema=schema)
    op.create_table(
        "outbox",
        sa.Column("id", pg.UUID(as_uuid=True), nullable=False),
        sa.Column("task_name", sa.Text, nullable=False),
        sa.Column("queue", sa.Text, nullable=False),
        sa.Column("args", pg.JSONB, nullable=False, server_default=sa.text("'[]'::jsonb")),
        sa.Column("kwargs", pg.JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
        sa.Column("headers", pg.JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
        sa.Column("task_id", sa.Text, nullable=False),
        sa.Column("operation_id", pg.UUID(as_uuid=True)),
        sa.Column("created_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("available_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("sent_time", sa.DateTime(timezone=True)),
        sa.Column("publish_attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("last_error", sa.Text),
        sa.PrimaryKeyConstraint("id", name="pk_outbox"),
        schema=schema,
    )
    op.create_index(
        "ix_outbox_unsent",
        "outbox",
        ["available_time"],
        schema=schema,
        postgresql_where=sa.text("sent_time IS NULL"),
    )
    op.create_index("ix_outbox_operation_id", "outbox", ["operation_id"], schema=schema)


def drop_common(schema: str) -> None:
    """Drops what :func:`create_common` created."""
    op.drop_table("outbox", schema=schema)
    op.drop_table("operations", schema=schema)


def add_operation_tenant(schema: str) -> None:
    """Revision 0002 of every domain: ``operations.tenant``, request ids unique per tenant."""
    op.add_column(
        "operations",
        sa.Column("tenant", sa.Text, nullable=False, server_default="default"),
        schema=schema,
    )
    op.drop_index("uq_operations_request_id", "operations", schema=schema)
    op.create_index(
        "uq_operations_tenant_request_id",
        "operations",
        ["tenant", "request_id"],
        unique=True,
        schema=schema,
    )


def drop_operation_tenant(schema: str) -> None:
    """Reverts :func:`add_operation_tenant`."""
    op.drop_index("uq_operations_tenant_request_id", "operations", schema=schema)
    op.create_index(
        "uq_operations_request_id", "operations", ["request_id"], unique=True, schema=schema
    )
    op.drop_column("operations", "tenant", schema=schema)


def add_attempt_base(schema: str) -> None:
    """``operations.attempt_base``: where the attempt cap starts counting (0, or the attempt
    at the last ``:retry``)."""
    op.add_column(
        "operations",
        sa.Column("attempt_base", sa.Integer, nullable=False, server_default="0"),
        schema=schema,
    )


def drop_attempt_base(schema: str) -> None:
    """Reverts :func:`add_attempt_base`."""
    op.drop_column("operations", "attempt_base", schema=schema)


_LIST_INDEXES: dict[str, tuple[str, ...]] = {
    "create_time": (),
    "state": ("state",),
    "done": ("done",),
    "type": ("type",),
    "target": ("target",),
    "type_done": ("type", "done"),
}


def add_scale_indexes(schema: str) -> None:
    """Issue #22 revision of every domain: list and retention indexes on operations/outbox.

    The list indexes lead with the tenant and the filtered column and end with the order key
    ``(create_time, id)``; they replace ``ix_operations_create_time``, which made a create_time
    filter walk the primary key. Partial indexes let retention find old done operations and
    old sent outbox rows without walking the tables.
    """
    op.drop_index("ix_operations_create_time", "operations", schema=schema)
    for name, columns in _LIST_INDEXES.items():
        op.create_index(
            f"ix_operations_tenant_{name}",
            "operations",
            ["tenant", *columns, "create_time", "id"],
            schema=schema,
        )
    op.create_index(
        "ix_operations_end_time",
        "operations",
        ["end_time"],
        schema=schema,
        postgresql_where=sa.text("done"),
    )
    op.create_index(
        "ix_outbox_sent_time",
        "outbox",
        ["sent_time"],
        schema=schema,
        postgresql_where=sa.text("sent_time IS NOT NULL"),
    )


def drop_scale_indexes(schema: str) -> None:
    """Reverts :func:`add_scale_indexes`."""
    op.drop_index("ix_outbox_sent_time", "outbox", schema=schema)
    op.drop_index("ix_operations_end_time", "operations", schema=schema)
    for name in _LIST_INDEXES:
        op.drop_index(f"ix_operations_tenant_{name}", "operations", schema=schema)
    op.create_index("ix_operations_create_time", "operations", ["create_time"], schema=schema)
