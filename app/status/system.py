"""What ``GET /v1/system/status`` (and the console's System page) shows: queue depths, workers
alive per queue, outbox backlog and age per domain, and the beat leader.

The same sources as ``conveyor status`` (broker, worker pings, each domain's outbox, the beat
lease), read with the API's own engines.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

from app.config import DOMAINS, Settings
from app.db import EngineRegistry
from app.status.sources import (
    live_workers,
    queue_depths_for_status,
    read_beat_leadership,
    unreachable_reason,
)


def _iso(value: dt.datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value.isoformat()


def _age(value: dt.datetime | None, now: dt.datetime) -> float | None:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return max(0.0, (now - value).total_seconds())


class SystemStatus:
    """Collects the platform's state for operators."""

    def __init__(
        self, settings: Settings, registry: EngineRegistry, celery: Any, timeout: float = 1.0
    ) -> None:
        """Binds the sources.

        Args:
            settings: Settings.
            registry: The API's engines.
            celery: The API's Celery app (worker pings).
            timeout: Seconds to wait for the broker and worker answers.
        """
        self._settings = settings
        self._registry = registry
        self._celery = celery
        self._timeout = timeout

    async def collect(self) -> dict[str, Any]:
        """Reads every source; an unreachable one is listed in ``problems``, never raised.

        Returns:
            The status document (see ``api.v1.system.SystemStatusOut``).
        """
        from app.container import DOMAIN_TABLES
        from domains.shared.outbox import SqlOutboxRepository

        problems: list[str] = []
        queues = list(DOMAINS)
        now = dt.datetime.now(dt.UTC)
        try:
            depths = await asyncio.to_thread(
                queue_depths_for_status, self._settings.broker(), queues, max(self._timeout, 1.0)
            )
        except Exception as exc:
            depths = {}
            problems.append(f"broker unreachable: {unreachable_reason(exc)}")
        workers: dict[str, list[str]] = {}
        if depths:
            try:
                workers = await asyncio.to_thread(live_workers, self._celery, self._timeout)
            except Exception as exc:
                problems.append(f"worker inspection failed: {unreachable_reason(exc)}")
        consuming: dict[str, int] = {q: 0 for q in queues}
        for worker_queues in workers.values():
            for queue in worker_queues:
                consuming[queue] = consuming.get(queue, 0) + 1

        outbox = []
        for domain in DOMAINS:
            try:
                async with self._registry.sessionmaker(domain)() as session:
                    repo = SqlOutboxRepository(session, DOMAIN_TABLES[domain].outbox)
                    unsent, oldest = await asyncio.wait_for(repo.backlog(), timeout=5)
                outbox.append(
                    {
                        "domain": domain,
                        "unsent": unsent,
                        "oldest_time": _iso(oldest),
                        "age_seconds": _age(oldest, now),
                    }
                )
            except Exception as exc:
                problems.append(f"{domain} database unreachable: {unreachable_reason(exc)}")
                outbox.append({"domain": domain, "unsent": None, "oldest_time": None})

        beat: dict[str, Any] = {"leader": None, "lease_expire_time": None, "nodes": []}
        try:
            leadership = await read_beat_leadership(self._registry, self._settings)
            lease = leadership.leader
            if lease is not None:
                beat["leader"] = lease.node
                beat["lease_expire_time"] = _iso(lease.expires_at)
                beat["leader_since_time"] = _iso(lease.acquired_at)
            beat["nodes"] = [
                {
                    "node": node.node,
                    "leader": leadership.leads(node),
                    "last_seen_time": _iso(node.last_seen),
                }
                for node in leadership.nodes
            ]
        except Exception as exc:
            problems.append(f"platform database unreachable: {unreachable_reason(exc)}")

        return {
            "queues": [
                {
                    "name": q,
                    "waiting": depths.get(q) if isinstance(depths.get(q), int) else None,
                    "workers": consuming.get(q, 0),
                }
                for q in queues
            ],
            "unacked": depths.get("_unacked"),
            "workers": [{"name": name, "queues": qs} for name, qs in sorted(workers.items())],
            "outbox": outbox,
            "beat": beat,
            "problems": problems,
        }
