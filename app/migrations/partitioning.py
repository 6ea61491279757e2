"""Frozen DDL of the partitioning revision every domain schema has (issue #22).

``operations`` and ``outbox`` become tables partitioned by ``RANGE (id)`` (UUIDv7, so by
creation time, one partition per UTC day; see ``domains/shared/partitions.py``). The rows are
copied into a ``<table>_p_legacy`` partition holding every id before today; today's and the next
days' partitions and a DEFAULT one are made; the columns, defaults, check constraints and
indexes are the table's own (``CREATE TABLE ... (LIKE ...)`` and its ``pg_indexes``).

Request ids move to ``operation_requests`` (a unique index of a partitioned table must hold the
partition key, so ``uq_operations_tenant_request_id`` cannot stay).

Never edit: later changes are new revisions.
"""

from __future__ import annotations

import datetime as dt
import uuid

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql as pg

DAYS_AHEAD = 3


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _id_at(moment: dt.datetime) -> uuid.UUID:
    return uuid.UUID(int=int(moment.timestamp() * 1000) << 80)


def _indexes(schema: str, table: str) -> list[tuple[str, str]]:
    """``(name, definition)`` of ``table``'s indexes, the primary key's excluded."""
    rows = op.get_bind().execute(
        sa.text(
            "SELECT i.indexname, i.indexdef FROM pg_indexes i"
            " LEFT JOIN pg_constraint c ON c.conname = i.indexname AND c.contype = 'p'"
            " AND c.connamespace = (SELECT oid FROM pg_namespace WHERE nspname = i.schemaname)"
            " WHERE i.schemaname = :schema AND i.tablename = :table AND c.oid IS NULL"
            " ORDER BY i.indexname"
        ),
        {"schema": schema, "table": table},
    )
    return [(name, definition) for name, definition in rows.all()]


def _swap(schema: str, table: str, *, partition: bool, skip_indexes: tuple[str, ...]) -> None:
    """Replaces ``schema.table`` by a (non-)partitioned copy with the same rows and indexes."""
    old = f"{table}_old"
    s = _q(schema)
    indexes = [item for item in _indexes(schema, table) if item[0] not in skip_indexes]
    op.execute(f"ALTER TABLE {s}.{_q(table)} RENAME TO {_q(old)}")
    op.execute(f"ALTER INDEX {s}.{_q('pk_' + table)} RENAME TO {_q('pk_' + old)}")
    for name, _ in indexes:
        op.execute(f"DROP INDEX {s}.{_q(name)}")
    by = " PARTITION BY RANGE (id)" if partition else ""
    op.execute(
        f"CREATE TABLE {s}.{_q(table)} (LIKE {s}.{_q(old)} INCLUDING DEFAULTS"
        f" INCLUDING CONSTRAINTS){by}"
    )
    op.execute(f"ALTER TABLE {s}.{_q(table)} ADD CONSTRAINT {_q('pk_' + table)} PRIMARY KEY (id)")
    for _, definition in indexes:
        definition = definition.replace(" ON ONLY ", " ON ")
        op.execute(definition.replace(f" ON {schema}.{old} ", f" ON {schema}.{table} "))
    if partition:
        today = dt.datetime.now(dt.UTC).date()
        start = dt.datetime.combine(today, dt.time(), tzinfo=dt.UTC)
        op.execute(
            f"CREATE TABLE {s}.{_q(table + '_p_legacy')} PARTITION OF {s}.{_q(table)}"
            f" FOR VALUES FROM (MINVALUE) TO ('{_id_at(start)}')"
        )
        for offset in range(DAYS_AHEAD + 1):
            low = start + dt.timedelta(days=offset)
            high = low + dt.timedelta(days=1)
            op.execute(
                f"CREATE TABLE {s}.{_q(f'{table}_p{low:%Y%m%d}')} PARTITION OF {s}.{_q(table)}"
                f" FOR VALUES FROM ('{_id_at(low)}') TO ('{_id_at(high)}')"
            )
        op.execute(
            f"CREATE TABLE {s}.{_q(table + '_p_default')} PARTITION OF {s}.{_q(table)} DEFAULT"
        )
    op.execute(f"INSERT INTO {s}.{_q(table)} SELECT * FROM {s}.{_q(old)}")  # noqa: S608


def _drop_old(schema: str, table: str) -> None:
    op.execute(f"DROP TABLE {_q(schema)}.{_q(table + '_old')}")


def partition_common(schema: str) -> None:
    """Partitions ``operations`` and ``outbox`` of ``schema`` by time (keeping their rows)."""
    _swap(schema, "outbox", partition=True, skip_indexes=())
    _drop_old(schema, "outbox")
    _swap(schema, "operations", partition=True, skip_indexes=("uq_operations_tenant_request_id",))
    op.create_table(
        "operation_requests",
        sa.Column("tenant", sa.Text, nullable=False),
        sa.Column("request_id", sa.Text, nullable=False),
        sa.Column("operation_id", pg.UUID(as_uuid=True), nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("tenant", "request_id", name="pk_operation_requests"),
        schema=schema,
    )
    op.create_index(
        "ix_operation_requests_create_time",
        "operation_requests",
        ["create_time"],
        schema=schema,
    )
    copy = (
        f"INSERT INTO {_q(schema)}.operation_requests"  # noqa: S608 - quoted identifiers
        " (tenant, request_id, operation_id, create_time)"
        f" SELECT tenant, request_id, id, create_time FROM {_q(schema)}.operations_old"
        " WHERE request_id IS NOT NULL"
    )
    op.execute(copy)
    _drop_old(schema, "operations")


def unpartition_common(schema: str) -> None:
    """Reverts :func:`partition_common` (one plain table each again, rows kept)."""
    _swap(schema, "outbox", partition=False, skip_indexes=())
    _drop_old(schema, "outbox")
    _swap(schema, "operations", partition=False, skip_indexes=())
    _drop_old(schema, "operations")
    op.drop_table("operation_requests", schema=schema)
    op.create_index(
        "uq_operations_tenant_request_id",
        "operations",
        ["tenant", "request_id"],
        unique=True,
        schema=schema,
    )
