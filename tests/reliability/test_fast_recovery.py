"""Faster recovery after a broker wipe, with production default settings (pending deadline
300 s): the relay notices the wipe (its epoch key is gone) and re-dispatches the pending backlog
at once; a healthy backlog is never re-dispatched. Real API, worker, relay, PostgreSQL, Redis.

CI runs a few hundred queued jobs; `CONVEYOR_FAULT_BACKLOG=10000` gives the report's figure."""

from __future__ import annotations

import asyncio
import os
import time

import pytest
import redis as redis_lib

from tests.reliability.harness import JobStream, Tally
from tests.reliability.test_faults import _check, _production_defaults
from tests.support.ops import query

pytestmark = pytest.mark.reliability

BACKLOG = int(os.environ.get("CONVEYOR_FAULT_BACKLOG", "150"))


async def _dispatch_counts(database_url: str, ids: list[str]) -> list[int]:
    rows = await query(
        database_url,
        "SELECT dispatch_count FROM platform.operations WHERE id = ANY(CAST(:ids AS uuid[]))",
        ids=ids,
    )
    return [r[0] for r in rows]


async def test_flushed_backlog_is_redispatched_at_once_and_a_healthy_one_never(
    make_system, database_url
):
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
    deadline = time.monotonic() + 120  # far below the 300 s pending deadline
    counts = await _dispatch_counts(database_url, ids)
    while min(counts) < 2 and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        counts = await _dispatch_counts(database_url, ids)
    assert min(counts) == 2, f"{sum(c < 2 for c in counts)} jobs not re-dispatched"
    assert "the broker lost its state" in system.relay.log()
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
