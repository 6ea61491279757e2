"""Every query on platform tables lives here."""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from typing import Protocol

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from domains.platform import tables
from domains.platform.model import Ping
from domains.shared.ids import new_id


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
