"""Time partitions of the ``operations`` and ``outbox`` tables (issue #22).

Both tables are partitioned by ``RANGE (id)``. Their ids are UUIDv7, whose first 48 bits are
the creation time in milliseconds, so a range of ids is a range of creation times: one
partition per UTC day (``operations_p20261205``), found by the primary key's own lookups (a
claim by id reads one partition), while the primary key stays a plain ``id``.

Three kinds of partitions:

* ``<table>_p<yyyymmdd>``: one UTC day of ids, made ahead of time by :func:`ensure_partitions`
  (the hourly retention run keeps :data:`DAYS_AHEAD` days made);
* ``<table>_p_legacy``: every id before the day the table was partitioned (the rows the
  migration copied);
* ``<table>_p_default``: the DEFAULT partition - ids no day partition covers (a day the
  retention run did not make in time, ids that are not UUIDv7). Rows there are purged row by
  row, like before.

Retention drops a partition whose whole range is older than the cut-off once none of its rows
is to be kept (:func:`drop_expired_partitions`), instead of deleting its rows one by one: no
dead tuples, no VACUUM, space returned at once. Rows of younger partitions (and late rows of
old ones) are still deleted in batches.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import re
import uuid
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import UUID as PG_UUID
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

log = logging.getLogger(__name__)

PARTITION_BY = "RANGE (id)"
"""The ``postgresql_partition_by`` of both tables."""

DAYS_AHEAD = 3
"""Day partitions kept made ahead of today (the retention run makes them hourly)."""

LOCK_TIMEOUT = "200ms"
"""How long making or dropping a partition waits for the parent's lock before trying again at
the next run: the statements behind it (submits, claims) wait no longer than this."""

_DAY_NAME = re.compile(r"_p(\d{8})$")


def id_at(moment: dt.datetime) -> uuid.UUID:
    """The smallest UUIDv7 created at ``moment`` (a partition bound).

    Args:
        moment: An aware datetime.

    Returns:
        The UUID whose 48-bit time is ``moment`` in milliseconds and all other bits zero.
    """
    millis = int(moment.timestamp() * 1000)
    return uuid.UUID(int=millis << 80)


def day_start(day: dt.date) -> dt.datetime:
    """Midnight UTC of ``day``."""
    return dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC)


def day_partition(table: str, day: dt.date) -> str:
    """Name of ``table``'s partition for ``day``."""
    return f"{table}_p{day:%Y%m%d}"


def legacy_partition(table: str) -> str:
    """Name of ``table``'s partition for ids before it was partitioned."""
    return f"{table}_p_legacy"


def default_partition(table: str) -> str:
    """Name of ``table``'s DEFAULT partition."""
    return f"{table}_p_default"


def is_partition_name(table: str, name: str) -> bool:
    """Whether ``name`` is one of ``table``'s partitions (migration checks skip them)."""
    return name.startswith(f"{table}_p") and (
        name in (legacy_partition(table), default_partition(table))
        or _DAY_NAME.search(name) is not None
    )


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _table(schema: str, name: str) -> sa.TableClause:
    """A lightweight table (``id`` only) for statements on one partition."""
    return sa.table(name, sa.column("id", PG_UUID(as_uuid=True)), schema=schema)


def create_day_partition_sql(schema: str, table: str, day: dt.date) -> str:
    """DDL making ``table``'s partition for ``day`` (idempotent).

    Args:
        schema: The domain schema.
        table: ``operations`` or ``outbox``.
        day: The UTC day.

    Returns:
        One ``CREATE TABLE IF NOT EXISTS ... PARTITION OF`` statement.
    """
    low = id_at(day_start(day))
    high = id_at(day_start(day + dt.timedelta(days=1)))
    return (
        f"CREATE TABLE IF NOT EXISTS {_q(schema)}.{_q(day_partition(table, day))}"
        f" PARTITION OF {_q(schema)}.{_q(table)} FOR VALUES FROM ('{low}') TO ('{high}')"
    )


def partitioned(table: sa.Table) -> sa.Table:
    """Has ``metadata.create_all`` give ``table`` its DEFAULT partition (migrations make theirs).

    Args:
        table: A table with ``postgresql_partition_by``.

    Returns:
        The same table.
    """
    schema, name = table.schema or "public", table.name
    sa.event.listen(
        table,
        "after_create",
        sa.DDL(  # type: ignore[no-untyped-call]
            f"CREATE TABLE IF NOT EXISTS {_q(schema)}.{_q(default_partition(name))}"
            f" PARTITION OF {_q(schema)}.{_q(name)} DEFAULT"
        ),
    )
    return table


@dataclasses.dataclass(frozen=True)
class Partition:
    """One partition of a table.

    Attributes:
        name: Its table name (same schema as the parent).
        day: The UTC day it holds, ``None`` for the legacy and default partitions.
    """

    name: str
    day: dt.date | None


async def list_partitions(session: AsyncSession, schema: str, table: str) -> list[Partition]:
    """The partitions of ``schema.table``.

    Args:
        session: A session on the domain's primary.
        schema: The domain schema.
        table: ``operations`` or ``outbox``.

    Returns:
        Its partitions, by name.
    """
    rows = await session.execute(
        sa.text(
            "SELECT c.relname FROM pg_inherits i"
            " JOIN pg_class c ON c.oid = i.inhrelid"
            " JOIN pg_class p ON p.oid = i.inhparent"
            " JOIN pg_namespace n ON n.oid = p.relnamespace"
            " WHERE n.nspname = :schema AND p.relname = :table ORDER BY c.relname"
        ),
        {"schema": schema, "table": table},
    )
    found = []
    for (name,) in rows.all():
        match = _DAY_NAME.search(name)
        day = dt.datetime.strptime(match.group(1), "%Y%m%d").date() if match else None
        found.append(Partition(name, day))
    return found


async def _with_short_lock(session: AsyncSession, work: Any) -> bool:
    """Runs ``work()`` in a savepoint with :data:`LOCK_TIMEOUT`; ``False`` if a lock was busy."""
    try:
        async with session.begin_nested():
            await session.execute(sa.text(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))
            await work()
        return True
    except DBAPIError as exc:
        if "lock timeout" not in str(exc.orig) and "deadlock" not in str(exc.orig):
            raise
        return False


async def ensure_partitions(
    session: AsyncSession, schema: str, table: str, today: dt.date, days_ahead: int = DAYS_AHEAD
) -> list[str]:
    """Makes ``table``'s day partitions from ``today`` to ``today + days_ahead``.

    A day whose ids already landed in the DEFAULT partition (the run came too late) is left
    there: moving them would lock the table for as long as the copy takes.

    Args:
        session: A session on the domain's primary (the caller commits).
        schema: The domain schema.
        table: ``operations`` or ``outbox``.
        today: The current UTC day.
        days_ahead: Days made ahead.

    Returns:
        The partitions made.
    """
    existing = {p.name for p in await list_partitions(session, schema, table)}
    if not existing:
        return []  # not a partitioned table (an old schema): nothing to make
    made: list[str] = []
    default = default_partition(table)
    for offset in range(days_ahead + 1):
        day = today + dt.timedelta(days=offset)
        name = day_partition(table, day)
        if name in existing:
            continue
        if default in existing:
            rows = _table(schema, default)
            taken = await session.execute(
                sa.select(sa.literal(1))
                .select_from(rows)
                .where(
                    rows.c.id >= id_at(day_start(day)),
                    rows.c.id < id_at(day_start(day + dt.timedelta(days=1))),
                )
                .limit(1)
            )
            if taken.first() is not None:
                continue

        async def create(day: dt.date = day) -> None:
            await session.execute(sa.text(create_day_partition_sql(schema, table, day)))

        if await _with_short_lock(session, create):
            made.append(name)
        else:
            log.info("%s.%s: partition %s not made (table busy); next run", schema, table, name)
    return made


async def drop_expired_partitions(
    session: AsyncSession,
    schema: str,
    table: str,
    cutoff: dt.datetime,
    keep: str,
) -> tuple[int, int]:
    """Drops ``table``'s partitions wholly older than ``cutoff`` that hold no row to keep.

    Each candidate is checked twice: without locks (cheap, served by the partial indexes), then
    again under the parent's lock right before ``DROP TABLE``, so a row written in between
    (a late update) is never dropped.

    Args:
        session: A session on the domain's primary (the caller commits).
        schema: The domain schema.
        table: ``operations`` or ``outbox``.
        cutoff: Rows older than this may go.
        keep: SQL condition (with ``:cutoff``) true for a row that must stay.

    Returns:
        ``(partitions dropped, rows they held)``.
    """
    dropped = rows = 0
    for partition in await list_partitions(session, schema, table):
        if partition.day is not None:
            if day_start(partition.day + dt.timedelta(days=1)) > cutoff:
                continue
        elif partition.name != legacy_partition(table):
            continue  # the default partition's rows are purged row by row
        else:
            bound = await _legacy_bound(session, schema, partition.name)
            if bound is None or bound > cutoff:
                continue
        qualified = f"{schema}.{partition.name}"
        part = _table(schema, partition.name)
        # ``keep`` is the repositories' constant condition, never request data.
        probe = sa.select(sa.literal(1)).select_from(part).where(sa.text(keep)).limit(1)
        if (await session.execute(probe, {"cutoff": cutoff})).first() is not None:
            continue
        held = 0

        async def drop(part: sa.TableClause = part, probe: sa.Select[Any] = probe) -> None:
            nonlocal held
            await session.execute(sa.text(f"LOCK TABLE {_q(schema)}.{_q(table)}"))
            if (await session.execute(probe, {"cutoff": cutoff})).first() is not None:
                return
            counted = await session.execute(sa.select(sa.func.count()).select_from(part))
            held = int(counted.scalar_one())
            await session.execute(
                sa.schema.DropTable(sa.Table(part.name, sa.MetaData(), schema=schema))
            )

        if not await _with_short_lock(session, drop):
            log.info("%s: partition not dropped (table busy); next run", qualified)
        elif not await _exists(session, schema, partition.name):
            dropped += 1
            rows += held
    return dropped, rows


async def _exists(session: AsyncSession, schema: str, name: str) -> bool:
    found = await session.execute(
        sa.text("SELECT to_regclass(:name) IS NOT NULL"), {"name": f"{_q(schema)}.{_q(name)}"}
    )
    return bool(found.scalar_one())


async def _legacy_bound(session: AsyncSession, schema: str, name: str) -> dt.datetime | None:
    """The creation time up to which the legacy partition holds ids (its upper bound)."""
    found = await session.execute(
        sa.text(
            "SELECT pg_get_expr(c.relpartbound, c.oid) FROM pg_class c"
            " JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = :schema AND c.relname = :name"
        ),
        {"schema": schema, "name": name},
    )
    text = found.scalar_one_or_none()
    match = re.search(r"TO \('([0-9a-f-]{36})'\)", text or "")
    if match is None:
        return None
    millis = uuid.UUID(match.group(1)).int >> 80
    return dt.datetime.fromtimestamp(millis / 1000, dt.UTC)


class DayPartitions:
    """The day partitions of one table, as a repository offers them to retention."""

    def __init__(self, session: AsyncSession, table: sa.Table, *, keep: str) -> None:
        """Binds the table.

        Args:
            session: The unit of work's session (on the domain's primary).
            table: ``operations`` or ``outbox`` of a domain schema.
            keep: SQL condition (with ``:cutoff``) true for a row retention must keep.
        """
        self._session = session
        self._schema = str(table.schema)
        self._name = table.name
        self._keep = keep

    async def ensure(self, today: dt.date) -> list[str]:
        """Makes the day partitions ahead of time (see :func:`ensure_partitions`).

        Args:
            today: The current UTC day.

        Returns:
            The partitions made.
        """
        return await ensure_partitions(self._session, self._schema, self._name, today)

    async def drop_expired(self, older_than: dt.datetime) -> tuple[int, int]:
        """Drops the days wholly before ``older_than`` with no row to keep (see
        :func:`drop_expired_partitions`).

        Args:
            older_than: The retention cut-off.

        Returns:
            ``(partitions dropped, rows they held)``.
        """
        return await drop_expired_partitions(
            self._session, self._schema, self._name, older_than, self._keep
        )
