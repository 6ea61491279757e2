"""Unit of work of the reports domain."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from domains.operations.unit_of_work import SqlUnitOfWork
from domains.reports.repository import SqlProjectionRepository, SqlReportRepository


class ReportsUnitOfWork(SqlUnitOfWork):
    """A transaction on the reports schema: reports, projections, operations and outbox."""

    reports: SqlReportRepository
    projections: SqlProjectionRepository

    def _bind(self, session: AsyncSession) -> None:
        super()._bind(session)
        self.reports = SqlReportRepository(session)
        self.projections = SqlProjectionRepository(session)
