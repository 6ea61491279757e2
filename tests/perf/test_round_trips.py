"""Regression guard of the hot path's budget (ARCHITECTURE.md section 6): PostgreSQL round trips
per job in the worker and per submit, counted on the wire (tests/support/roundtrips.py).

Counts are stable where times are not: a change that adds a statement, a transaction or a
pre-ping to the hot path fails here with the new count.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import AsyncIterator

import pytest

from app.config import Settings
from app.container import Container
from app.db import EngineRegistry
from domains.operations.model import State
from domains.shared.driver import generic_plans_engine
from tests.support.roundtrips import RoundTripCounter

WORKER_ROUND_TRIPS_PER_PING = 1
"""An instant ping (one step, no sleep): claim, answer and SUCCEEDED in one CTE (``run_instant``)."""

WORKER_ROUND_TRIPS_PER_STEPPED_PING = 3
"""A ping of two steps without sleep: the instant statement matches nothing (not instant), then
the fused claim that also reads the ping, then the fused finish (the one-second progress
interval writes no checkpoint)."""

SUBMIT_ROUND_TRIPS_PER_PING = 1
"""create_ping: one statement inserting the ping, the operation and the outbox row (autocommit)."""


@pytest.fixture
async def counted(settings: Settings) -> AsyncIterator[tuple[Container, RoundTripCounter]]:
    parts = urllib.parse.urlsplit(settings.database_url or "")
    async with RoundTripCounter(parts.hostname or "127.0.0.1", parts.port or 5432) as proxy:
        # Production's progress interval: a one-step ping writes no checkpoint (the claim is
        # its first heartbeat).
        proxied = settings.model_copy(
            update={
                "database_url": proxy.url(settings.database_url or ""),
                "progress_interval_seconds": 1.0,
            }
        )
        registry = EngineRegistry(proxied)
        try:
            yield Container(proxied, registry), proxy
        finally:
            await registry.dispose()


async def test_round_trips_per_ping_job_and_submit(
    counted: tuple[Container, RoundTripCounter],
) -> None:
    container, proxy = counted
    pings = container.pings
    # Warm up: connections opened, dialect initialised, statements prepared.
    for steps in (1, 1, 2, 2):
        op = await pings.create_ping(message="warm", steps=steps)
        await pings.run_ping(op.id, worker="w")

    submits, jobs = [], []
    for i in range(3):
        before = proxy.turns
        op = await pings.create_ping(message=f"count {i}")
        submits.append(proxy.turns - before)
        before = proxy.turns
        response = await pings.run_ping(op.id, worker="w")
        jobs.append(proxy.turns - before)
        assert response["reply"] == f"pong: count {i}"
        done = await container.operations.get(op.name)
        assert done.state == State.SUCCEEDED and done.attempt == 1

    assert jobs == [WORKER_ROUND_TRIPS_PER_PING] * 3, f"worker round trips per ping: {jobs}"
    assert submits == [SUBMIT_ROUND_TRIPS_PER_PING] * 3, f"round trips per submit: {submits}"

    stepped = []
    for i in range(2):
        op = await pings.create_ping(message=f"stepped {i}", steps=2)
        before = proxy.turns
        response = await pings.run_ping(op.id, worker="w")
        stepped.append(proxy.turns - before)
        assert response["reply"] == f"pong: stepped {i}"
    assert stepped == [WORKER_ROUND_TRIPS_PER_STEPPED_PING] * 2, f"stepped ping: {stepped}"


async def test_round_trips_per_operation_read(counted: tuple[Container, RoundTripCounter]) -> None:
    """GET of an operation is one statement; the list is one statement per domain schema
    (no BEGIN/ROLLBACK around single-statement reads)."""
    container, proxy = counted
    operations = container.operations
    op = await container.pings.create_ping(message="read me")
    for _ in range(2):  # warm up
        await operations.get(op.name)
        await operations.list([], page_size=50, after=None)

    before = proxy.turns
    assert (await operations.get(op.name)).id == op.id
    got = proxy.turns - before
    before = proxy.turns
    page = await operations.list([], page_size=50, after=None)
    listed = proxy.turns - before

    assert op.id in {o.id for o in page.operations}
    assert got == 1, f"round trips per operation GET: {got}"
    assert listed == len(operations.domains), f"round trips per list: {listed}"


async def _connections_opened_by_second_burst(
    settings: Settings, burst: int, *, reads: bool = False
) -> int:
    """Connections the engine opens for a second burst of ``burst`` concurrent submits (or
    operation reads)."""
    import asyncio

    from sqlalchemy import event

    registry = EngineRegistry(settings)
    try:
        container = Container(settings, registry)
        pings = container.pings
        read_me = await pings.create_ping(message="read me")
        opened: list[object] = []
        primary = registry.engine("platform")
        # Submits and GETs run on the by-key pool; count the primary's connections too.
        for engine in {primary, generic_plans_engine(primary)}:
            event.listen(engine.sync_engine, "connect", lambda conn, _: opened.append(conn))

        async def submit_burst() -> None:
            if reads:
                await asyncio.gather(
                    *(container.operations.get(read_me.name) for _ in range(burst))
                )
            else:
                await asyncio.gather(*(pings.create_ping(message="burst") for _ in range(burst)))

        await submit_burst()  # warm: the pool opens what a burst of this size needs
        opened.clear()
        await submit_burst()
        return len(opened)
    finally:
        await registry.dispose()


async def test_a_burst_of_api_concurrency_reuses_pooled_connections(settings: Settings) -> None:
    # 16 submits (or reads) in flight, the benchmark's HTTP concurrency, must not open and
    # close a connection per request once warm: each new connection costs the API a TLS probe,
    # a startup round trip and its statements prepared again. The control proves the count
    # sees churn: a pool smaller than the reads in flight opens connections again. (Submits
    # are group committed, one statement at a time, so they need one connection.)
    assert await _connections_opened_by_second_burst(settings, 16) == 0
    assert await _connections_opened_by_second_burst(settings, 16, reads=True) == 0
    small = settings.model_copy(update={"db_pool_size": 4})
    assert await _connections_opened_by_second_burst(small, 16, reads=True) > 0
