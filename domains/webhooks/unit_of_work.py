"""Unit of work of the webhooks domain."""

from __future__ import annotations

from typing import Protocol

from sqlalchemy.ext.asyncio import AsyncSession

from domains.operations.unit_of_work import SqlUnitOfWork, UnitOfWork
from domains.webhooks.repository import SqlWebhooksRepository, WebhooksRepository


class WebhooksUoW(UnitOfWork, Protocol):
    """What the webhooks service needs of a unit of work: the common repositories plus the
    webhooks repositories. :class:`WebhooksUnitOfWork` is the PostgreSQL one; tests use an
    in-memory fake.
    """

    @property
    def webhooks(self) -> WebhooksRepository:
        """Endpoints, deliveries, attempts and received events."""
        ...


class WebhooksUnitOfWork(SqlUnitOfWork):
    """A transaction on the webhooks schema: endpoints, deliveries, operations and outbox."""

    webhooks: SqlWebhooksRepository

    def _bind(self, session: AsyncSession) -> None:
        super()._bind(session)
        self.webhooks = SqlWebhooksRepository(session)


_: type[WebhooksUoW] = WebhooksUnitOfWork  # mypy proves the SQL class satisfies the protocol
