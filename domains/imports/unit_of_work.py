"""Unit of work of the imports domain."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from domains.imports.repository import SqlImportsRepository
from domains.operations.unit_of_work import SqlUnitOfWork


class ImportsUnitOfWork(SqlUnitOfWork):
    """A transaction on the imports schema: datasets, imports, records, operations, outbox."""

    imports: SqlImportsRepository

    def _bind(self, session: AsyncSession) -> None:
        super()._bind(session)
        self.imports = SqlImportsRepository(session)
