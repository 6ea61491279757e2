"""Events are work too: an integration event the broker loses, and whose handlers then give up
during a database outage, is still handled by every consumer, once (inbox + sweeper), with the
real `conveyor relay` and `conveyor worker` processes on real PostgreSQL and Redis."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from app.container import Container
from app.db import EngineRegistry
from tests.support.broker import task_ids
from tests.support.ops import query
from tests.support.reports import emit, import_completed, new_tenant, relay_events
from tests.support.services import to_plain_url

pytestmark = pytest.mark.reliability


async def _until(check: Callable[[], Awaitable[Any]], what: str, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = await check()
        if value:
            return value
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


async def _admin(database_url: str, sql: str) -> None:
    import asyncpg

    dbname = database_url.rsplit("/", 1)[1].split("?", 1)[0]
    admin = to_plain_url(database_url).rsplit("/", 1)[0] + "/postgres"
    conn = await asyncpg.connect(admin)
    try:
        await conn.execute(sql.format(db=dbname))
    finally:
        await conn.close()


async def _kill_database(database_url: str) -> None:
    # The database goes away for everyone: new connections are refused, open ones are cut.
    await _admin(database_url, 'ALTER DATABASE "{db}" WITH ALLOW_CONNECTIONS false')
    await _admin(
        database_url,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
        " WHERE datname = '{db}' AND pid <> pg_backend_pid()",
    )


async def _revive_database(database_url: str) -> None:
    await _admin(database_url, 'ALTER DATABASE "{db}" WITH ALLOW_CONNECTIONS true')


async def _inbox(database_url: str, event_id: str) -> dict[str, tuple[str, int]]:
    rows = []
    for schema in ("webhooks", "reports"):
        rows += await query(
            database_url,
            f"SELECT consumer, state, dispatch_count FROM {schema}.inbox"
            " WHERE event_id = CAST(:id AS uuid)",
            id=event_id,
        )
    return {r[0]: (r[1], r[2]) for r in rows}


def _queued(stack: Any, event_id: str) -> tuple[int, int]:
    """This event's messages in the webhooks and reports queues (other tests' leftover outbox
    rows may go out in the same relay pass: they are not counted)."""
    webhooks, reports = (
        task_ids(stack.redis, queue).count(f"{event_id}.{queue}")
        for queue in ("webhooks", "reports")
    )
    return webhooks, reports


async def test_event_lost_by_broker_and_given_up_during_db_outage_is_handled_once(
    stack, database_url
):
    tenant = new_tenant()
    container = Container(stack.settings, EngineRegistry(stack.settings))
    try:
        # A webhook endpoint of the tenant (disabled: its delivery is kept PAUSED, never sent).
        endpoint, _ = await container.webhooks.create_endpoint(
            tenant,
            url="https://93.184.216.34/hook",
            event_types=["imports.ImportCompleted"],
            enabled=False,
        )
        event = import_completed(tenant, "inbox-ds", 7, 1)
        await emit(container, [event])
    finally:
        await container.registry.dispose()
    event_id = str(event.id)

    # 1. Published (each consumer's inbox row written first), then the broker loses it all.
    await relay_events(stack.app.state.publisher, database_url, [event])
    assert _queued(stack, event_id) == (1, 1)
    assert await _inbox(database_url, event_id) == {
        "webhooks": ("PENDING", 1),
        "reports": ("PENDING", 1),
    }
    stack.redis.flushdb()

    # 2. The sweeper (in `conveyor relay`) dispatches it again once the deadline passes.
    fast = {"CONVEYOR_EVENT_DEADLINE_SECONDS": "1.5", "CONVEYOR_SWEEPER_INTERVAL_SECONDS": "0.3"}
    stack.relay(env=fast)

    async def redispatched() -> bool:
        inbox = await _inbox(database_url, event_id)
        return _queued(stack, event_id) == (1, 1) and all(n == 2 for _, n in inbox.values())

    await _until(redispatched, "the sweeper to re-dispatch the flushed event")

    # 3. The database dies just as the handlers run: they retry, then give up.
    await _kill_database(database_url)
    try:
        worker = stack.worker(
            queues="webhooks,reports",
            concurrency=2,
            env={
                **fast,
                "CONVEYOR_TASK_MAX_RETRIES": "1",
                "CONVEYOR_REPORTS__EVENT_MAX_RETRIES": "1",
            },
        )
        worker.wait_for_log("webhooks.handle_event gave up", timeout=60)
        worker.wait_for_log(f"reports: event {event_id} not applied after", timeout=60)
    finally:
        await _revive_database(database_url)

    # 4. Back up: the sweeper dispatches it once more and both consumers handle it, once.
    async def handled() -> dict[str, tuple[str, int]] | None:
        inbox = await _inbox(database_url, event_id)
        return inbox if all(s == "HANDLED" for s, _ in inbox.values()) else None

    inbox = await _until(handled, "both consumers to handle the event", timeout=90)
    assert set(inbox) == {"webhooks", "reports"}
    assert all(n >= 3 for _, n in inbox.values()), inbox
    deliveries = await query(
        database_url,
        "SELECT count(*) FROM webhooks.deliveries WHERE event_id = CAST(:id AS uuid)"
        " AND endpoint_id = :ep",
        id=event_id,
        ep=endpoint.id,
    )
    assert deliveries[0][0] == 1
    projection = await query(
        database_url,
        "SELECT imports_completed, rows_accepted FROM reports.dataset_daily"
        " WHERE tenant = :t AND dataset_id = 'inbox-ds'",
        t=tenant,
    )
    assert [tuple(r) for r in projection] == [(1, 7)]
