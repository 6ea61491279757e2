"""What a Redis broker holds, by Celery task id (kombu's Redis transport)."""

from __future__ import annotations

import json

import redis


def task_ids(client: redis.Redis, queue: str, *, unacked: bool = False) -> list[str]:
    """Task ids of the messages waiting in ``queue``, and with ``unacked`` also of every
    message delivered and not acked yet (kombu keeps those in its ``unacked`` hash, for all
    queues, until the late ack after the task).

    Args:
        client: A client of the broker's Redis database.
        queue: The queue (a Redis list).
        unacked: Also the delivered, unacked messages.

    Returns:
        The ids, one per message (a duplicate message counts twice).
    """
    bodies = [json.loads(raw) for raw in client.lrange(queue, 0, -1)]
    if unacked:
        bodies += [json.loads(raw)[0] for raw in client.hvals("unacked")]
    return [body["headers"]["id"] for body in bodies]
