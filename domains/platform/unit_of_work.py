"""Unit of work of the platform domain."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from domains.operations.unit_of_work import SqlUnitOfWork
from domains.platform.repository import SqlPingRepository


class PlatformUnitOfWork(SqlUnitOfWork):
    """A transaction on the platform schema: pings, operations and outbox."""

    pings: SqlPingRepository

    def _bind(self, session: AsyncSession) -> None:
        super()._bind(session)
        self.pings = SqlPingRepository(session)
