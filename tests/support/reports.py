"""Helpers for reports tests: integration events of the contracts, emitted through a source
domain's outbox (the real path), and waits on the reports projections."""

from __future__ import annotations

import asyncio
import datetime as dt
import secrets
import time
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

from app.container import Container
from app.runtime.outbox import OutboxPublisher
from domains.shared.events import IntegrationEvent, event_message
from tests.support.ops import query

NOON = dt.datetime(2026, 11, 24, 12, 0, tzinfo=dt.UTC)


def new_tenant() -> str:
    """A tenant of its own, so tests never see each other's projections."""
    return f"t-{secrets.token_hex(4)}"


def import_completed(
    tenant: str,
    dataset_id: str,
    accepted: int,
    rejected: int,
    *,
    time: dt.datetime = NOON,
    dataset: str | None = None,
    display_name: str | None = None,
) -> IntegrationEvent:
    extra = {"dataset_display_name": display_name} if display_name else {}
    return IntegrationEvent(
        type="imports.ImportCompleted",
        source="imports",
        tenant=tenant,
        time=time,
        data={
            **extra,
            "dataset_id": dataset_id,
            "dataset": dataset or f"datasets/{dataset_id}",
            "import_id": str(uuid.uuid4()),
            "import": f"datasets/{dataset_id}/imports/x",
            "operation": "operations/imports.x",
            "rows_total": accepted + rejected,
            "rows_accepted": accepted,
            "rows_rejected": rejected,
            "completed_time": time.isoformat(),
        },
    )


def import_failed(tenant: str, dataset_id: str, *, time: dt.datetime = NOON) -> IntegrationEvent:
    return IntegrationEvent(
        type="imports.ImportFailed",
        source="imports",
        tenant=tenant,
        time=time,
        data={
            "dataset_id": dataset_id,
            "dataset": f"datasets/{dataset_id}",
            "import_id": str(uuid.uuid4()),
            "import": f"datasets/{dataset_id}/imports/y",
            "operation": "operations/imports.y",
            "error": "bad header",
        },
    )


def delivery(
    tenant: str,
    endpoint_id: str,
    outcome: str = "Succeeded",
    *,
    latency_ms: float | None = None,
    time: dt.datetime = NOON,
) -> IntegrationEvent:
    data: dict[str, Any] = {
        "endpoint_id": endpoint_id,
        "endpoint": f"endpoints/{endpoint_id}",
        "delivery_id": str(uuid.uuid4()),
        "event_type": "imports.ImportCompleted",
        "attempts": 1,
    }
    if outcome == "Succeeded":
        data.update(latency_ms=latency_ms, status_code=200)
    else:
        data.update(status_code=None if outcome == "Dead" else 500, error="HTTP 500")
    return IntegrationEvent(
        type=f"webhooks.Delivery{outcome}", source="webhooks", tenant=tenant, time=time, data=data
    )


async def emit(
    container: Container, events: Iterable[IntegrationEvent], *, copies: int = 1
) -> None:
    """Writes each event's outbox row (``copies`` rows per event: a re-published event) into its
    source domain's outbox, one transaction per source, as the emitting domain would."""
    by_source: dict[str, list[IntegrationEvent]] = {}
    for event in events:
        by_source.setdefault(event.source, []).append(event)
    for source, batch in by_source.items():
        async with container.uow_factory(source)() as uow:
            for event in batch:
                for _ in range(copies):
                    await uow.outbox.add(event_message(event, correlation_id="test-reports"))
            await uow.commit()


async def relay_until_sent(
    publisher: OutboxPublisher,
    database_url: str,
    domain: str,
    task_ids: Iterable[str],
    timeout: float = 20,
) -> None:
    """Runs the relay over ``domain``'s outbox until every row with one of ``task_ids`` is sent
    (rows younger than the relay grace are left for a later pass; other tests' rows may go out
    too, which is harmless)."""
    ids = list(task_ids)
    deadline = time.monotonic() + timeout
    unsent = len(ids)
    while time.monotonic() < deadline:
        await publisher.relay_once([domain])
        rows = await query(
            database_url,
            f"SELECT count(*) FROM {domain}.outbox WHERE task_id = ANY(:ids) AND sent_time IS NULL",
            ids=ids,
        )
        unsent = rows[0][0]
        if unsent == 0:
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"{unsent} outbox rows of {domain} still unsent after {timeout}s")


async def relay_events(
    publisher: OutboxPublisher, database_url: str, events: Sequence[IntegrationEvent]
) -> None:
    """Relays the outbox rows of ``events`` from their source domains."""
    for source in sorted({e.source for e in events}):
        task_ids = [f"event-{e.id}" for e in events if e.source == source]
        await relay_until_sent(publisher, database_url, source, task_ids)


async def wait_applied(
    database_url: str, event_ids: Iterable[uuid.UUID], timeout: float = 30
) -> None:
    """Waits until every event id is in ``reports.applied_events``."""
    ids = [str(i) for i in event_ids]
    deadline = time.monotonic() + timeout
    found = 0
    while time.monotonic() < deadline:
        rows = await query(
            database_url,
            "SELECT count(*) FROM reports.applied_events WHERE event_id = ANY(CAST(:ids AS uuid[]))",
            ids=ids,
        )
        found = rows[0][0]
        if found == len(ids):
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{found} of {len(ids)} events applied within {timeout}s")
