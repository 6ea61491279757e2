"""Unit of work of the imports domain."""

from __future__ import annotations

from typing import Protocol

from sqlalchemy.ext.asyncio import AsyncSession

from domains.imports.repository import ImportsRepository, SqlImportsRepository
from domains.operations.unit_of_work import SqlUnitOfWork, UnitOfWork


class ImportsUoW(UnitOfWork, Protocol):
    """What the imports service needs of a unit of work: the common repositories plus the
    imports repositories. :class:`ImportsUnitOfWork` is the PostgreSQL one; tests use an
    in-memory fake.
    """

    @property
    def imports(self) -> ImportsRepository:
        """Datasets, imports, chunks and records."""
        ...


class ImportsUnitOfWork(SqlUnitOfWork):
    """A transaction on the imports schema: datasets, imports, records, operations, outbox."""

    imports: SqlImportsRepository

    def _bind(self, session: AsyncSession) -> None:
        super()._bind(session)
        self.imports = SqlImportsRepository(session)


_: type[ImportsUoW] = ImportsUnitOfWork  # mypy proves the SQL class satisfies the protocol
