"""Faster recovery after a broker wipe, with production default settings (pending deadline
300 s): the relay notices the wipe (its epoch key is gone) and re-dispatches the pending backlog
at once; a healthy backlog is never re-dispatched. Real API, worker, relay, PostgreSQL, Redis.

CI runs a few hundred queued jobs; `CONVEYOR_FAULT_BACKLOG=10000` gives the report's figure."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import pytest
import redis as redis_lib

from tests.reliability.harness import JobStream, Tally
from tests.reliability.test_faults import AMQP_URL, _amqp_up, _check, _production_defaults
from tests.support import services
from tests.support.ops import query

pytestmark = pytest.mark.reliability

BACKLOG = int(os.environ.get("CONVEYOR_FAULT_BACKLOG", "150"))


async def _wait_redispatched(
    system: Any, database_url: str, ids: list[str], within: float
) -> list[int]:
    """Waits until every job was dispatched a second time because the relay saw the broker
    lose its state; returns the dispatch counts."""
    deadline = time.monotonic() + within
    counts = await _dispatch_counts(database_url, ids)
    while min(counts) < 2 and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        counts = await _dispatch_counts(database_url, ids)
    assert min(counts) == 2, f"{sum(c < 2 for c in counts)} jobs not re-dispatched"
    assert "the broker lost its state" in system.relay.log()
    return counts


async def _dispatch_counts(database_url: str, ids: list[str]) -> list[int]:
    rows = await query(
        database_url,
        "SELECT dispatch_count FROM platform.operations WHERE id = ANY(CAST(:ids AS uuid[]))",
        ids=ids,
    )
    return [r[0] for r in rows]


async def test_flushed_backlog_is_redispatched_at_once_and_a_healthy_one_never(
    clean_db, make_system, database_url
):
    # clean_db: this system's sweeper would also re-dispatch other tests' PENDING operations
    # from the session database into the queue this test counts.
    system = make_system(database_url=database_url, workers=1)
    _production_defaults(system)
    system.create_api_key()
    system.start()
    system.relay.wait_for_log("broker watch armed", timeout=60)
    worker = system.workers[0]
    worker.stop()  # a backlog builds up in the broker
    tally = Tally(f"broker-flush-{BACKLOG}-backlog")
    stream = JobStream(system, tally, sleep_seconds=0.0)
    await stream.run(BACKLOG, concurrency=8, give_up=300)
    ids = list(stream.accepted.values())
    broker = redis_lib.Redis.from_url(system.env["CONVEYOR_BROKER_URL"])
    for _ in range(300):
        if broker.llen("platform") >= len(ids):
            break
        await asyncio.sleep(0.2)
    assert broker.llen("platform") == len(ids)

    # Healthy backlog: a sweep (every 5 s by default) checks the broker with the backlog
    # queued and re-sends nothing (the same check catches the flush below: it is live).
    await asyncio.sleep(6)
    assert set(await _dispatch_counts(database_url, ids)) == {1}
    assert broker.llen("platform") == len(ids)

    # The broker loses everything (FLUSHDB of its database: a restart without persistence).
    broker.flushdb()
    flushed = time.time()
    tally.faults = 1
    await _wait_redispatched(system, database_url, ids, within=120)  # far below 300 s
    rows = await query(
        database_url,
        "SELECT extract(epoch FROM dispatch_time) FROM platform.operations"
        " WHERE id = ANY(CAST(:ids AS uuid[])) ORDER BY 1",
        ids=ids,
    )
    waits = sorted(float(r[0]) - flushed for r in rows)
    p99 = waits[max(0, int(len(waits) * 0.99) - 1)]

    worker.start()
    await stream.verify(timeout=max(300.0, BACKLOG * 0.12))  # one worker drains the backlog
    tally.recover_seconds = p99
    print(
        f"{tally.line()}; p99 time to re-dispatch after the flush {p99:.1f} s"
        " (deadline-based recovery: >= 300 s)"
    )
    _check(tally)


@services.needs_service(_amqp_up(), "no RabbitMQ on 127.0.0.1:5672")
async def test_reset_rabbitmq_backlog_is_redispatched_at_once_and_a_healthy_one_never(
    clean_db, make_system, database_url
):
    """RabbitMQ keeps durable queues over a restart; a reset (or a lost node) deletes them with
    their messages. The relay watches its durable epoch queue and re-dispatches at once."""
    # clean_db: this system's sweeper would also re-dispatch other tests' PENDING operations
    # from the session database into the queue this test counts.
    from app.adapters.celery_app import create_celery
    from app.config import load_settings
    from app.runtime.outbox import BROKER_EPOCH_QUEUE

    celery = create_celery(load_settings(database_url=database_url, broker_url=AMQP_URL))

    def depth(queue: str) -> int:
        with celery.connection_for_write() as conn:
            return int(conn.default_channel.queue_declare(queue=queue, passive=True).message_count)

    with celery.connection_for_write() as conn:  # the vhost is shared with other tests
        for queue in celery.conf.task_queues:
            queue(conn.default_channel).declare()
            queue(conn.default_channel).purge()
    system = make_system(database_url=database_url, broker_url=AMQP_URL, workers=1)
    _production_defaults(system)
    system.env["CONVEYOR_RESULT_BACKEND"] = ""
    system.create_api_key()
    system.start()
    system.relay.wait_for_log("broker watch armed (RabbitMQ", timeout=60)
    worker = system.workers[0]
    worker.stop()
    tally = Tally("rabbitmq-reset-backlog")
    stream = JobStream(system, tally, sleep_seconds=0.0)
    await stream.run(60, concurrency=6, give_up=120)
    ids = list(stream.accepted.values())
    for _ in range(300):
        if depth("platform") >= len(ids):
            break
        await asyncio.sleep(0.2)
    assert depth("platform") == len(ids)

    await asyncio.sleep(6)  # healthy backlog: sweeps see the epoch queue and re-send nothing
    assert set(await _dispatch_counts(database_url, ids)) == {1}
    assert depth("platform") == len(ids)

    # What a reset does to Conveyor's state: every queue (and its messages) is gone.
    with celery.connection_for_write() as conn:
        for name in [q.name for q in celery.conf.task_queues] + [BROKER_EPOCH_QUEUE]:
            conn.default_channel.queue_delete(queue=name)
    tally.faults = 1
    counts = await _wait_redispatched(system, database_url, ids, within=60)
    assert max(counts) == 2, "re-dispatched more than once"
    worker.start()
    await stream.verify(timeout=120)
    _check(tally)


async def test_a_worker_killed_as_a_whole_held_only_running_work_which_runs_again_after_its_lease(
    make_system, database_url
):
    """With one message prefetched per pool process (acks_late, prefetch multiplier 1), a
    worker holds nothing it has not started: when it is SIGKILLed whole, what it held is
    RUNNING and comes back after the operation lease, not after the 300 s pending deadline."""
    system = make_system(database_url=database_url, workers=1, concurrency=2)
    system.env.update(
        {
            "CONVEYOR_PENDING_DEADLINE_SECONDS": "300",  # the production default
            "CONVEYOR_OPERATION_LEASE_SECONDS": "3",
        }
    )
    system.create_api_key()
    system.start()
    broker = redis_lib.Redis.from_url(system.env["CONVEYOR_BROKER_URL"])
    tally = Tally("worker-killed-whole")
    # A heartbeat every 0.5 s keeps a live attempt inside its 3 s lease.
    stream = JobStream(system, tally, sleep_seconds=4.0, steps=8)
    await stream.run(8, concurrency=8)
    ids = list(stream.accepted.values())
    deadline = time.monotonic() + 60
    running: list[str] = []
    while time.monotonic() < deadline:
        rows = await query(
            database_url,
            "SELECT id::text FROM platform.operations"
            " WHERE id = ANY(CAST(:ids AS uuid[])) AND state = 'RUNNING'",
            ids=ids,
        )
        running = [r[0] for r in rows]
        if len(running) == 2:
            break
        await asyncio.sleep(0.1)
    assert len(running) == 2, running
    held = broker.hlen("unacked")
    assert held == 2, f"the worker holds {held} messages for 2 running operations"
    assert broker.llen("platform") == len(ids) - 2  # the rest wait in the queue, not the worker
    worker = system.workers[0]
    worker.kill()
    killed = time.monotonic()
    tally.faults = 1
    worker.start()
    await stream.verify(timeout=90)
    recovered = time.monotonic() - killed
    attempts = await query(
        database_url,
        "SELECT attempt FROM platform.operations WHERE id = ANY(CAST(:ids AS uuid[]))",
        ids=running,
    )
    assert sorted(r[0] for r in attempts) == [2, 2], "the killed work ran again"
    assert recovered < 60, f"{recovered:.0f} s: waited for the pending deadline?"
    print(f"{tally.line()}; all done {recovered:.1f} s after the kill")
    _check(tally)
