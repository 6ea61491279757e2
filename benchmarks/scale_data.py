"""Bulk growth of the listed tables (operations, deliveries, reports) for scale tests.

One ``INSERT ... SELECT FROM generate_series`` per table, never the API: 1M rows take seconds.
Used by ``benchmarks/scale.py`` and the EXPLAIN test (``tests/integration/test_list_plans.py``).

The data has the shapes that hurt a list at scale: one tenant (``big``) holding 90% of the
rows, most operations done (SUCCEEDED), a few FAILED spread over the whole history, and
PENDING/RUNNING only among the newest rows; ids are UUIDv7 built from ``create_time``, which
spans the last 30 days in id order.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.expression import ClauseElement, Executable


class Explain(Executable, ClauseElement):
    """``EXPLAIN (ANALYZE, FORMAT JSON) <statement>``, with the statement's own parameters."""

    inherit_cache = False

    def __init__(self, statement: sa.Select[Any]) -> None:
        """Wraps ``statement``.

        Args:
            statement: The SELECT to explain (and run).
        """
        self.statement = statement


@compiles(Explain)
def _explain(element: Explain, compiler: Any, **kw: Any) -> str:
    return "EXPLAIN (ANALYZE, FORMAT JSON) " + str(compiler.process(element.statement, **kw))


BIG_TENANT = "big"
"""The tenant owning 90% of the rows (every 10th row belongs to one of 7 small tenants)."""

BIG_ENDPOINT = "01890000-0000-7000-8000-000000000001"
"""The endpoint holding 90% of the deliveries."""

SPAN_DAYS = 30
"""The rows' create_time spans this many days, ending now."""

# A UUIDv7 for row i: 48-bit millisecond time, version 7, variant 10, then row-derived bits.
_UUID7 = (
    "(lpad(to_hex((extract(epoch FROM {ts}) * 1000)::bigint), 12, '0') || '7'"
    " || substr(md5(i::text), 1, 3) || '8' || substr(md5(i::text), 4, 15))::uuid"
)
_TS = "(now() - interval '{days} days' + (i::float8 / {n}) * interval '{days} days')"
_TENANT = f"CASE WHEN i % 10 = 0 THEN 't' || (i % 7) ELSE '{BIG_TENANT}' END"


def operations_sql(schema: str, n: int, *, start: int = 1) -> str:
    """Returns the INSERT growing ``<schema>.operations`` by ``n`` rows.

    Args:
        schema: Domain schema.
        n: Rows to add.
        start: First row number (to grow in several steps without id clashes).

    Returns:
        One SQL statement.
    """
    ts = _TS.format(days=SPAN_DAYS, n=n)
    state = (
        f"CASE WHEN i > {start + n - 1} - 200 THEN (ARRAY['PENDING','RUNNING'])[1 + i % 2]"
        " WHEN i % 100 = 1 THEN 'FAILED' WHEN i % 1000 = 2 THEN 'CANCELLED'"
        " ELSE 'SUCCEEDED' END"
    )
    return f"""
INSERT INTO "{schema}".operations (
    id, domain, type, target, state, done, progress, attempt, dispatch_count, dispatch,
    create_time, update_time, end_time, lease_seconds, pending_deadline_seconds, tenant)
SELECT {_UUID7.format(ts="ts")}, '{schema}',
       CASE WHEN i % 100 = 7 THEN 'rare' WHEN i % 3 = 0 THEN 'import' ELSE 'ping' END,
       'things/' || i, state, state NOT IN ('PENDING', 'RUNNING'),
       '{{"done": 1, "total": 1, "message": ""}}'::jsonb, 1, 1,
       '{{"task_name": "{schema}.ping", "queue": "{schema}", "args": [], "kwargs": {{}}}}'::jsonb,
       ts, ts + interval '1 second',
       CASE WHEN state IN ('PENDING', 'RUNNING') THEN NULL ELSE ts + interval '1 second' END,
       30, 300, {_TENANT}
FROM (SELECT i, {ts.replace("i::float8", f"(i - {start})::float8")} AS ts, {state} AS state
      FROM generate_series({start}, {start + n - 1}) AS i) AS g
"""


def deliveries_sql(n: int, *, start: int = 1) -> list[str]:
    """Returns the statements growing ``webhooks.deliveries`` by ``n`` rows.

    Args:
        n: Rows to add (90% on :data:`BIG_ENDPOINT`, the rest on 7 small endpoints).
        start: First row number.

    Returns:
        SQL statements (the endpoints first, idempotently).
    """
    ts = _TS.format(days=SPAN_DAYS, n=n).replace("i::float8", f"(i - {start})::float8")
    endpoints = f"""
INSERT INTO webhooks.endpoints (id, tenant, url, event_types, enabled, secret, create_time,
                                update_time)
SELECT CASE WHEN e = 0 THEN '{BIG_ENDPOINT}'::uuid
            ELSE ('01890000-0000-7000-8000-00000000010' || e)::uuid END,
       CASE WHEN e = 0 THEN '{BIG_TENANT}' ELSE 't' || e END,
       'https://example.com/hook', '[]'::jsonb, true, 'secret', now(), now()
FROM generate_series(0, 7) AS e
ON CONFLICT DO NOTHING
"""
    deliveries = f"""
INSERT INTO webhooks.deliveries (id, tenant, endpoint_id, event_id, event_type, body, state,
                                 attempts, create_time, update_time, end_time)
SELECT {_UUID7.format(ts="ts")},
       CASE WHEN i % 10 = 0 THEN 't' || (1 + i % 7) ELSE '{BIG_TENANT}' END,
       CASE WHEN i % 10 = 0 THEN ('01890000-0000-7000-8000-00000000010' || (1 + i % 7))::uuid
            ELSE '{BIG_ENDPOINT}'::uuid END,
       md5('e' || i)::uuid,
       CASE WHEN i % 100 = 7 THEN 'rare.Happened' ELSE 'imports.ImportCompleted' END,
       '{{}}', state, 1, ts, ts, CASE WHEN state = 'PENDING' THEN NULL ELSE ts END
FROM (SELECT i, {ts} AS ts,
             CASE WHEN i > {start + n - 1} - 200 THEN 'PENDING' WHEN i % 100 = 1 THEN 'DEAD'
                  ELSE 'SUCCEEDED' END AS state
      FROM generate_series({start}, {start + n - 1}) AS i) AS g
"""
    return [endpoints, deliveries]


def reports_sql(n: int, *, start: int = 1) -> str:
    """Returns the INSERT growing ``reports.reports`` by ``n`` rows.

    Args:
        n: Rows to add.
        start: First row number.

    Returns:
        One SQL statement.
    """
    ts = _TS.format(days=SPAN_DAYS, n=n).replace("i::float8", f"(i - {start})::float8")
    return f"""
INSERT INTO reports.reports (id, tenant, type, format, period_label, start_date, end_date,
                             operation_id, create_time, status)
SELECT {_UUID7.format(ts="ts")}, {_TENANT},
       CASE WHEN i % 100 = 7 THEN 'digest' WHEN i % 2 = 0 THEN 'dataset_daily'
            ELSE 'endpoint_daily' END,
       CASE WHEN i % 50 = 3 THEN 'json' ELSE 'csv' END,
       'yesterday', ts::date, ts::date, md5('o' || i)::uuid, ts, 'SUCCEEDED'
FROM (SELECT i, {ts} AS ts FROM generate_series({start}, {start + n - 1}) AS i) AS g
"""


async def grow(conn: Any, statements: dict[str, list[str]]) -> None:
    """Runs growth statements fast: each table is made UNLOGGED (throwaway databases only),
    its indexes are dropped, the rows inserted, and the same indexes (their ``pg_indexes``
    definitions) built again, then the table analyzed.

    Args:
        conn: An open SQLAlchemy ``AsyncConnection`` in a transaction.
        statements: Qualified table name (``schema.table``) -> statements filling it.
    """
    await conn.exec_driver_sql("SET LOCAL synchronous_commit = off")
    await conn.exec_driver_sql("SET LOCAL maintenance_work_mem = '256MB'")
    for table, sqls in statements.items():
        schema, name = table.split(".")
        # No WAL for throwaway data: tables referencing this one go unlogged first.
        referencing = await conn.exec_driver_sql(
            "SELECT DISTINCT conrelid::regclass::text FROM pg_constraint"
            f" WHERE contype = 'f' AND confrelid = '{schema}.{name}'::regclass"
        )
        for (child,) in referencing.all():
            await conn.exec_driver_sql(f"ALTER TABLE {child} SET UNLOGGED")
        # A partitioned table (operations) has no storage of its own: its partitions do.
        parts = await conn.exec_driver_sql(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            f" WHERE i.inhparent = '{schema}.{name}'::regclass"
        )
        for part in [row[0] for row in parts.all()] or [name]:
            await conn.exec_driver_sql(f'ALTER TABLE "{schema}"."{part}" SET UNLOGGED')
        rows = await conn.exec_driver_sql(
            "SELECT i.indexname, i.indexdef FROM pg_indexes i"
            " LEFT JOIN pg_constraint c ON c.conname = i.indexname"
            " AND c.connamespace = (SELECT oid FROM pg_namespace WHERE nspname = i.schemaname)"
            f" WHERE i.schemaname = '{schema}' AND i.tablename = '{name}' AND c.oid IS NULL"
        )
        indexes = rows.all()
        for index_name, _ in indexes:
            await conn.exec_driver_sql(f'DROP INDEX "{schema}"."{index_name}"')
        for sql in sqls:
            await conn.exec_driver_sql(sql)
        for _, definition in indexes:
            # A partitioned index prints as "ON ONLY": that would skip the partitions.
            await conn.exec_driver_sql(definition.replace(" ON ONLY ", " ON "))
        await conn.exec_driver_sql(f'ANALYZE "{schema}"."{name}"')
