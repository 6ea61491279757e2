"""Unit of work of the webhooks domain."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from domains.operations.unit_of_work import SqlUnitOfWork
from domains.webhooks.repository import SqlWebhooksRepository


class WebhooksUnitOfWork(SqlUnitOfWork):
    """A transaction on the webhooks schema: endpoints, deliveries, operations and outbox."""

    webhooks: SqlWebhooksRepository

    def _bind(self, session: AsyncSession) -> None:
        super()._bind(session)
        self.webhooks = SqlWebhooksRepository(session)
