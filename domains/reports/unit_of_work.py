"""Unit of work of the reports domain."""

from __future__ import annotations

from typing import Protocol

from sqlalchemy.ext.asyncio import AsyncSession

from domains.operations.unit_of_work import SqlUnitOfWork, UnitOfWork
from domains.reports.repository import (
    ProjectionRepository,
    ReportRepository,
    SqlProjectionRepository,
    SqlReportRepository,
)


class ReportsUoW(UnitOfWork, Protocol):
    """What the reports service needs of a unit of work: the common repositories plus the
    reports repositories. :class:`ReportsUnitOfWork` is the PostgreSQL one; tests use an
    in-memory fake.
    """

    @property
    def reports(self) -> ReportRepository:
        """Reports and their files."""
        ...

    @property
    def projections(self) -> ProjectionRepository:
        """The event-fed projections."""
        ...


class ReportsUnitOfWork(SqlUnitOfWork):
    """A transaction on the reports schema: reports, projections, operations and outbox."""

    reports: SqlReportRepository
    projections: SqlProjectionRepository

    def _bind(self, session: AsyncSession) -> None:
        super()._bind(session)
        self.reports = SqlReportRepository(session)
        self.projections = SqlProjectionRepository(session)


_: type[ReportsUoW] = ReportsUnitOfWork  # mypy proves the SQL class satisfies the protocol
