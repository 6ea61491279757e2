"""In-memory fake of the webhooks unit of work and repository (see ``tests/fakes/operations.py``
for the transaction semantics)."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from domains.shared.outbox import OutboxMessage
from domains.shared.query import COMPARE, Condition, Keyset
from domains.webhooks.model import Attempt, Delivery, DeliveryState, Endpoint
from domains.webhooks.repository import DELIVERY_FILTER_COLUMNS, WebhooksRepository
from domains.webhooks.unit_of_work import WebhooksUoW
from tests.fakes.operations import FakeDatabase, FakeUnitOfWork, _copy

TABLES: dict[str, Any] = {"endpoints": {}, "deliveries": {}, "attempts": [], "received_events": {}}
"""The webhooks tables of a :class:`FakeDatabase`."""

_REPLAYABLE = (DeliveryState.FAILED, DeliveryState.DEAD)


def webhooks_database() -> FakeDatabase:
    """Returns an empty fake webhooks schema."""
    return FakeDatabase(TABLES)


class FakeWebhooksRepository:
    """Endpoints, deliveries, attempts and received events in memory."""

    def __init__(self, state: dict[str, Any]) -> None:
        """Binds the repository to a transaction's working copy.

        Args:
            state: The unit of work's copy of the tables.
        """
        self._endpoints: dict[uuid.UUID, Endpoint] = state["endpoints"]
        self._deliveries: dict[uuid.UUID, Delivery] = state["deliveries"]
        self._attempts: list[Attempt] = state["attempts"]
        self._received: dict[uuid.UUID, dict[str, Any]] = state["received_events"]

    # ---- endpoints

    async def add_endpoint(self, endpoint: Endpoint) -> bool:
        """Inserts an endpoint unless its tenant already used its request id."""
        if endpoint.request_id is not None and any(
            e.tenant == endpoint.tenant and e.request_id == endpoint.request_id
            for e in self._endpoints.values()
        ):
            return False
        self._endpoints[endpoint.id] = _copy(endpoint)
        return True

    async def get_endpoint_by_request_id(self, tenant: str, request_id: str) -> Endpoint | None:
        """Loads the endpoint a create with ``request_id`` made for ``tenant``."""
        for e in self._endpoints.values():
            if e.tenant == tenant and e.request_id == request_id:
                return _copy(e)
        return None

    async def get_endpoint(
        self, endpoint_id: uuid.UUID, *, tenant: str | None = None, for_update: bool = False
    ) -> Endpoint | None:
        """Loads an endpoint."""
        e = self._endpoints.get(endpoint_id)
        if e is None or (tenant is not None and e.tenant != tenant):
            return None
        return _copy(e)

    async def get_endpoints(
        self, ids: Sequence[uuid.UUID], *, for_update: bool = False
    ) -> dict[uuid.UUID, Endpoint]:
        """Loads several endpoints."""
        return {i: _copy(self._endpoints[i]) for i in sorted(set(ids)) if i in self._endpoints}

    async def save_endpoint(self, endpoint: Endpoint) -> None:
        """Writes back an endpoint."""
        if endpoint.id in self._endpoints:
            self._endpoints[endpoint.id] = _copy(endpoint)

    async def delete_endpoint(self, endpoint_id: uuid.UUID) -> None:
        """Deletes an endpoint with its deliveries and attempts (the cascade)."""
        self._endpoints.pop(endpoint_id, None)
        gone = {d.id for d in self._deliveries.values() if d.endpoint_id == endpoint_id}
        for delivery_id in gone:
            del self._deliveries[delivery_id]
        self._attempts[:] = [a for a in self._attempts if a.delivery_id not in gone]

    async def list_endpoints(
        self, tenant: str, *, after_id: uuid.UUID | None, limit: int
    ) -> list[Endpoint]:
        """Lists a tenant's endpoints in id (= creation) order."""
        found = sorted(
            (
                e
                for e in self._endpoints.values()
                if e.tenant == tenant and (after_id is None or e.id > after_id)
            ),
            key=lambda e: e.id,
        )
        return [_copy(e) for e in found[:limit]]

    async def matching_endpoints(self, tenant: str) -> list[Endpoint]:
        """A tenant's endpoints (the caller matches event types and gates)."""
        return [_copy(e) for e in self._endpoints.values() if e.tenant == tenant]

    async def due_breakers(self, now: dt.datetime, limit: int) -> list[Endpoint]:
        """Enabled endpoints whose open breaker's cool-down has passed."""
        due = [
            e
            for e in self._endpoints.values()
            if e.enabled
            and e.breaker_state != "CLOSED"
            and e.breaker_until is not None
            and e.breaker_until <= now
        ]
        due.sort(key=lambda e: e.breaker_until or now)
        return [_copy(e) for e in due[:limit]]

    # ---- deliveries

    async def add_deliveries(self, deliveries: Sequence[Delivery]) -> list[uuid.UUID]:
        """Inserts deliveries, skipping any (event, endpoint) pair that already exists."""
        pairs = {(d.event_id, d.endpoint_id) for d in self._deliveries.values()}
        inserted = []
        for d in deliveries:
            if (d.event_id, d.endpoint_id) in pairs:
                continue
            pairs.add((d.event_id, d.endpoint_id))
            self._deliveries[d.id] = _copy(d)
            inserted.append(d.id)
        return inserted

    def _select(
        self, keep: Callable[[Delivery], bool], *, limit: int | None = None
    ) -> list[Delivery]:
        found = sorted((d for d in self._deliveries.values() if keep(d)), key=lambda d: d.id)
        return [_copy(d) for d in found[:limit]]

    async def claim_deliveries(
        self, ids: Sequence[uuid.UUID], *, skip_locked: bool = True
    ) -> list[Delivery]:
        """The PENDING and SENDING deliveries among ``ids``."""
        wanted = set(ids)
        return self._select(
            lambda d: d.id in wanted and d.state in (DeliveryState.PENDING, DeliveryState.SENDING)
        )

    async def get_delivery(
        self,
        delivery_id: uuid.UUID,
        *,
        tenant: str | None = None,
        endpoint_id: uuid.UUID | None = None,
        for_update: bool = False,
    ) -> Delivery | None:
        """Loads a delivery."""
        d = self._deliveries.get(delivery_id)
        if d is None or (tenant is not None and d.tenant != tenant):
            return None
        if endpoint_id is not None and d.endpoint_id != endpoint_id:
            return None
        return _copy(d)

    async def save_deliveries(self, deliveries: Sequence[Delivery]) -> None:
        """Writes back deliveries (those still there)."""
        for d in deliveries:
            if d.id in self._deliveries:
                self._deliveries[d.id] = _copy(d)

    async def list_deliveries(
        self,
        endpoint_id: uuid.UUID,
        conditions: Sequence[Condition],
        *,
        after: Keyset | None,
        limit: int,
    ) -> list[Delivery]:
        """Lists an endpoint's deliveries in ``(create_time, id)`` order."""

        def keep(d: Delivery) -> bool:
            return (
                d.endpoint_id == endpoint_id
                and (after is None or (d.create_time, d.id) > after)
                and all(
                    COMPARE[c.op](getattr(d, DELIVERY_FILTER_COLUMNS[c.field]), c.value)
                    for c in conditions
                )
            )

        found = sorted(
            (d for d in self._deliveries.values() if keep(d)), key=lambda d: (d.create_time, d.id)
        )
        return [_copy(d) for d in found[:limit]]

    async def replayable(
        self, endpoint_id: uuid.UUID, since: dt.datetime, *, after_id: uuid.UUID | None, limit: int
    ) -> list[Delivery]:
        """FAILED or DEAD deliveries of an endpoint created since ``since``, in id order."""
        return self._select(
            lambda d: (
                d.endpoint_id == endpoint_id
                and d.state in _REPLAYABLE
                and d.create_time >= since
                and (after_id is None or d.id > after_id)
            ),
            limit=limit,
        )

    async def count_replayable(self, endpoint_id: uuid.UUID, since: dt.datetime) -> int:
        """Counts what :meth:`replayable` would return."""
        return len(await self.replayable(endpoint_id, since, after_id=None, limit=10**9))

    async def paused(self, endpoint_id: uuid.UUID, limit: int) -> list[Delivery]:
        """PAUSED deliveries of an endpoint, oldest first."""
        return self._select(
            lambda d: d.endpoint_id == endpoint_id and d.state == DeliveryState.PAUSED,
            limit=limit,
        )

    async def stuck(self, now: dt.datetime, limit: int) -> list[Delivery]:
        """SENDING deliveries whose lease ended."""
        return self._select(
            lambda d: (
                d.state == DeliveryState.SENDING
                and d.lease_until is not None
                and d.lease_until < now
            ),
            limit=limit,
        )

    async def overdue(self, before: dt.datetime, limit: int) -> list[Delivery]:
        """PENDING deliveries due before ``before``."""
        return self._select(
            lambda d: (
                d.state == DeliveryState.PENDING
                and d.next_attempt_time is not None
                and d.next_attempt_time < before
            ),
            limit=limit,
        )

    async def purge_deliveries(self, ended_before: dt.datetime, limit: int) -> int:
        """Deletes finished deliveries that ended before ``ended_before``, with attempts."""
        gone = {
            d.id
            for d in self._select(lambda d: d.end_time is not None and d.end_time < ended_before)
        }
        gone = set(sorted(gone)[:limit])
        for delivery_id in gone:
            del self._deliveries[delivery_id]
        self._attempts[:] = [a for a in self._attempts if a.delivery_id not in gone]
        return len(gone)

    # ---- attempts, outbox, received events

    async def add_attempts(self, attempts: Sequence[Attempt]) -> None:
        """Inserts attempts."""
        self._attempts.extend(_copy(list(attempts)))

    async def list_attempts(self, delivery_id: uuid.UUID) -> list[Attempt]:
        """A delivery's attempts in order."""
        found = [a for a in self._attempts if a.delivery_id == delivery_id]
        return _copy(sorted(found, key=lambda a: a.attempt))

    async def add_outbox(self, outbox: Any, messages: Sequence[OutboxMessage]) -> None:
        """Adds the messages through the unit of work's outbox (recorded on commit)."""
        for message in messages:
            await outbox.add(message)

    async def mark_received(
        self,
        event_id: uuid.UUID,
        event_type: str,
        tenant: str,
        now: dt.datetime,
        count: int,
        request_hash: str | None = None,
    ) -> bool:
        """Records that an event was fanned out; ``False`` for a duplicate."""
        if event_id in self._received:
            return False
        self._received[event_id] = {
            "event_id": event_id,
            "type": event_type,
            "tenant": tenant,
            "receive_time": now,
            "deliveries": count,
            "request_hash": request_hash,
        }
        return True

    async def get_received(self, event_id: uuid.UUID) -> dict[str, Any] | None:
        """Loads the record of a fanned-out event."""
        row = self._received.get(event_id)
        return dict(row) if row else None

    async def purge_received_events(self, received_before: dt.datetime, limit: int) -> int:
        """Deletes received-event records older than ``received_before``."""
        gone = [k for k, r in self._received.items() if r["receive_time"] < received_before]
        for key in gone[:limit]:
            del self._received[key]
        return len(gone[:limit])


class FakeWebhooksUnitOfWork(FakeUnitOfWork):
    """A fake transaction on the webhooks schema (a consumer: it has an inbox)."""

    webhooks: FakeWebhooksRepository

    def __init__(self, db: FakeDatabase, *, max_attempts: int | None = None) -> None:
        """Creates the unit of work.

        Args:
            db: A database from :func:`webhooks_database`.
            max_attempts: Attempt cap of replay operations.
        """
        super().__init__(db, domain="webhooks", max_attempts=max_attempts, consumer=True)

    def _bind(self, state: dict[str, Any]) -> None:
        super()._bind(state)
        self.webhooks = FakeWebhooksRepository(state)


_repo: type[WebhooksRepository] = FakeWebhooksRepository
_uow: type[WebhooksUoW] = FakeWebhooksUnitOfWork
