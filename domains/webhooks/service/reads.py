"""Webhooks service, deliveries: reads, retention and manual retry."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence

from domains.shared.clock import utcnow
from domains.shared.errors import FailedPrecondition, NotFound
from domains.shared.query import Condition, Keyset
from domains.shared.retention import purge_batches
from domains.webhooks.model import REPLAYABLE_STATES, Attempt, Delivery
from domains.webhooks.service.base import Page, ServiceBase, _page


class ReadsPart(ServiceBase):
    """Delivery reads, retention and manual retry of the webhooks service."""

    async def list_deliveries(
        self,
        tenant: str,
        endpoint_id: uuid.UUID,
        conditions: Sequence[Condition],
        *,
        page_size: int,
        after: Keyset | None,
    ) -> Page:
        """Lists an endpoint's deliveries in creation order.

        Args:
            tenant: Caller's tenant.
            endpoint_id: Endpoint id.
            conditions: Parsed filter (``state``, ``event_type``, ``create_time``).
            page_size: Page size.
            after: Keyset position ``(create_time, id)``.

        Returns:
            The page.

        Raises:
            NotFound: If the endpoint does not exist for this tenant.
        """
        async with self._read_uow() as uow:
            if await uow.webhooks.get_endpoint(endpoint_id, tenant=tenant) is None:
                raise self._endpoint_not_found(endpoint_id)
            found = await uow.webhooks.list_deliveries(
                endpoint_id, conditions, after=after, limit=page_size + 1
            )
        return _page(found, page_size)

    async def get_delivery(
        self, tenant: str, delivery_id: uuid.UUID, endpoint_id: uuid.UUID | None = None
    ) -> Delivery:
        """Returns a delivery.

        Args:
            tenant: Caller's tenant.
            delivery_id: Delivery id.
            endpoint_id: Its endpoint, when the path names one.

        Returns:
            The delivery.

        Raises:
            NotFound: If it does not exist for this tenant (and endpoint).
        """
        async with self._uow() as uow:
            delivery = await uow.webhooks.get_delivery(
                delivery_id, tenant=tenant, endpoint_id=endpoint_id
            )
        if delivery is None:
            raise NotFound(f"deliveries/{delivery_id} does not exist", reason="DELIVERY_NOT_FOUND")
        return delivery

    async def purge(
        self, *, ended_before: dt.datetime, received_before: dt.datetime, limit: int = 1000
    ) -> dict[str, int]:
        """Deletes finished deliveries (with their attempts) and received-event records older
        than the cut-offs, in batches (retention).

        Args:
            ended_before: Deliveries that ended (SUCCEEDED, FAILED, DEAD) before this go.
            received_before: Received events recorded before this go.
            limit: Rows per batch.

        Returns:
            ``{"deliveries": n, "received_events": m}`` rows deleted.
        """

        async def deliveries() -> int:
            async with self._uow() as uow:
                deleted = await uow.webhooks.purge_deliveries(ended_before, limit)
                await uow.commit()
            return deleted

        async def received() -> int:
            async with self._uow() as uow:
                deleted = await uow.webhooks.purge_received_events(received_before, limit)
                await uow.commit()
            return deleted

        return {
            "deliveries": await purge_batches(deliveries, limit),
            "received_events": await purge_batches(received, limit),
        }

    async def list_attempts(
        self, tenant: str, endpoint_id: uuid.UUID, delivery_id: uuid.UUID
    ) -> list[Attempt]:
        """Lists a delivery's attempts in order.

        Args:
            tenant: Caller's tenant.
            endpoint_id: Its endpoint.
            delivery_id: Delivery id.

        Returns:
            The attempts.

        Raises:
            NotFound: If the delivery does not exist for this tenant and endpoint.
        """
        await self.get_delivery(tenant, delivery_id, endpoint_id)
        async with self._read_uow() as uow:
            return await uow.webhooks.list_attempts(delivery_id)

    async def retry_delivery(
        self, tenant: str, delivery_id: uuid.UUID, correlation_id: str | None = None
    ) -> Delivery:
        """Sends a FAILED or DEAD delivery again, with a fresh retry schedule.

        Args:
            tenant: Caller's tenant.
            delivery_id: Delivery id.
            correlation_id: Request id for logs.

        Returns:
            The delivery, PENDING.

        Raises:
            NotFound: If it does not exist for this tenant.
            FailedPrecondition: If it is not FAILED or DEAD.
        """
        async with self._uow() as uow:
            delivery = await uow.webhooks.get_delivery(delivery_id, tenant=tenant, for_update=True)
            if delivery is None:
                raise NotFound(
                    f"deliveries/{delivery_id} does not exist", reason="DELIVERY_NOT_FOUND"
                )
            if delivery.state not in REPLAYABLE_STATES:
                raise FailedPrecondition(
                    f"deliveries/{delivery_id} is {delivery.state}; only FAILED or DEAD"
                    " deliveries can be retried",
                    reason="DELIVERY_NOT_RETRYABLE",
                )
            delivery.restart(utcnow())
            await uow.webhooks.save_deliveries([delivery])
            await self._enqueue(uow, [delivery.id], correlation_id)
            await uow.commit()
        return delivery
