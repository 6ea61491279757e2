"""Unit of work of the platform domain."""

from __future__ import annotations

from typing import Protocol

from sqlalchemy.ext.asyncio import AsyncSession

from domains.operations.unit_of_work import SqlUnitOfWork, UnitOfWork
from domains.platform.keys.repository import ApiKeyRepository, SqlApiKeyRepository
from domains.platform.pings.repository import PingRepository, SqlPingRepository
from domains.platform.schedules.repository import (
    BeatRepository,
    ScheduleRepository,
    ScheduleRunRepository,
    SqlBeatRepository,
    SqlScheduleRepository,
    SqlScheduleRunRepository,
)


class PlatformUoW(UnitOfWork, Protocol):
    """What the pings, schedules and API keys services need of a unit of work: the common
    repositories plus the platform ones. :class:`PlatformUnitOfWork` is the PostgreSQL one;
    tests use an in-memory fake.
    """

    @property
    def pings(self) -> PingRepository:
        """Pings and their effect log."""
        ...

    @property
    def schedules(self) -> ScheduleRepository:
        """Schedules."""
        ...

    @property
    def schedule_runs(self) -> ScheduleRunRepository:
        """Fired schedule slots."""
        ...

    @property
    def beat(self) -> BeatRepository:
        """The beat leader lease and the beat nodes seen."""
        ...

    @property
    def keys(self) -> ApiKeyRepository:
        """API keys."""
        ...


class PlatformUnitOfWork(SqlUnitOfWork):
    """A transaction on the platform schema: pings, schedules, beat lease, API keys, operations,
    outbox.
    """

    pings: SqlPingRepository
    schedules: SqlScheduleRepository
    schedule_runs: SqlScheduleRunRepository
    beat: SqlBeatRepository
    keys: SqlApiKeyRepository

    def _bind(self, session: AsyncSession) -> None:
        super()._bind(session)
        self.pings = SqlPingRepository(session)
        self.schedules = SqlScheduleRepository(session)
        self.schedule_runs = SqlScheduleRunRepository(session)
        self.beat = SqlBeatRepository(session)
        self.keys = SqlApiKeyRepository(session)


_: type[PlatformUoW] = PlatformUnitOfWork  # mypy proves the SQL class satisfies the protocol
