"""The fast path's urgent publish on the real broker and database: a lone submit's rows are on
their way to the broker before the event loop runs again (while the request writes its answer),
where an ordinary publish waits for the loop so that concurrent commits join its batch."""

from __future__ import annotations

import secrets
import time
from typing import Any

import redis

from app.db import EngineRegistry
from app.runtime.outbox import OutboxPublisher
from tests.support.ops import query, written_outbox_row


def _lands(client: redis.Redis, queue: str, timeout: float) -> bool:
    # Blocks the event loop's thread on purpose: only a send already running on another
    # thread can reach the broker meanwhile.
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.llen(queue):
            return True
        time.sleep(0.005)
    return False


async def test_an_urgent_publish_is_under_way_before_the_loop_runs_again(
    settings: Any, database_url: str, redis_client: redis.Redis
) -> None:
    registry = EngineRegistry(settings)
    publisher = OutboxPublisher(registry, settings)
    queue = f"fast-path-{secrets.token_hex(4)}"  # no worker consumes it
    try:
        # As in a running API: the broker connection is open, the queues declared.
        await publisher.publish_now("platform", [await written_outbox_row(database_url, queue)])
        await publisher.drain()
        assert redis_client.llen(queue) == 1
        redis_client.delete(queue)

        # Control: an ordinary publish waits for the loop, so nothing lands while it is held.
        ordinary = await written_outbox_row(database_url, queue)
        await publisher.publish_now("platform", [ordinary])
        assert not _lands(redis_client, queue, 1.0)
        await publisher.drain()
        assert redis_client.llen(queue) == 1
        redis_client.delete(queue)

        # Urgent: the send is on its thread when publish_now returns.
        urgent = await written_outbox_row(database_url, queue)
        await publisher.publish_now("platform", [urgent], urgent=True)
        assert _lands(redis_client, queue, 10.0)
        await publisher.drain()
        rows = await query(
            database_url,
            "SELECT task_id FROM platform.outbox WHERE queue = :q AND sent_time IS NOT NULL",
            q=queue,
        )
        # Each is marked sent once published (the warm-up's, the ordinary and the urgent one).
        assert len(rows) == 3 and {ordinary.task_id, urgent.task_id} <= {r.task_id for r in rows}
    finally:
        redis_client.delete(queue)
        await query(database_url, "DELETE FROM platform.outbox WHERE queue = :q", q=queue)
        await registry.dispose()
