"""Webhooks service, delivery attempts: claim, send (signed), record outcomes, update the
circuit breaker.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import time
import uuid
from collections.abc import Sequence
from typing import Any

from domains.shared.clock import utcnow
from domains.shared.errors import DomainError
from domains.shared.events import IntegrationEvent, event_message
from domains.shared.ids import new_id
from domains.shared.outbox import OutboxMessage
from domains.shared.ssrf import UnsafeUrl
from domains.webhooks import signing
from domains.webhooks.model import (
    Attempt,
    Delivery,
    DeliveryState,
    Endpoint,
    Gate,
    Outcome,
    SendResult,
)
from domains.webhooks.service.base import DOMAIN, PROBE_TASK, USER_AGENT, ServiceBase, log


def _storable(result: SendResult) -> SendResult:
    """PostgreSQL text cannot hold NUL: a receiver's binary answer must not break the record."""
    if "\x00" not in result.body and "\x00" not in (result.error or ""):
        return result
    return dataclasses.replace(
        result,
        body=result.body.replace("\x00", "\ufffd"),
        error=result.error.replace("\x00", "\ufffd") if result.error else None,
    )


class SendingPart(ServiceBase):
    """Delivery attempts and the breaker of the webhooks service."""

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
