"""The outbox publisher's own ``send_task`` (routes worked out once per task and queue) puts
the very message on the real broker that Celery's ``send_task`` with the same arguments does:
every header, property and body field, for a workflow task and for an event's fan-out."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from app.config import Settings
from app.db import EngineRegistry
from app.runtime.outbox import OutboxPublisher
from domains.shared.events import IntegrationEvent, event_message
from domains.shared.outbox import OutboxMessage
from tests.conftest import claim_redis_db


@pytest.fixture
def broker(settings: Settings) -> Iterator[tuple[OutboxPublisher, redis.Redis]]:
    # A database index of its own: no worker of another test consumes these queues.
    url, release = claim_redis_db(str(settings.broker_url))
    client = redis.Redis.from_url(url)
    mine = settings.model_copy(update={"broker_url": url})
    try:
        yield OutboxPublisher(EngineRegistry(mine), mine), client
    finally:
        client.flushdb()
        release()


def _take(client: redis.Redis, queue: str) -> dict[str, Any]:
    [raw] = client.lrange(queue, 0, -1)
    client.delete(queue)
    message: dict[str, Any] = json.loads(raw)
    # kombu's own id of this publish (random per message), not part of the task message.
    del message["properties"]["delivery_tag"]
    return message


def _celery_send_task(publisher: OutboxPublisher, name: str, queue: str, **fields: Any) -> None:
    # What the publisher called before: Celery's send_task, same producer and batch.
    celery = publisher._celery
    with celery.producer_or_acquire() as producer, producer.batch():
        celery.send_task(
            name,
            queue=queue,
            routing_key=queue,
            retry=False,
            producer=producer,
            declare=publisher._declare_for(queue),
            **fields,
        )


async def test_a_workflow_message_is_the_one_send_task_sends(
    broker: tuple[OutboxPublisher, redis.Redis],
) -> None:
    publisher, client = broker
    message = OutboxMessage(
        task_name="platform.ping",
        queue="platform",
        args=[str(uuid.uuid4())],
        headers={"correlation_id": "req-1"},
    )
    sent, failed = publisher._send_all([message])
    assert (sent, failed) == ([message.id], [])
    ours = _take(client, "platform")

    _celery_send_task(
        publisher,
        message.task_name,
        message.queue,
        args=message.args,
        kwargs=message.kwargs,
        task_id=message.task_id,
        headers=dict(message.headers),
        argsrepr=ours["headers"]["argsrepr"],
        kwargsrepr=ours["headers"]["kwargsrepr"],
    )
    theirs = _take(client, "platform")
    assert ours == theirs
    assert ours["headers"]["id"] == message.task_id and ours["headers"]["task"] == "platform.ping"


async def test_an_event_fan_out_is_what_send_task_sends(
    broker: tuple[OutboxPublisher, redis.Redis],
) -> None:
    publisher, client = broker
    event = IntegrationEvent(
        type="imports.ImportCompleted", data={"import": "x"}, source="imports", tenant="t"
    )
    message = event_message(event, correlation_id="req-2")
    assert publisher._send_all([message])[1] == []
    ours = {queue: _take(client, queue) for queue in ("reports", "webhooks")}

    for queue, theirs_queue in ours.items():
        _celery_send_task(
            publisher,
            f"{queue}.handle_event",
            queue,
            kwargs={"event": message.kwargs["event"]},
            task_id=f"{event.id}.{queue}",
            headers=dict(message.headers),
            argsrepr="()",
            kwargsrepr=theirs_queue["headers"]["kwargsrepr"],
        )
        assert _take(client, queue) == theirs_queue


async def test_the_publishing_process_time_limits_never_reach_the_message(
    broker: tuple[OutboxPublisher, redis.Redis],
) -> None:
    # A task's time limits are the worker's (its CONVEYOR_TASK_TIME_LIMITS): the message
    # carries none, even when the publisher's own app knows the task with limits of its own
    # (loaded here as any use of app.tasks would). Otherwise they override the worker's.
    publisher, client = broker
    known = publisher._celery.tasks["platform.ping"]
    assert (known.soft_time_limit, known.time_limit) != (None, None)  # the control
    message = OutboxMessage(task_name="platform.ping", queue="platform", args=["x"])
    assert publisher._send_all([message])[1] == []
    assert _take(client, "platform")["headers"]["timelimit"] == [None, None]
