"""Retention: deleting old rows in short batches (one helper for every domain's purge)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

MAX_BATCHES = 1000
"""Batches one purge call runs at most (what is left waits for the next run)."""


async def delete_batch(
    session: AsyncSession, table: sa.Table, condition: sa.ColumnElement[bool], limit: int
) -> int:
    """Deletes at most ``limit`` rows of ``table`` matching ``condition``.

    The rows are picked by physical address (``ctid``; by primary key in a partitioned table)
    from an index-served subquery, so one batch is one short statement whatever the table's
    size.

    Args:
        session: The unit of work's session.
        table: The table.
        condition: Which rows are old (served by an index).
        limit: Most rows deleted.

    Returns:
        Rows deleted.
    """
    key: sa.ColumnElement[Any] = sa.literal_column("ctid")
    if table.dialect_options["postgresql"].get("partition_by"):
        # A row address is unique within one partition only: pick partitioned rows by key.
        [key] = table.primary_key.columns
    picked = sa.select(key).select_from(table).where(condition).limit(limit)
    statement = sa.delete(table).where(key == sa.func.any(sa.func.array(picked.scalar_subquery())))
    result = await session.execute(statement)
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


async def purge_batches(batch: Callable[[], Awaitable[int]], limit: int) -> int:
    """Runs ``batch`` (one committed batch) until one deletes fewer than ``limit`` rows.

    Args:
        batch: Deletes one batch in its own transaction and returns the rows deleted.
        limit: The batch size.

    Returns:
        Rows deleted in total.
    """
    total = 0
    for _ in range(MAX_BATCHES):
        deleted = await batch()
        total += deleted
        if deleted < limit:
            break
    return total
