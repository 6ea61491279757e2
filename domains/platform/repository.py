"""Every query on platform tables lives here."""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from collections.abc import Callable
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from domains.platform import tables
from domains.platform.model import Ping
from domains.shared.ids import new_id
from domains.shared.retention import delete_batch


class PingRepository(Protocol):
    """Storage of pings."""

    async def add(self, ping: Ping) -> None:
        """Inserts a ping."""

    async def get(
        self, ping_id: uuid.UUID, *, for_update: bool = False, tenant: str | None = None
    ) -> Ping | None:
        """Loads a ping (of ``tenant`` only, when given)."""

    async def save(self, ping: Ping) -> None:
        """Writes back a ping."""


class SqlPingRepository:
    """Pings in the ``platform`` schema."""

    def __init__(self, session: AsyncSession) -> None:
        """Binds the repository.

        Args:
            session: The unit of work's session.
        """
        self._session = session

    async def add(self, ping: Ping) -> None:
        """Inserts ``ping``.

        Args:
            ping: A new ping.
        """
        row = {f.name: getattr(ping, f.name) for f in dataclasses.fields(ping)}
        await self._session.execute(sa.insert(tables.pings), row)

    async def get(
        self, ping_id: uuid.UUID, *, for_update: bool = False, tenant: str | None = None
    ) -> Ping | None:
        """Loads a ping.

        Args:
            ping_id: Its id.
            for_update: Lock the row.
            tenant: Only a ping of this tenant (``None``: any, for the worker).

        Returns:
            The ping or ``None``.
        """
        query = sa.select(tables.pings).where(tables.pings.c.id == ping_id)
        if tenant is not None:
            query = query.where(tables.pings.c.tenant == tenant)
        if for_update:
            query = query.with_for_update()
        row = (await self._session.execute(query)).mappings().first()
        return Ping(**dict(row)) if row else None

    async def save(self, ping: Ping) -> None:
        """Writes back ``ping``.

        Args:
            ping: A loaded, changed ping.
        """
        values = dataclasses.asdict(ping)
        values.pop("id")
        await self._session.execute(
            sa.update(tables.pings).where(tables.pings.c.id == ping.id).values(**values)
        )

    async def log_effect(
        self, operation_id: uuid.UUID, attempt: int, worker: str, now: dt.datetime
    ) -> None:
        """Appends one row to the effect log (never deduplicated: it is the oracle).

        Args:
            operation_id: The ping's operation.
            attempt: The attempt applying the effect.
            worker: The worker applying it.
            now: Current time.
        """
        await self._session.execute(
            sa.insert(tables.ping_effects).values(
                id=new_id(),
                operation_id=operation_id,
                attempt=attempt,
                worker=worker,
                applied_time=now,
            )
        )

    async def purge(self, completed_before: dt.datetime, limit: int) -> int:
        """Deletes pings answered before ``completed_before`` (one batch).

        Args:
            completed_before: Cut-off on ``complete_time``.
            limit: Most rows deleted.

        Returns:
            Rows deleted.
        """
        t = tables.pings
        return await delete_batch(self._session, t, t.c.complete_time < completed_before, limit)


def ping_exists(ping_id: uuid.UUID) -> sa.ColumnElement[bool]:
    """The fused finish's precondition: the ping row still exists.

    Args:
        ping_id: The ping.

    Returns:
        An ``EXISTS`` condition.
    """
    return sa.exists(sa.select(tables.pings.c.id).where(tables.pings.c.id == ping_id))


def answer_effects(
    ping_id: uuid.UUID, operation_id: uuid.UUID, attempt: int, worker: str, now: dt.datetime
) -> list[Callable[[sa.ColumnElement[bool]], Any]]:
    """A ping's answer as statements for the fused finish (see ``OperationRunner.finish_fused``).

    The same writes as ``answer`` + :meth:`SqlPingRepository.save` +
    :meth:`SqlPingRepository.log_effect`, each guarded by ``owned`` (the fencing-token check).

    Args:
        ping_id: The ping.
        operation_id: Its operation.
        attempt: The attempt applying the effect.
        worker: The answering worker.
        now: Current time.

    Returns:
        ``owned -> statement`` builders: the ping's reply and the effect-log row.
    """
    pings, effects = tables.pings, tables.ping_effects
    return [
        lambda owned: (
            sa.update(pings)
            .where(pings.c.id == ping_id, owned)
            .values(
                reply=sa.literal("pong: ") + pings.c.message,
                worker=worker,
                complete_time=now,
                completions=pings.c.completions + 1,
            )
        ),
        lambda owned: sa.insert(effects).from_select(
            ["id", "operation_id", "attempt", "worker", "applied_time"],
            sa.select(
                sa.literal(new_id(), effects.c.id.type),
                sa.literal(operation_id, effects.c.operation_id.type),
                sa.literal(attempt, sa.Integer),
                sa.literal(worker, sa.Text),
                sa.literal(now, effects.c.applied_time.type),
            ).where(owned),
        ),
    ]
