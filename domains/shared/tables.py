"""SQLAlchemy table helpers shared by every domain schema: metadata and the outbox table."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg

from domains.shared.partitions import PARTITION_BY, partitioned

NAMING_CONVENTION: dict[str, str] = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def make_metadata(schema: str) -> sa.MetaData:
    """Returns the MetaData of one domain schema, with the naming convention.

    Args:
        schema: The domain's schema name (same as the domain).

    Returns:
        A new ``MetaData``.
    """
    return sa.MetaData(schema=schema, naming_convention=NAMING_CONVENTION)


def outbox_table(metadata: sa.MetaData) -> sa.Table:
    """Defines the transactional outbox of one domain schema.

    A row is a task to publish: written in the same transaction as the domain change, published
    after commit (fast path) or by the relay, and kept after publishing for audit and retry.

    Args:
        metadata: The domain's metadata.

    Returns:
        The ``outbox`` table.
    """
    table = sa.Table(
        "outbox",
        metadata,
        sa.Column("id", pg.UUID(as_uuid=True), primary_key=True),
        sa.Column("task_name", sa.Text, nullable=False),
        sa.Column("queue", sa.Text, nullable=False),
        sa.Column("args", pg.JSONB, nullable=False, server_default=sa.text("'[]'::jsonb")),
        sa.Column("kwargs", pg.JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
        sa.Column("headers", pg.JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
        sa.Column("task_id", sa.Text, nullable=False),
        sa.Column("operation_id", pg.UUID(as_uuid=True), nullable=True),
        sa.Column("created_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("available_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("sent_time", sa.DateTime(timezone=True), nullable=True),
        sa.Column("publish_attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("last_error", sa.Text, nullable=True),
        sa.Index(
            "ix_outbox_unsent",
            "available_time",
            postgresql_where=sa.text("sent_time IS NULL"),
        ),
        sa.Index("ix_outbox_operation_id", "operation_id"),
        # Retention deletes sent rows by age without walking the table.
        sa.Index(
            "ix_outbox_sent_time", "sent_time", postgresql_where=sa.text("sent_time IS NOT NULL")
        ),
        # Time partitions by id (UUIDv7): retention drops whole days (domains/shared/partitions).
        postgresql_partition_by=PARTITION_BY,
    )
    return partitioned(table)
