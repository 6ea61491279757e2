"""Webhooks use cases: endpoints, event fan-out, delivery attempts, retries, breaker, replay.

Called by the API (endpoints, events, deliveries, replay) and by the ``webhooks.*`` tasks
(deliver, handle_event, replay, probe_endpoint, probe_breakers). Deliveries are rows in
PostgreSQL; each attempt is dispatched through the outbox, and a retry is an outbox row whose
``available_time`` is the next attempt time (no long broker countdowns).
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import logging
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from domains.operations import service as operations_service
from domains.operations.execution import Cancelled, OperationRunner, ProgressSink
from domains.operations.model import DispatchSpec, Operation, OperationError
from domains.operations.unit_of_work import UnitOfWork
from domains.shared import idempotency
from domains.shared.clock import utcnow
from domains.shared.errors import DomainError, FailedPrecondition, InvalidArgument, NotFound
from domains.shared.events import IntegrationEvent, event_message
from domains.shared.ids import new_id
from domains.shared.outbox import OutboxMessage
from domains.shared.query import Condition, Keyset
from domains.shared.retention import purge_batches
from domains.shared.ssrf import UnsafeUrl, UrlGuard
from domains.webhooks import signing
from domains.webhooks.model import (
    MAX_DESCRIPTION,
    REPLAYABLE_STATES,
    Attempt,
    BreakerPolicy,
    Delivery,
    DeliveryState,
    Endpoint,
    Gate,
    Outcome,
    RetryPolicy,
    SendResult,
    event_body,
    validate_event_type,
    validate_event_types,
)
from domains.webhooks.ports import NoRateLimit, RateLimiter, Sender
from domains.webhooks.unit_of_work import WebhooksUoW

log = logging.getLogger(__name__)

DOMAIN = "webhooks"
DELIVER_TASK = "webhooks.deliver"
REPLAY_TASK = "webhooks.replay"
PROBE_TASK = "webhooks.probe_endpoint"
USER_AGENT = "Conveyor-Webhooks/1.0"
UNSET: Any = object()
"""Marks a field an update leaves alone (``None`` is a value for ``rate_limit``)."""


@dataclasses.dataclass(frozen=True)
class WebhooksConfig:
    """Tunables of the webhooks service (from ``settings.webhooks``).

    Attributes:
        retry: Retry schedule.
        breaker: Circuit breaker thresholds.
        attempt_lease_seconds: A SENDING delivery not settled in this long may be taken over.
        secret_grace_seconds: Old secret's signing period after a rotation.
        batch_size: Deliveries per ``webhooks.deliver`` task.
        max_event_bytes: Largest event payload.
        max_concurrent_requests: Open requests per process.
        overdue_seconds: A PENDING delivery this late is dispatched again (lost message).
        lease_seconds: Heartbeat lease of replay operations.
        pending_deadline_seconds: Re-dispatch deadline of replay operations.
        progress_interval: Minimum seconds between replay progress writes.
    """

    retry: RetryPolicy = dataclasses.field(default_factory=RetryPolicy)
    breaker: BreakerPolicy = dataclasses.field(default_factory=BreakerPolicy)
    attempt_lease_seconds: float = 60.0
    secret_grace_seconds: float = 86400.0
    batch_size: int = 50
    max_event_bytes: int = 256 * 1024
    max_concurrent_requests: int = 100
    overdue_seconds: float = 300.0
    lease_seconds: float = 30.0
    pending_deadline_seconds: float = 300.0
    progress_interval: float = 1.0


@dataclasses.dataclass(frozen=True)
class Page:
    """One page of a list.

    Attributes:
        items: The resources.
        last_id: Keyset position of the next page, ``None`` at the end.
    """

    items: list[Any]
    last_id: uuid.UUID | None

    @property
    def last(self) -> Keyset | None:
        """Keyset ``(create_time, id)`` of the next page of a time-ordered list, or None."""
        if self.last_id is None:
            return None
        return (self.items[-1].create_time, self.items[-1].id)


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


def _storable(result: SendResult) -> SendResult:
    """PostgreSQL text cannot hold NUL: a receiver's binary answer must not break the record."""
    if "\x00" not in result.body and "\x00" not in (result.error or ""):
        return result
    return dataclasses.replace(
        result,
        body=result.body.replace("\x00", "\ufffd"),
        error=result.error.replace("\x00", "\ufffd") if result.error else None,
    )


def _page(items: list[Any], page_size: int) -> Page:
    page = items[:page_size]
    return Page(page, page[-1].id if len(items) > page_size else None)


class WebhooksService:
    """Endpoints, events, deliveries and replays of the webhooks domain."""

    def __init__(
        self,
        uow_factory: Callable[[], WebhooksUoW],
        *,
        sender: Sender,
        guard: UrlGuard,
        box: signing.SecretBox,
        config: WebhooksConfig | None = None,
        limiter: RateLimiter | None = None,
        read_uow_factory: Callable[[], WebhooksUoW] | None = None,
    ) -> None:
        """Creates the service.

        Args:
            uow_factory: Webhooks unit of work (primary).
            sender: HTTP sender.
            guard: SSRF guard (checked at create and before each attempt).
            box: Encrypts signing secrets at rest.
            config: Tunables.
            limiter: Per-endpoint rate limiter (default: none).
            read_uow_factory: Unit of work on the replica (lists).
        """
        self._uow = uow_factory
        self._read_uow = read_uow_factory or uow_factory
        self._sender = sender
        self.guard = guard
        self._box = box
        self.config = config or WebhooksConfig()
        self._limiter: RateLimiter = limiter or NoRateLimit()
        self._runner = OperationRunner(
            uow_factory,
            progress_interval=self.config.progress_interval,
        )
        self._semaphore: asyncio.Semaphore | None = None

    # ---- endpoints ---------------------------------------------------------------------

    async def _check_url(self, url: str) -> None:
        try:
            await self.guard.check(url)
        except UnsafeUrl as exc:
            exc.metadata.setdefault("field", "url")
            raise

    @staticmethod
    def _check_fields(description: str | None, rate_limit: float | None) -> None:
        if description is not None and "\x00" in description:
            raise InvalidArgument(
                "description must not contain NUL characters", metadata={"field": "description"}
            )
        if description is not None and len(description) > MAX_DESCRIPTION:
            raise InvalidArgument(
                f"description must be at most {MAX_DESCRIPTION} characters",
                metadata={"field": "description"},
            )
        if rate_limit is not None and not (0 < rate_limit <= 10000):
            raise InvalidArgument(
                "rate_limit must be between 0 (exclusive) and 10000 requests per second,"
                " or null for no limit",
                metadata={"field": "rate_limit"},
            )

    async def create_endpoint(
        self,
        tenant: str,
        *,
        url: str,
        event_types: list[str],
        description: str = "",
        enabled: bool = True,
        rate_limit: float | None = None,
        request_id: str | None = None,
    ) -> tuple[Endpoint, str]:
        """Creates an endpoint with a new signing secret (once per AIP-155 ``request_id``).

        Args:
            tenant: Owner.
            url: http(s) URL; its host must resolve to public addresses (or be allowlisted).
            event_types: Patterns of event types it receives.
            description: Free text.
            enabled: Whether deliveries are sent.
            rate_limit: Requests per second, ``None`` for no limit.
            request_id: AIP-155 request id: a retry with the same body returns the endpoint
                the first call created, with its current secret (the first answer, which
                carried the secret, may have been lost; the caller could rotate it anyway).

        Returns:
            The endpoint and its secret in clear (shown on create only).

        Raises:
            InvalidArgument: A bad field, or an unsafe URL (``UNSAFE_URL``).
            AlreadyExists: If ``request_id`` was used with a different body.
        """
        idempotency.check_request_id(request_id)
        patterns = validate_event_types(event_types)
        self._check_fields(description, rate_limit)
        await self._check_url(url)
        fingerprint = idempotency.request_fingerprint(
            {
                "url": url,
                "event_types": list(event_types),
                "description": description,
                "enabled": enabled,
                "rate_limit": rate_limit,
            }
        )
        secret = signing.new_secret()
        now = utcnow()
        endpoint = Endpoint(
            id=new_id(),
            tenant=tenant,
            url=url,
            description=description,
            event_types=patterns,
            enabled=enabled,
            disabled_reason=None if enabled else "created disabled",
            secret=self._box.seal(secret),
            rate_limit=rate_limit,
            create_time=now,
            update_time=now,
            request_id=request_id,
            request_hash=fingerprint if request_id else None,
        )
        async with self._uow() as uow:
            if await uow.webhooks.add_endpoint(endpoint):
                await uow.commit()
                return endpoint, secret
        # The request id is taken (a retry, or a concurrent twin that committed first).
        async with self._uow() as uow:
            first = await uow.webhooks.get_endpoint_by_request_id(tenant, str(request_id))
        if first is None:  # pragma: no cover - the first one was deleted in between
            raise idempotency.vanished(str(request_id))
        idempotency.ensure_same_request(
            request_id=str(request_id),
            resource=first.name,
            stored_hash=first.request_hash,
            request_hash=fingerprint,
        )
        return first, self._box.open(first.secret)

    async def get_endpoint(self, tenant: str, endpoint_id: uuid.UUID) -> Endpoint:
        """Returns a tenant's endpoint.

        Args:
            tenant: Caller's tenant.
            endpoint_id: Endpoint id.

        Returns:
            The endpoint.

        Raises:
            NotFound: If it does not exist for this tenant.
        """
        async with self._uow() as uow:
            endpoint = await uow.webhooks.get_endpoint(endpoint_id, tenant=tenant)
        if endpoint is None:
            raise self._endpoint_not_found(endpoint_id)
        return endpoint

    @staticmethod
    def _endpoint_not_found(endpoint_id: uuid.UUID) -> NotFound:
        return NotFound(f"endpoints/{endpoint_id} does not exist", reason="ENDPOINT_NOT_FOUND")

    async def list_endpoints(
        self, tenant: str, *, page_size: int, after_id: uuid.UUID | None
    ) -> Page:
        """Lists a tenant's endpoints in creation order.

        Args:
            tenant: Caller's tenant.
            page_size: Page size.
            after_id: Keyset position.

        Returns:
            The page.
        """
        async with self._read_uow() as uow:
            found = await uow.webhooks.list_endpoints(
                tenant, after_id=after_id, limit=page_size + 1
            )
        return _page(found, page_size)

    async def update_endpoint(
        self,
        tenant: str,
        endpoint_id: uuid.UUID,
        *,
        url: str | None = None,
        description: str | None = None,
        event_types: list[str] | None = None,
        enabled: bool | None = None,
        rate_limit: float | None = UNSET,
        correlation_id: str | None = None,
    ) -> Endpoint:
        """Changes an endpoint; enabling it again resumes its paused deliveries.

        Args:
            tenant: Caller's tenant.
            endpoint_id: Endpoint id.
            url: New URL (checked by the SSRF guard).
            description: New description.
            event_types: New patterns.
            enabled: Enable or disable.
            rate_limit: New limit (``None`` removes it; leave unset to keep it).
            correlation_id: Request id for logs.

        Returns:
            The endpoint.

        Raises:
            NotFound: If it does not exist for this tenant.
            InvalidArgument: A bad field or an unsafe URL.
        """
        patterns = validate_event_types(event_types) if event_types is not None else None
        self._check_fields(description, None if rate_limit is UNSET else rate_limit)
        if url is not None:
            await self._check_url(url)
        async with self._uow() as uow:
            endpoint = await uow.webhooks.get_endpoint(endpoint_id, tenant=tenant, for_update=True)
            if endpoint is None:
                raise self._endpoint_not_found(endpoint_id)
            now = utcnow()
            if url is not None:
                endpoint.url = url
            if description is not None:
                endpoint.description = description
            if patterns is not None:
                endpoint.event_types = patterns
            if rate_limit is not UNSET:
                endpoint.rate_limit = rate_limit
            resume = False
            if enabled is True and not endpoint.enabled:
                endpoint.enable(now)
                resume = True
            elif enabled is False and endpoint.enabled:
                endpoint.enabled = False
                endpoint.disabled_reason = "disabled by an operator"
            endpoint.update_time = now
            await uow.webhooks.save_endpoint(endpoint)
            if resume:
                await self._resume_paused(uow, endpoint.id, now, correlation_id)
            await uow.commit()
        return endpoint

    async def delete_endpoint(self, tenant: str, endpoint_id: uuid.UUID) -> None:
        """Deletes an endpoint with its deliveries and attempts.

        Args:
            tenant: Caller's tenant.
            endpoint_id: Endpoint id.

        Raises:
            NotFound: If it does not exist for this tenant.
        """
        async with self._uow() as uow:
            endpoint = await uow.webhooks.get_endpoint(endpoint_id, tenant=tenant, for_update=True)
            if endpoint is None:
                raise self._endpoint_not_found(endpoint_id)
            await uow.webhooks.delete_endpoint(endpoint_id)
            await uow.commit()

    async def rotate_secret(self, tenant: str, endpoint_id: uuid.UUID) -> tuple[Endpoint, str]:
        """Gives an endpoint a new secret; the old one keeps signing during the grace period.

        Args:
            tenant: Caller's tenant.
            endpoint_id: Endpoint id.

        Returns:
            The endpoint and the new secret in clear (shown once).

        Raises:
            NotFound: If it does not exist for this tenant.
        """
        secret = signing.new_secret()
        async with self._uow() as uow:
            endpoint = await uow.webhooks.get_endpoint(endpoint_id, tenant=tenant, for_update=True)
            if endpoint is None:
                raise self._endpoint_not_found(endpoint_id)
            endpoint.rotate(
                self._box.seal(secret),
                utcnow(),
                dt.timedelta(seconds=self.config.secret_grace_seconds),
            )
            await uow.webhooks.save_endpoint(endpoint)
            await uow.commit()
        return endpoint, secret

    # ---- events and fan-out ------------------------------------------------------------

    def _deliver_message(
        self,
        ids: Sequence[uuid.UUID],
        *,
        at: dt.datetime | None = None,
        task_id: str = "",
        correlation_id: str | None = None,
    ) -> OutboxMessage:
        return OutboxMessage(
            task_name=DELIVER_TASK,
            queue=DOMAIN,
            args=[[str(i) for i in ids]],
            task_id=task_id,
            available_time=at,
            headers={"correlation_id": correlation_id or ""},
        )

    async def _enqueue(
        self,
        uow: WebhooksUoW,
        ids: Sequence[uuid.UUID],
        correlation_id: str | None = None,
    ) -> None:
        size = self.config.batch_size
        await uow.webhooks.add_outbox(
            uow.outbox,
            [
                self._deliver_message(ids[start : start + size], correlation_id=correlation_id)
                for start in range(0, len(ids), size)
            ],
        )

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

    # ---- delivery attempts -------------------------------------------------------------

    async def deliver(
        self, delivery_ids: Sequence[uuid.UUID], correlation_id: str | None = None
    ) -> dict[str, int]:
        """Makes one attempt of each due delivery among ``delivery_ids`` (concurrently).

        1. Claims them (row locks, SKIP LOCKED): PENDING -> SENDING with a lease, or PAUSED
           when the endpoint's breaker is open or it is disabled (one probe passes once the
           cool-down is over). Nothing is held open during the HTTP requests.
        2. Sends them (SSRF re-check, signatures).
        3. Records attempts and outcomes: SUCCEEDED, FAILED (permanent 4xx), a retry at the
           next time of the schedule (an outbox row with that ``available_time``), or DEAD;
           emits ``webhooks.Delivery*`` events for final states; updates the breakers.

        Args:
            delivery_ids: Deliveries (a task's argument).
            correlation_id: Request id for logs.

        Returns:
            Counts by outcome.
        """
        claimed = await self._claim(delivery_ids, correlation_id)
        if not claimed:
            return {"sent": 0}
        if self._semaphore is None:
            self._semaphore = asyncio.Semaphore(self.config.max_concurrent_requests)
        times = [utcnow() for _ in claimed]
        results = [
            _storable(r)
            for r in await asyncio.gather(*(self._attempt(d, e) for d, e, _ in claimed))
        ]
        return await self._record(claimed, results, times, correlation_id)

    async def _claim(
        self, delivery_ids: Sequence[uuid.UUID], correlation_id: str | None
    ) -> list[tuple[Delivery, Endpoint, int]]:
        now = utcnow()
        lease = dt.timedelta(seconds=self.config.attempt_lease_seconds)
        claimed: list[tuple[Delivery, Endpoint, int]] = []
        async with self._uow() as uow:
            repo = uow.webhooks
            found = await repo.claim_deliveries(delivery_ids)
            due = [
                d
                for d in found
                if (d.state == DeliveryState.PENDING or (d.lease_until or now) <= now)
                and (d.next_attempt_time is None or d.next_attempt_time <= now + lease / 60)
            ]
            # A redelivered message (its worker was killed mid-attempt) finds the delivery
            # SENDING under a live lease: look again when the lease ends, so the delivery never
            # depends on the periodic upkeep alone.
            for delivery in found:
                if delivery.state == DeliveryState.SENDING and delivery not in due:
                    await uow.outbox.add(
                        self._deliver_message(
                            [delivery.id],
                            at=(delivery.lease_until or now) + dt.timedelta(seconds=1),
                            task_id=f"{delivery.id}.{delivery.attempts}.lease",
                            correlation_id=correlation_id,
                        )
                    )
            if not due:
                await uow.commit()
                return []
            endpoints = await repo.get_endpoints([d.endpoint_id for d in due])
            changed: list[Delivery] = []
            for delivery in due:
                endpoint = endpoints.get(delivery.endpoint_id)
                if endpoint is None:
                    continue  # deleted meanwhile (its deliveries go with it)
                gate = endpoint.gate(now)
                if gate == Gate.PROBE:
                    locked = await repo.get_endpoint(endpoint.id, for_update=True)
                    if locked is not None and locked.gate(now) == Gate.PROBE:
                        locked.start_probe(now, self.config.breaker)
                        await repo.save_endpoint(locked)
                        endpoints[endpoint.id] = endpoint = locked
                    else:
                        gate = Gate.PAUSE
                if gate == Gate.PAUSE:
                    delivery.pause(now)
                    changed.append(delivery)
                    continue
                if endpoint.rate_limit:
                    wait = await self._limiter.acquire(str(endpoint.id), endpoint.rate_limit)
                    if wait > 0:
                        at = now + dt.timedelta(seconds=wait)
                        delivery.schedule(now, at)
                        changed.append(delivery)
                        await uow.outbox.add(
                            self._deliver_message(
                                [delivery.id], at=at, correlation_id=correlation_id
                            )
                        )
                        continue
                attempt = delivery.start_attempt(now, lease)
                changed.append(delivery)
                claimed.append((delivery, endpoint, attempt))
            await repo.save_deliveries(changed)
            await uow.commit()
        return claimed

    async def _attempt(self, delivery: Delivery, endpoint: Endpoint) -> SendResult:
        try:
            return await self._send_one(delivery, endpoint)
        except Exception as exc:  # never lose the attempt's record (e.g. a secret that
            # no longer decrypts after a key change): it is retried on the schedule.
            log.exception("attempt of delivery %s failed before sending", delivery.id)
            message = (
                exc.message if isinstance(exc, DomainError) else f"{type(exc).__name__}: {exc}"
            )
            return SendResult(None, 0.0, error=message)

    async def _send_one(self, delivery: Delivery, endpoint: Endpoint) -> SendResult:
        assert self._semaphore is not None
        async with self._semaphore:
            try:
                addresses = await self.guard.check(endpoint.url)
            except UnsafeUrl as exc:
                # A host now resolving to a refused address (DNS rebinding) is never called;
                # a host that does not resolve at all may recover, so that one is retried.
                refused = "address" in exc.metadata
                return SendResult(None, 0.0, error=f"URL refused: {exc.message}", permanent=refused)
            now = utcnow()
            secrets = [self._box.open(s) for s in endpoint.signing_secrets(now)]
            timestamp = int(time.time())
            body = delivery.body.encode()
            msg_id = str(delivery.id)
            headers = {
                "content-type": "application/json",
                "user-agent": USER_AGENT,
                "webhook-id": msg_id,
                "webhook-timestamp": str(timestamp),
                "webhook-signature": signing.signature_header(secrets, msg_id, timestamp, body),
            }
            return await self._sender.send(endpoint.url, addresses, headers, body)

    async def _record(
        self,
        claimed: list[tuple[Delivery, Endpoint, int]],
        results: Sequence[SendResult],
        times: Sequence[dt.datetime],
        correlation_id: str | None,
    ) -> dict[str, int]:
        counts = {"sent": len(claimed), "succeeded": 0, "failed": 0, "retry": 0, "dead": 0}
        async with self._uow() as uow:
            repo = uow.webhooks
            now = utcnow()
            # Endpoints whose breaker state may change are locked (id order: no deadlocks);
            # a success on a healthy endpoint (the common case) touches no endpoint row.
            touch = sorted(
                {
                    e.id
                    for (_, e, _), r in zip(claimed, results, strict=True)
                    if r.outcome() != Outcome.SUCCEEDED or not e.healthy
                }
            )
            # Lock order everywhere: deliveries, then endpoints (no deadlock with claims).
            current = {
                d.id: d
                for d in await repo.claim_deliveries(
                    [d.id for d, _, _ in claimed], skip_locked=False
                )
            }
            locked = await repo.get_endpoints(touch, for_update=True)
            attempts: list[Attempt] = []
            messages: list[OutboxMessage] = []
            changed: list[Delivery] = []
            changed_endpoints: set[uuid.UUID] = set()
            resume: list[uuid.UUID] = []
            for (claimed_delivery, endpoint, number), result, sent_time in zip(
                claimed, results, times, strict=True
            ):
                delivery = current.get(claimed_delivery.id)
                if (
                    delivery is None
                    or delivery.state != DeliveryState.SENDING
                    or delivery.attempts != number
                ):
                    continue  # another attempt took it over (lease expired): its record wins
                attempts.append(
                    Attempt(
                        id=new_id(),
                        delivery_id=delivery.id,
                        tenant=delivery.tenant,
                        attempt=number,
                        time=sent_time,
                        status_code=result.status_code,
                        duration_ms=round(result.duration_ms, 3),
                        response_body=result.body,
                        error=result.error,
                    )
                )
                changed.append(delivery)
                ep = locked.get(endpoint.id, endpoint)
                outcome = result.outcome()
                if outcome == Outcome.SUCCEEDED:
                    counts["succeeded"] += 1
                    delivery.settle(now, DeliveryState.SUCCEEDED, result)
                    if endpoint.id in locked:
                        if ep.record_success(now):
                            resume.append(ep.id)
                        changed_endpoints.add(ep.id)
                    messages.append(
                        self._outcome("DeliverySucceeded", delivery, ep, result, correlation_id)
                    )
                    continue
                if endpoint.id in locked:
                    opened, _ = ep.record_failure(now, self.config.breaker)
                    changed_endpoints.add(ep.id)
                    if opened and ep.breaker_until is not None:
                        messages.append(
                            OutboxMessage(
                                task_name=PROBE_TASK,
                                queue=DOMAIN,
                                args=[str(ep.id)],
                                available_time=ep.breaker_until,
                                headers={"correlation_id": correlation_id or ""},
                            )
                        )
                if outcome == Outcome.FAILED:
                    counts["failed"] += 1
                    delivery.settle(now, DeliveryState.FAILED, result)
                    messages.append(
                        self._outcome("DeliveryFailed", delivery, ep, result, correlation_id)
                    )
                    continue
                delay = self.config.retry.next_delay(delivery.cycle_attempts, result.retry_after)
                if delay is None:
                    counts["dead"] += 1
                    delivery.settle(now, DeliveryState.DEAD, result)
                    messages.append(
                        self._outcome("DeliveryDead", delivery, ep, result, correlation_id)
                    )
                    continue
                counts["retry"] += 1
                at = now + dt.timedelta(seconds=delay)
                delivery.settle(now, DeliveryState.PENDING, result)
                delivery.next_attempt_time = at
                if ep.gate(now) == Gate.PAUSE:
                    delivery.pause(now)  # the breaker holds it; resumed when it closes
                    continue
                messages.append(
                    self._deliver_message(
                        [delivery.id],
                        at=at,
                        task_id=f"{delivery.id}.{delivery.attempts + 1}",
                        correlation_id=correlation_id,
                    )
                )
            await repo.add_attempts(attempts)
            await repo.add_outbox(uow.outbox, messages)
            await repo.save_deliveries(changed)
            for endpoint_id in sorted(changed_endpoints):
                await repo.save_endpoint(locked[endpoint_id])
            for endpoint_id in resume:
                await self._resume_paused(uow, endpoint_id, now, correlation_id)
            await uow.commit()
        return counts

    def _outcome(
        self,
        name: str,
        delivery: Delivery,
        endpoint: Endpoint,
        result: SendResult,
        correlation_id: str | None,
    ) -> OutboxMessage:
        data: dict[str, Any] = {
            "endpoint_id": str(endpoint.id),
            "endpoint": endpoint.name,
            "delivery_id": str(delivery.id),
            "event_type": delivery.event_type,
            "attempts": delivery.attempts,
        }
        if name == "DeliverySucceeded":
            data["latency_ms"] = float(result.duration_ms)
            data["status_code"] = result.status_code
        else:
            data["status_code"] = result.status_code
            data["error"] = result.describe()
        event = IntegrationEvent(
            type=f"webhooks.{name}", data=data, source=DOMAIN, tenant=delivery.tenant
        )
        return event_message(event, correlation_id=correlation_id)

    async def _resume_paused(
        self,
        uow: WebhooksUoW,
        endpoint_id: uuid.UUID,
        now: dt.datetime,
        correlation_id: str | None,
        *,
        limit: int | None = None,
    ) -> int:
        """PAUSED deliveries of an endpoint -> PENDING now, dispatched in batches."""
        total = 0
        while limit is None or total < limit:
            chunk = 1000 if limit is None else min(1000, limit - total)
            paused = await uow.webhooks.paused(endpoint_id, chunk)
            if not paused:
                break
            for delivery in paused:
                delivery.schedule(now, now)
            await uow.webhooks.save_deliveries(paused)
            await self._enqueue(uow, [d.id for d in paused], correlation_id)
            total += len(paused)
            if len(paused) < chunk:
                break
        return total

    # ---- breaker probes and upkeep -----------------------------------------------------

    async def probe_endpoint(self, endpoint_id: uuid.UUID) -> bool:
        """Sends one paused delivery of an endpoint whose cool-down has passed (the probe).

        Args:
            endpoint_id: The endpoint.

        Returns:
            True if a probe delivery was dispatched.
        """
        async with self._uow() as uow:
            endpoint = await uow.webhooks.get_endpoint(endpoint_id, for_update=True)
            if endpoint is None or endpoint.gate(utcnow()) != Gate.PROBE:
                return False
            sent = await self._resume_paused(uow, endpoint.id, utcnow(), None, limit=1)
            await uow.commit()
        return sent > 0

    async def probe_breakers(self, *, limit: int = 500) -> dict[str, int]:
        """Upkeep (a periodic task): probes endpoints whose breaker cool-down has passed,
        takes back deliveries whose worker vanished mid-attempt, and re-dispatches PENDING
        deliveries far past their due time (a message the broker lost).

        Args:
            limit: Maximum rows of each kind per call.

        Returns:
            Counts: ``probed``, ``recovered``, ``redispatched``.
        """
        probed = recovered = redispatched = 0
        async with self._uow() as uow:
            now = utcnow()
            for endpoint in await uow.webhooks.due_breakers(now, limit):
                probed += await self._resume_paused(uow, endpoint.id, now, None, limit=1)
            stuck = await uow.webhooks.stuck(now, limit)
            for delivery in stuck:
                delivery.schedule(now, now)
            overdue = await uow.webhooks.overdue(
                now - dt.timedelta(seconds=self.config.overdue_seconds), limit
            )
            for delivery in overdue:
                delivery.schedule(now, now)
            await uow.webhooks.save_deliveries([*stuck, *overdue])
            await self._enqueue(uow, [d.id for d in [*stuck, *overdue]])
            recovered, redispatched = len(stuck), len(overdue)
            await uow.commit()
        return {"probed": probed, "recovered": recovered, "redispatched": redispatched}

    # ---- deliveries: reads and manual retry --------------------------------------------

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

    # ---- replay ------------------------------------------------------------------------

    async def replay(
        self,
        tenant: str,
        endpoint_id: uuid.UUID,
        since: dt.datetime,
        *,
        request_id: str | None = None,
        correlation_id: str | None = None,
    ) -> Operation:
        """Starts a replay: every FAILED or DEAD delivery of the endpoint since ``since`` is
        sent again. Returns an Operation (type ``replay``) with progress.

        Args:
            tenant: Caller's tenant.
            endpoint_id: Endpoint id.
            since: Earliest delivery creation time.
            request_id: AIP-155 request id.
            correlation_id: Request id for logs.

        Returns:
            The PENDING operation.

        Raises:
            NotFound: If the endpoint does not exist for this tenant.
            InvalidArgument: If ``since`` is in the future.
        """
        if since.tzinfo is None:
            since = since.replace(tzinfo=dt.UTC)
        if since > utcnow():
            raise InvalidArgument("since is in the future", metadata={"field": "since"})
        await self.get_endpoint(tenant, endpoint_id)
        body = {"endpoint": str(endpoint_id), "since": since.isoformat()}

        async def build(uow: UnitOfWork) -> Operation:
            op = operations_service.new_operation(
                domain=DOMAIN,
                type_="replay",
                target=f"endpoints/{endpoint_id}",
                dispatch=DispatchSpec(task_name=REPLAY_TASK, queue=DOMAIN, args=[]),
                request_id=request_id,
                request_hash=operations_service.request_fingerprint(body),
                lease_seconds=self.config.lease_seconds,
                pending_deadline_seconds=self.config.pending_deadline_seconds,
                correlation_id=correlation_id,
                tenant=tenant,
            )
            op.dispatch.args = [str(op.id), since.isoformat()]
            return op

        return await operations_service.create_idempotently(
            self._uow,
            request_id=request_id,
            request_hash=operations_service.request_fingerprint(body),
            build=build,
            tenant=tenant,
        )

    async def run_replay(
        self, operation_id: uuid.UUID, since: dt.datetime, *, sink: ProgressSink | None = None
    ) -> dict[str, Any]:
        """Carries out a replay operation (the ``webhooks.replay`` task).

        Args:
            operation_id: The operation.
            since: Earliest delivery creation time.
            sink: Progress mirror.

        Returns:
            The operation's response ``{"endpoint", "replayed"}``.
        """
        execution = await self._runner.claim(operation_id, sink=sink)
        endpoint_id = uuid.UUID(execution.operation.target.removeprefix("endpoints/"))
        async with self._uow() as uow:
            total = await uow.webhooks.count_replayable(endpoint_id, since)
        done = 0
        after: uuid.UUID | None = None
        try:
            await execution.checkpoint(0, total, f"0 of {total} deliveries")
            while True:
                async with self._uow() as uow:
                    batch = await uow.webhooks.replayable(
                        endpoint_id, since, after_id=after, limit=500
                    )
                    if not batch:
                        break
                    now = utcnow()
                    for delivery in batch:
                        delivery.restart(now)
                    await uow.webhooks.save_deliveries(batch)
                    await self._enqueue(
                        uow, [d.id for d in batch], execution.operation.correlation_id
                    )
                    await uow.commit()
                after = batch[-1].id
                done += len(batch)
                await execution.checkpoint(
                    min(done, max(total, done)), max(total, done), f"{done} deliveries re-queued"
                )
        except Cancelled:
            await self._runner.cancelled(execution)
            return {"cancelled": True, "replayed": done}

        async def apply(uow: UnitOfWork, op: Operation) -> dict[str, Any]:
            return {"endpoint": f"endpoints/{endpoint_id}", "replayed": done}

        op = await self._runner.finish(execution, apply)
        return op.response or {}

    async def fail_operation(self, operation_id: uuid.UUID, error: OperationError) -> None:
        """Ends a replay operation as FAILED.

        Args:
            operation_id: The operation.
            error: What happened.
        """
        await self._runner.fail(operation_id, error)
