"""Webhooks service, events and fan-out: custom events and integration events become one
delivery per matching endpoint.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import uuid
from collections.abc import Mapping
from typing import Any

from domains.shared import idempotency
from domains.shared.clock import utcnow
from domains.shared.errors import InvalidArgument
from domains.shared.events import IntegrationEvent
from domains.shared.ids import new_id
from domains.webhooks.model import Delivery, DeliveryState, Gate, event_body, validate_event_type
from domains.webhooks.service.base import ServiceBase, log
from domains.webhooks.unit_of_work import WebhooksUoW


@dataclasses.dataclass(frozen=True)
class PublishedEvent:
    """A custom event and the deliveries it made.

    Attributes:
        id: Event id.
        type: Event type.
        time: Publish time.
        deliveries: Deliveries created (one per matching endpoint).
    """

    id: uuid.UUID
    type: str
    time: dt.datetime
    deliveries: int


class FanOutPart(ServiceBase):
    """Event fan-out of the webhooks service."""

    async def _fan_out(
        self,
        uow: WebhooksUoW,
        *,
        event_id: uuid.UUID,
        event_type: str,
        event_time: dt.datetime,
        data: Mapping[str, Any],
        tenant: str,
        correlation_id: str | None,
        request_hash: str | None = None,
        now: dt.datetime | None = None,
    ) -> int | None:
        """Writes one delivery per matching endpoint; ``None`` if the event was seen before."""
        now = now or utcnow()
        endpoints = [
            e for e in await uow.webhooks.matching_endpoints(tenant) if e.matches(event_type)
        ]
        body = event_body(event_type, event_time, dict(data))
        deliveries = []
        for endpoint in endpoints:
            delivery = Delivery(
                id=new_id(),
                tenant=tenant,
                endpoint_id=endpoint.id,
                event_id=event_id,
                event_type=event_type,
                body=body,
                create_time=now,
                update_time=now,
                next_attempt_time=now,
            )
            if endpoint.gate(now) == Gate.PAUSE:
                delivery.pause(now)  # kept, resumed when the breaker closes or it is enabled
            deliveries.append(delivery)
        inserted = set(await uow.webhooks.add_deliveries(deliveries))
        if not await uow.webhooks.mark_received(
            event_id, event_type, tenant, now, len(inserted), request_hash
        ):
            return None
        due = [d.id for d in deliveries if d.id in inserted and d.state == DeliveryState.PENDING]
        await self._enqueue(uow, due, correlation_id)
        return len(inserted)

    async def publish_event(
        self,
        tenant: str,
        *,
        event_type: str,
        data: Mapping[str, Any],
        correlation_id: str | None = None,
        request_id: str | None = None,
    ) -> PublishedEvent:
        """Publishes a custom event to every matching endpoint of the tenant.

        With a ``request_id`` the event id is derived from the tenant and the request id, so
        the fan-out's once-per-event-id record (``received_events``) makes a retried publish
        one event with one set of deliveries.

        Args:
            tenant: Caller's tenant.
            event_type: E.g. ``orders.Created`` (``webhooks.*`` is reserved).
            data: JSON payload.
            correlation_id: Request id for logs.
            request_id: AIP-155 request id: a retry with the same type and data returns the
                first event (remembered as long as received events are retained).

        Returns:
            The event and how many deliveries it made.

        Raises:
            InvalidArgument: If the type, the request id is malformed or the payload too large.
            AlreadyExists: If ``request_id`` was used with a different type or data.
        """
        idempotency.check_request_id(request_id)
        validate_event_type(event_type)
        size = len(json.dumps(data, separators=(",", ":"), default=str))
        if size > self.config.max_event_bytes:
            raise InvalidArgument(
                f"data is {size} bytes of JSON; the maximum is {self.config.max_event_bytes}",
                metadata={"field": "data"},
            )
        fingerprint = None
        event_id = new_id()
        if request_id is not None:
            fingerprint = idempotency.request_fingerprint({"type": event_type, "data": data})
            event_id = idempotency.derived_id(tenant, request_id)
        now = utcnow()
        async with self._uow() as uow:
            count = await self._fan_out(
                uow,
                event_id=event_id,
                event_type=event_type,
                event_time=now,
                data=data,
                tenant=tenant,
                correlation_id=correlation_id,
                request_hash=fingerprint,
                now=now,  # the receive time is the event's time: a replay answers with it
            )
            if count is not None or request_id is None:
                await uow.commit()
                return PublishedEvent(id=event_id, type=event_type, time=now, deliveries=count or 0)
        # Seen before: a retry, or a concurrent twin that committed first. Nothing of this
        # attempt is committed (deliveries to endpoints created since would be a second
        # fan-out); the answer is the first event.
        async with self._uow() as uow:
            first = await uow.webhooks.get_received(event_id)
        if first is None:  # pragma: no cover - purged in between
            raise idempotency.vanished(request_id)
        idempotency.ensure_same_request(
            request_id=request_id,
            resource=f"events/{event_id}",
            stored_hash=first["request_hash"],
            request_hash=str(fingerprint),
        )
        return PublishedEvent(
            id=event_id,
            type=first["type"],
            time=first["receive_time"],
            deliveries=first["deliveries"],
        )

    async def handle_event(
        self, envelope: Mapping[str, Any], correlation_id: str | None = None
    ) -> int:
        """Fans an integration event out to the matching endpoints of its tenant, once.

        Args:
            envelope: ``IntegrationEvent.to_dict()``.
            correlation_id: Request id for logs.

        Returns:
            Deliveries created (0 for a duplicate or an own ``webhooks.*`` event).
        """
        event = IntegrationEvent.from_dict(envelope)
        if event.type.startswith("webhooks."):
            return 0  # never deliver our own outcome events (they would loop)
        async with self._uow() as uow:
            count = await self._fan_out(
                uow,
                event_id=event.id,
                event_type=event.type,
                event_time=event.time,
                data=event.data,
                tenant=event.tenant,
                correlation_id=correlation_id,
            )
            # The inbox records that this consumer handled the event, with the effect.
            if uow.inbox is not None:
                await uow.inbox.mark_handled(event.id, "webhooks", envelope, utcnow())
            await uow.commit()
            if count is None:
                log.info("event %s already fanned out; skipped", event.id)
                return 0
        return count
