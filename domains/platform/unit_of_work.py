"""Unit of work of the platform domain."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from domains.operations.unit_of_work import SqlUnitOfWork
from domains.platform.repository import SqlPingRepository
from domains.platform.schedule_repository import (
    SqlBeatRepository,
    SqlScheduleRepository,
    SqlScheduleRunRepository,
)


class PlatformUnitOfWork(SqlUnitOfWork):
    """A transaction on the platform schema: pings, schedules, beat lease, operations, outbox."""

    pings: SqlPingRepository
    schedules: SqlScheduleRepository
    schedule_runs: SqlScheduleRunRepository
    beat: SqlBeatRepository

    def _bind(self, session: AsyncSession) -> None:
        super()._bind(session)
        self.pings = SqlPingRepository(session)
        self.schedules = SqlScheduleRepository(session)
        self.schedule_runs = SqlScheduleRunRepository(session)
        self.beat = SqlBeatRepository(session)
