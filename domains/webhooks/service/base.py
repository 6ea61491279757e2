"""Shared state of the webhooks service: constants, config, the constructor and helpers
several sections use.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from domains.operations.execution import OperationRunner
from domains.shared.errors import NotFound
from domains.shared.outbox import OutboxMessage
from domains.shared.query import Keyset
from domains.shared.ssrf import UrlGuard
from domains.webhooks import signing
from domains.webhooks.model import BreakerPolicy, Endpoint, RetryPolicy
from domains.webhooks.ports import NoRateLimit, RateLimiter, Sender
from domains.webhooks.unit_of_work import WebhooksUoW

# The name the single-module service logged under: log config and filters keep matching.
log = logging.getLogger("domains.webhooks.service")

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


def _page(items: list[Any], page_size: int) -> Page:
    page = items[:page_size]
    return Page(page, page[-1].id if len(items) > page_size else None)


class ServiceBase:
    """State of the webhooks service and the helpers its sections share."""

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

    # ---- shared: endpoint lookup, dispatch and resuming paused deliveries -------------

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
