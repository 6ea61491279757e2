"""Webhooks service, breaker probes and upkeep (periodic tasks)."""

from __future__ import annotations

import datetime as dt
import uuid

from domains.shared.clock import utcnow
from domains.webhooks.model import Gate
from domains.webhooks.service.base import ServiceBase


class UpkeepPart(ServiceBase):
    """Breaker probes and upkeep of the webhooks service."""

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
