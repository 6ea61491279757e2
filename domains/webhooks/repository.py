"""Every query on webhooks tables lives here."""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import uuid
from collections.abc import Sequence
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from domains.shared.bulk import insert_many, insert_statement, row_params, update_statement
from domains.shared.outbox import OutboxMessage
from domains.shared.query import Condition, Keyset, after_keyset, any_of
from domains.shared.retention import delete_batch
from domains.webhooks import tables
from domains.webhooks.model import Attempt, Delivery, DeliveryState, Endpoint

DELIVERY_FILTER_COLUMNS: dict[str, str] = {
    "state": "state",
    "event_type": "event_type",
    "create_time": "create_time",
    "attempts": "attempts",
}
"""API filter field -> deliveries column."""

_OPS: dict[str, Any] = {
    "=": lambda c, v: c == v,
    "!=": lambda c, v: c != v,
    "<": lambda c, v: c < v,
    "<=": lambda c, v: c <= v,
    ">": lambda c, v: c > v,
    ">=": lambda c, v: c >= v,
}


_SAVED = (
    "state",
    "attempts",
    "cycle_attempts",
    "next_attempt_time",
    "lease_until",
    "last_status_code",
    "last_error",
    "update_time",
    "end_time",
)
"""Delivery columns a claim or an attempt's record changes."""


_DELIVERY_COLUMNS = tuple(c.name for c in tables.deliveries.columns)


@functools.cache
def _add_deliveries() -> Any:
    # Built once: a delivery whose (event, endpoint) pair exists is skipped.
    t = tables.deliveries
    return (
        insert_statement(t, _DELIVERY_COLUMNS)
        .on_conflict_do_nothing(index_elements=["event_id", "endpoint_id"])
        .returning(t.c.id)
    )


def _row(obj: Any) -> dict[str, Any]:
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}


class WebhooksRepository(Protocol):
    """What the webhooks service needs of its storage: endpoints, deliveries, attempts, received events."""

    async def add_endpoint(self, endpoint: Endpoint) -> bool:
        """Inserts an endpoint unless its tenant already used its request id."""
        ...

    async def get_endpoint_by_request_id(self, tenant: str, request_id: str) -> Endpoint | None:
        """Loads the endpoint a create with ``request_id`` made for ``tenant``."""
        ...

    async def get_endpoint(
        self, endpoint_id: uuid.UUID, *, tenant: str | None = None, for_update: bool = False
    ) -> Endpoint | None:
        """Loads an endpoint."""
        ...

    async def get_endpoints(
        self, ids: Sequence[uuid.UUID], *, for_update: bool = False
    ) -> dict[uuid.UUID, Endpoint]:
        """Loads several endpoints (locked in id order to avoid deadlocks)."""
        ...

    async def save_endpoint(self, endpoint: Endpoint) -> None:
        """Writes back an endpoint."""
        ...

    async def delete_endpoint(self, endpoint_id: uuid.UUID) -> None:
        """Deletes an endpoint with its deliveries and attempts (cascade)."""
        ...

    async def list_endpoints(
        self, tenant: str, *, after_id: uuid.UUID | None, limit: int
    ) -> list[Endpoint]:
        """Lists a tenant's endpoints in creation order."""
        ...

    async def matching_endpoints(self, tenant: str) -> list[Endpoint]:
        """Returns a tenant's enabled-or-paused endpoints (the caller matches event types)."""
        ...

    async def due_breakers(self, now: dt.datetime, limit: int) -> list[Endpoint]:
        """Endpoints whose open breaker's cool-down (or probe lease) has passed."""
        ...

    async def add_deliveries(self, deliveries: Sequence[Delivery]) -> list[uuid.UUID]:
        """Inserts deliveries, skipping any (event, endpoint) pair that already exists."""
        ...

    async def claim_deliveries(
        self, ids: Sequence[uuid.UUID], *, skip_locked: bool = True
    ) -> list[Delivery]:
        """Locks the PENDING and SENDING deliveries among ``ids`` (the caller checks leases)."""
        ...

    async def get_delivery(
        self,
        delivery_id: uuid.UUID,
        *,
        tenant: str | None = None,
        endpoint_id: uuid.UUID | None = None,
        for_update: bool = False,
    ) -> Delivery | None:
        """Loads a delivery."""
        ...

    async def save_deliveries(self, deliveries: Sequence[Delivery]) -> None:
        """Writes back deliveries (one statement for all)."""
        ...

    async def list_deliveries(
        self,
        endpoint_id: uuid.UUID,
        conditions: Sequence[Condition],
        *,
        after: Keyset | None,
        limit: int,
    ) -> list[Delivery]:
        """Lists an endpoint's deliveries in creation ``(create_time, id)`` order."""
        ...

    async def replayable(
        self, endpoint_id: uuid.UUID, since: dt.datetime, *, after_id: uuid.UUID | None, limit: int
    ) -> list[Delivery]:
        """FAILED or DEAD deliveries of an endpoint created since ``since``, locked."""
        ...

    async def count_replayable(self, endpoint_id: uuid.UUID, since: dt.datetime) -> int:
        """Counts what :meth:`replayable` would return."""
        ...

    async def paused(self, endpoint_id: uuid.UUID, limit: int) -> list[Delivery]:
        """PAUSED deliveries of an endpoint, oldest first, locked."""
        ...

    async def stuck(self, now: dt.datetime, limit: int) -> list[Delivery]:
        """SENDING deliveries whose lease ended (their worker vanished), locked."""
        ...

    async def overdue(self, before: dt.datetime, limit: int) -> list[Delivery]:
        """PENDING deliveries due before ``before`` (their message was lost?), locked."""
        ...

    async def add_attempts(self, attempts: Sequence[Attempt]) -> None:
        """Inserts attempts."""
        ...

    async def list_attempts(self, delivery_id: uuid.UUID) -> list[Attempt]:
        """Lists a delivery's attempts in order."""
        ...

    async def add_outbox(self, outbox: Any, messages: Sequence[OutboxMessage]) -> None:
        """Inserts many outbox rows in one round trip (a batch of deliveries' outcomes)."""
        ...

    async def mark_received(
        self,
        event_id: uuid.UUID,
        event_type: str,
        tenant: str,
        now: dt.datetime,
        count: int,
        request_hash: str | None = None,
    ) -> bool:
        """Records that an event was fanned out (once per event id)."""
        ...

    async def purge_deliveries(self, ended_before: dt.datetime, limit: int) -> int:
        """Deletes finished deliveries that ended before ``ended_before`` (one batch); their
        attempts go with them (foreign key cascade).
        """
        ...

    async def get_received(self, event_id: uuid.UUID) -> dict[str, Any] | None:
        """Loads the record of a fanned-out event."""
        ...

    async def purge_received_events(self, received_before: dt.datetime, limit: int) -> int:
        """Deletes received-event records older than ``received_before`` (one batch)."""
        ...


class SqlWebhooksRepository:
    """Endpoints, deliveries, attempts and received events in the ``webhooks`` schema."""

    def __init__(self, session: AsyncSession) -> None:
        """Binds the repository.

        Args:
            session: The unit of work's session.
        """
        self._session = session

    # ---- endpoints ---------------------------------------------------------------------

    async def add_endpoint(self, endpoint: Endpoint) -> bool:
        """Inserts an endpoint unless its tenant already used its request id.

        Args:
            endpoint: The new endpoint.

        Returns:
            False if an endpoint of the tenant holds the same ``request_id`` (nothing written);
            a concurrent insert of that id is waited for, so its winner is then readable.
        """
        t = tables.endpoints
        query = (
            pg_insert(t)
            .values(_row(endpoint))
            .on_conflict_do_nothing(
                index_elements=["tenant", "request_id"], index_where=t.c.request_id.is_not(None)
            )
            .returning(t.c.id)
        )
        return (await self._session.execute(query)).first() is not None

    async def get_endpoint_by_request_id(self, tenant: str, request_id: str) -> Endpoint | None:
        """Loads the endpoint a create with ``request_id`` made for ``tenant``.

        Args:
            tenant: Caller's tenant.
            request_id: AIP-155 request id of the create.

        Returns:
            The endpoint or ``None``.
        """
        t = tables.endpoints
        query = sa.select(t).where(t.c.tenant == tenant, t.c.request_id == request_id)
        row = (await self._session.execute(query)).mappings().first()
        return Endpoint(**dict(row)) if row else None

    async def get_endpoint(
        self, endpoint_id: uuid.UUID, *, tenant: str | None = None, for_update: bool = False
    ) -> Endpoint | None:
        """Loads an endpoint.

        Args:
            endpoint_id: Its id.
            tenant: Only if it belongs to this tenant (``None``: any, for workers).
            for_update: Lock the row.

        Returns:
            The endpoint or ``None``.
        """
        t = tables.endpoints
        query = sa.select(t).where(t.c.id == endpoint_id)
        if tenant is not None:
            query = query.where(t.c.tenant == tenant)
        if for_update:
            query = query.with_for_update()
        row = (await self._session.execute(query)).mappings().first()
        return Endpoint(**dict(row)) if row else None

    async def get_endpoints(
        self, ids: Sequence[uuid.UUID], *, for_update: bool = False
    ) -> dict[uuid.UUID, Endpoint]:
        """Loads several endpoints (locked in id order to avoid deadlocks).

        Args:
            ids: Endpoint ids.
            for_update: Lock the rows.

        Returns:
            Endpoints by id.
        """
        if not ids:
            return {}
        t = tables.endpoints
        query = sa.select(t).where(any_of(t.c.id, sorted(set(ids)))).order_by(t.c.id)
        if for_update:
            query = query.with_for_update()
        rows = (await self._session.execute(query)).mappings().all()
        return {row["id"]: Endpoint(**dict(row)) for row in rows}

    async def save_endpoint(self, endpoint: Endpoint) -> None:
        """Writes back an endpoint.

        Args:
            endpoint: A loaded, changed endpoint.
        """
        values = _row(endpoint)
        values.pop("id")
        t = tables.endpoints
        await self._session.execute(sa.update(t).where(t.c.id == endpoint.id).values(**values))

    async def delete_endpoint(self, endpoint_id: uuid.UUID) -> None:
        """Deletes an endpoint with its deliveries and attempts (cascade).

        Args:
            endpoint_id: The endpoint.
        """
        t = tables.endpoints
        await self._session.execute(sa.delete(t).where(t.c.id == endpoint_id))

    async def list_endpoints(
        self, tenant: str, *, after_id: uuid.UUID | None, limit: int
    ) -> list[Endpoint]:
        """Lists a tenant's endpoints in creation order.

        Args:
            tenant: The tenant.
            after_id: Keyset position.
            limit: Maximum rows.

        Returns:
            The endpoints.
        """
        t = tables.endpoints
        query = sa.select(t).where(t.c.tenant == tenant)
        if after_id is not None:
            query = query.where(t.c.id > after_id)
        rows = (await self._session.execute(query.order_by(t.c.id).limit(limit))).mappings()
        return [Endpoint(**dict(row)) for row in rows]

    async def matching_endpoints(self, tenant: str) -> list[Endpoint]:
        """Returns a tenant's enabled-or-paused endpoints (the caller matches event types).

        Disabled endpoints are included: their deliveries are kept PAUSED, not dropped.

        Args:
            tenant: The tenant.

        Returns:
            The endpoints.
        """
        t = tables.endpoints
        rows = await self._session.execute(sa.select(t).where(t.c.tenant == tenant))
        return [Endpoint(**dict(row)) for row in rows.mappings()]

    async def due_breakers(self, now: dt.datetime, limit: int) -> list[Endpoint]:
        """Endpoints whose open breaker's cool-down (or probe lease) has passed.

        Args:
            now: Current time.
            limit: Maximum rows.

        Returns:
            The endpoints, locked (skipping rows locked elsewhere).
        """
        t = tables.endpoints
        query = (
            sa.select(t)
            .where(t.c.breaker_state != "CLOSED", t.c.breaker_until <= now, t.c.enabled)
            .order_by(t.c.breaker_until)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        return [Endpoint(**dict(r)) for r in (await self._session.execute(query)).mappings()]

    # ---- deliveries --------------------------------------------------------------------

    async def add_deliveries(self, deliveries: Sequence[Delivery]) -> list[uuid.UUID]:
        """Inserts deliveries, skipping any (event, endpoint) pair that already exists.

        Args:
            deliveries: New deliveries.

        Returns:
            Ids of the rows inserted.
        """
        if not deliveries:
            return []
        t = tables.deliveries
        # One order for every writer: two publishes of one event id (concurrent retries) lock
        # the same (event, endpoint) keys in the same order, so they wait instead of deadlock.
        ordered = sorted(deliveries, key=lambda d: (d.event_id, d.endpoint_id))
        rows = [_row(d) for d in ordered]
        params = row_params(t, _DELIVERY_COLUMNS, rows)
        return list((await self._session.execute(_add_deliveries(), params)).scalars())

    async def claim_deliveries(
        self, ids: Sequence[uuid.UUID], *, skip_locked: bool = True
    ) -> list[Delivery]:
        """Locks the PENDING and SENDING deliveries among ``ids`` (the caller checks leases).

        Args:
            ids: Delivery ids.
            skip_locked: Skip rows locked by another task (it owns them) instead of waiting.

        Returns:
            The deliveries, in id order.
        """
        t = tables.deliveries
        query = (
            sa.select(t)
            .where(any_of(t.c.id, ids), t.c.state.in_(["PENDING", "SENDING"]))
            .order_by(t.c.id)
            .with_for_update(skip_locked=skip_locked)
        )
        return [Delivery(**dict(r)) for r in (await self._session.execute(query)).mappings()]

    async def get_delivery(
        self,
        delivery_id: uuid.UUID,
        *,
        tenant: str | None = None,
        endpoint_id: uuid.UUID | None = None,
        for_update: bool = False,
    ) -> Delivery | None:
        """Loads a delivery.

        Args:
            delivery_id: Its id.
            tenant: Only if it belongs to this tenant.
            endpoint_id: Only if it belongs to this endpoint.
            for_update: Lock the row.

        Returns:
            The delivery or ``None``.
        """
        t = tables.deliveries
        query = sa.select(t).where(t.c.id == delivery_id)
        if tenant is not None:
            query = query.where(t.c.tenant == tenant)
        if endpoint_id is not None:
            query = query.where(t.c.endpoint_id == endpoint_id)
        if for_update:
            query = query.with_for_update()
        row = (await self._session.execute(query)).mappings().first()
        return Delivery(**dict(row)) if row else None

    async def save_deliveries(self, deliveries: Sequence[Delivery]) -> None:
        """Writes back deliveries (one statement for all).

        Args:
            deliveries: Loaded, changed deliveries, locked by this transaction.
        """
        if not deliveries:
            return
        rows = [{"id": d.id, **{name: getattr(d, name) for name in _SAVED}} for d in deliveries]
        statement = update_statement(tables.deliveries, "id", _SAVED)
        await self._session.execute(statement, row_params(tables.deliveries, ("id", *_SAVED), rows))

    async def list_deliveries(
        self,
        endpoint_id: uuid.UUID,
        conditions: Sequence[Condition],
        *,
        after: Keyset | None,
        limit: int,
    ) -> list[Delivery]:
        """Lists an endpoint's deliveries in creation ``(create_time, id)`` order.

        Args:
            endpoint_id: The endpoint.
            conditions: Parsed filter.
            after: Keyset position.
            limit: Maximum rows.

        Returns:
            The deliveries.
        """
        query = self.list_deliveries_query(endpoint_id, conditions, after=after, limit=limit)
        rows = (await self._session.execute(query)).mappings()
        return [Delivery(**dict(row)) for row in rows]

    def list_deliveries_query(
        self,
        endpoint_id: uuid.UUID,
        conditions: Sequence[Condition],
        *,
        after: Keyset | None,
        limit: int,
    ) -> sa.Select[Any]:
        """The statement :meth:`list_deliveries` runs, served by the indexes
        ``(endpoint_id, [state|event_type,] create_time, id)``.

        Args:
            endpoint_id: The endpoint.
            conditions: Parsed filter.
            after: Keyset position.
            limit: Maximum rows.

        Returns:
            The SELECT.
        """
        t = tables.deliveries
        query = sa.select(t).where(t.c.endpoint_id == endpoint_id)
        for cond in conditions:
            column = t.c[DELIVERY_FILTER_COLUMNS[cond.field]]
            query = query.where(_OPS[cond.op](column, cond.value))
        query = query.where(after_keyset(t, after))
        return query.order_by(t.c.create_time, t.c.id).limit(limit)

    async def replayable(
        self, endpoint_id: uuid.UUID, since: dt.datetime, *, after_id: uuid.UUID | None, limit: int
    ) -> list[Delivery]:
        """FAILED or DEAD deliveries of an endpoint created since ``since``, locked.

        Args:
            endpoint_id: The endpoint.
            since: Earliest creation time.
            after_id: Keyset position.
            limit: Maximum rows.

        Returns:
            The deliveries.
        """
        t = tables.deliveries
        query = sa.select(t).where(
            t.c.endpoint_id == endpoint_id,
            t.c.state.in_(["FAILED", "DEAD"]),
            t.c.create_time >= since,
        )
        if after_id is not None:
            query = query.where(t.c.id > after_id)
        query = query.order_by(t.c.id).limit(limit).with_for_update(skip_locked=True)
        return [Delivery(**dict(r)) for r in (await self._session.execute(query)).mappings()]

    async def count_replayable(self, endpoint_id: uuid.UUID, since: dt.datetime) -> int:
        """Counts what :meth:`replayable` would return.

        Args:
            endpoint_id: The endpoint.
            since: Earliest creation time.

        Returns:
            The count.
        """
        t = tables.deliveries
        query = sa.select(sa.func.count()).where(
            t.c.endpoint_id == endpoint_id,
            t.c.state.in_(["FAILED", "DEAD"]),
            t.c.create_time >= since,
        )
        return int((await self._session.execute(query)).scalar_one())

    async def paused(self, endpoint_id: uuid.UUID, limit: int) -> list[Delivery]:
        """PAUSED deliveries of an endpoint, oldest first, locked.

        Args:
            endpoint_id: The endpoint.
            limit: Maximum rows.

        Returns:
            The deliveries.
        """
        t = tables.deliveries
        query = (
            sa.select(t)
            .where(t.c.endpoint_id == endpoint_id, t.c.state == DeliveryState.PAUSED)
            .order_by(t.c.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        return [Delivery(**dict(r)) for r in (await self._session.execute(query)).mappings()]

    async def stuck(self, now: dt.datetime, limit: int) -> list[Delivery]:
        """SENDING deliveries whose lease ended (their worker vanished), locked.

        Args:
            now: Current time.
            limit: Maximum rows.

        Returns:
            The deliveries.
        """
        t = tables.deliveries
        query = (
            sa.select(t)
            .where(t.c.state == DeliveryState.SENDING, t.c.lease_until < now)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        return [Delivery(**dict(r)) for r in (await self._session.execute(query)).mappings()]

    async def overdue(self, before: dt.datetime, limit: int) -> list[Delivery]:
        """PENDING deliveries due before ``before`` (their message was lost?), locked.

        Args:
            before: Due-time cut-off.
            limit: Maximum rows.

        Returns:
            The deliveries.
        """
        t = tables.deliveries
        query = (
            sa.select(t)
            .where(t.c.state == DeliveryState.PENDING, t.c.next_attempt_time < before)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        return [Delivery(**dict(r)) for r in (await self._session.execute(query)).mappings()]

    # ---- attempts ----------------------------------------------------------------------

    async def add_attempts(self, attempts: Sequence[Attempt]) -> None:
        """Inserts attempts.

        Args:
            attempts: New attempts.
        """
        if attempts:
            await self._session.execute(*insert_many(tables.attempts, [_row(a) for a in attempts]))

    async def list_attempts(self, delivery_id: uuid.UUID) -> list[Attempt]:
        """Lists a delivery's attempts in order.

        Args:
            delivery_id: The delivery.

        Returns:
            The attempts.
        """
        t = tables.attempts
        query = sa.select(t).where(t.c.delivery_id == delivery_id).order_by(t.c.attempt)
        return [Attempt(**dict(r)) for r in (await self._session.execute(query)).mappings()]

    # ---- outbox (bulk) ------------------------------------------------------------------

    async def add_outbox(self, outbox: Any, messages: Sequence[OutboxMessage]) -> None:
        """Inserts many outbox rows in one round trip (a batch of deliveries' outcomes).

        The unit of work's outbox adds one row per statement; a delivery batch writes tens.
        The messages are handed to the outbox's fast-path list as its own ``add`` does.

        Args:
            outbox: The unit of work's outbox repository.
            messages: The rows.
        """
        if not messages:
            return
        await self._session.execute(*insert_many(tables.outbox, [_row(m) for m in messages]))
        added = getattr(outbox, "added", None)
        if isinstance(added, list):
            added.extend(messages)

    # ---- received events ---------------------------------------------------------------

    async def mark_received(
        self,
        event_id: uuid.UUID,
        event_type: str,
        tenant: str,
        now: dt.datetime,
        count: int,
        request_hash: str | None = None,
    ) -> bool:
        """Records that an event was fanned out (once per event id).

        Args:
            event_id: The event.
            event_type: Its type.
            tenant: Its tenant.
            now: Current time.
            count: Deliveries created.
            request_hash: Fingerprint of the publish request that carried a request id.

        Returns:
            True the first time, False for a duplicate.
        """
        t = tables.received_events
        query = (
            pg_insert(t)
            .values(
                event_id=event_id,
                type=event_type,
                tenant=tenant,
                receive_time=now,
                deliveries=count,
                request_hash=request_hash,
            )
            .on_conflict_do_nothing(index_elements=["event_id"])
            .returning(t.c.event_id)
        )
        return (await self._session.execute(query)).first() is not None

    async def purge_deliveries(self, ended_before: dt.datetime, limit: int) -> int:
        """Deletes finished deliveries that ended before ``ended_before`` (one batch); their
        attempts go with them (foreign key cascade).

        Args:
            ended_before: Cut-off on ``end_time`` (set only in a final state).
            limit: Most rows deleted.

        Returns:
            Deliveries deleted.
        """
        t = tables.deliveries
        return await delete_batch(self._session, t, t.c.end_time < ended_before, limit)

    async def get_received(self, event_id: uuid.UUID) -> dict[str, Any] | None:
        """Loads the record of a fanned-out event.

        Args:
            event_id: The event.

        Returns:
            Its ``type``, ``tenant``, ``receive_time``, ``deliveries`` and ``request_hash``,
            or ``None`` if it was never received (or was purged).
        """
        t = tables.received_events
        row = (
            (await self._session.execute(sa.select(t).where(t.c.event_id == event_id)))
            .mappings()
            .first()
        )
        return dict(row) if row else None

    async def purge_received_events(self, received_before: dt.datetime, limit: int) -> int:
        """Deletes received-event records older than ``received_before`` (one batch).

        Args:
            received_before: Cut-off on ``receive_time``.
            limit: Most rows deleted.

        Returns:
            Rows deleted.
        """
        t = tables.received_events
        return await delete_batch(self._session, t, t.c.receive_time < received_before, limit)
