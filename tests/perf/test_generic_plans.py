"""The worker's by-key hot statements run with generic plans (PostgreSQL's own counters).

``platform.operations`` is partitioned: PostgreSQL costs a prepared statement's generic plan over
every partition, so in its default ``plan_cache_mode`` it plans the claim/finish CTE again on
every execution (custom plans), which costs it more than running the statement. The engine
registry gives each primary engine a companion with ``force_generic_plan`` and the hot path's
by-key statements run there (``autocommit(..., by_key=True)``). ``pg_prepared_statements``
counts, per connection, how often each statement was planned which way.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import AsyncIterator
from typing import Any

import pytest
import sqlalchemy as sa

from app.config import Settings
from app.container import Container
from app.db import EngineRegistry
from app.runtime.outbox import OutboxPublisher
from domains.shared.driver import autocommit_connection
from tests.support.ops import query, written_outbox_row

HOT_STATEMENTS = (
    " FROM pg_prepared_statements"
    " WHERE (statement LIKE '%UPDATE platform.operations SET%'"
    " OR statement LIKE '%INSERT INTO platform.operations%'"
    " OR statement LIKE 'SELECT%FROM platform.operations%')"
    " AND statement NOT LIKE '%pg_prepared_statements%'"
)
"""The hot path's statements on operations this connection prepared (not this query itself)."""
PLANS = sa.text("SELECT statement, generic_plans, custom_plans" + HOT_STATEMENTS).columns(
    sa.column("statement", sa.Text),
    sa.column("generic_plans", sa.BigInteger),
    sa.column("custom_plans", sa.BigInteger),
)
MODE = sa.text("SHOW plan_cache_mode").columns(sa.column("plan_cache_mode", sa.Text))


async def run_pings(container: Container) -> None:
    pings = container.pings
    for i in range(12):  # instant: one CTE (run_instant)
        op = await pings.create_ping(message=f"instant {i}")
        assert (await pings.run_ping(op.id, worker="w"))["reply"] == f"pong: instant {i}"
    for i in range(8):  # two steps: the fused claim with its target, then the fused finish
        op = await pings.create_ping(message=f"stepped {i}", steps=2)
        assert (await pings.run_ping(op.id, worker="w"))["reply"] == f"pong: stepped {i}"
    for i in range(20):  # clients poll their operation: GET by key
        op = await pings.create_ping(message=f"polled {i}")
        assert not (await container.operations.get(op.name, tenant="default")).done


async def plans(registry: EngineRegistry, *, generic: bool) -> list[Any]:
    # Sequential work used one connection of the pool: the same one answers here.
    async with autocommit_connection(registry.engine("platform"), generic_plans=generic) as conn:
        plan_mode = (await conn.execute(MODE)).scalar_one()
        return [plan_mode, (await conn.execute(PLANS)).all()]


@pytest.fixture
async def registry(settings: Settings) -> AsyncIterator[EngineRegistry]:
    registry = EngineRegistry(settings)
    try:
        yield registry
    finally:
        await registry.dispose()


async def test_claim_and_finish_statements_are_planned_once(
    settings: Settings, registry: EngineRegistry
) -> None:
    await run_pings(Container(settings, registry))
    mode, rows = await plans(registry, generic=True)
    assert mode == "force_generic_plan"
    updates = [r for r in rows if "UPDATE platform.operations SET" in r[0]]
    reads = [r for r in rows if r[0].startswith("SELECT")]
    inserts = [r for r in rows if r not in updates and r not in reads]
    # The instant CTE, the claim with its target and the fused finish all ran here...
    assert len(updates) >= 3, rows
    assert sum(generic for _, generic, _ in updates) >= 12 + 8 + 8, rows
    # ...and the submits' fused INSERT (ping, operation and outbox row in one statement).
    assert inserts and sum(generic for _, generic, _ in inserts) >= 12 + 8, rows
    # ...and the GET of an operation, which clients poll.
    assert reads and sum(generic for _, generic, _ in reads) >= 20, rows
    assert all(custom == 0 for _, _, custom in rows), rows
    # Everything else (lists with LIMIT and filters) keeps value-aware plans.
    primary_mode, primary_rows = await plans(registry, generic=False)
    assert primary_mode == "auto"
    assert primary_rows == [], "by-key statements ran on the primary engine"


async def test_without_it_postgres_plans_them_on_every_execution(settings: Settings) -> None:
    # The control: why the companion exists. With the setting off the same statements run on
    # the primary engine, and PostgreSQL keeps choosing custom plans after its 5 trial runs.
    off = settings.model_copy(update={"db_generic_plans": False})
    registry = EngineRegistry(off)
    try:
        await run_pings(Container(off, registry))
        mode, rows = await plans(registry, generic=True)  # no companion: the primary answers
        assert mode == "auto"
        instant = [r for r in rows if "jsonb_build_object" in r[0]]
        assert instant and instant[0][2] >= 12 + 8 - 1, rows  # custom plans every time
    finally:
        await registry.dispose()


async def test_plans_made_on_empty_tables_still_use_the_keys(
    settings: Settings, registry: EngineRegistry
) -> None:
    # A generic plan is made once and kept while the tables grow: made on empty tables (a new
    # database, after a TRUNCATE, a new day's partition), a sequential scan in it would read
    # every row on each later claim. The hot statements, prepared on empty tables, are planned
    # again here on the same kind of connection: no sequential scan may be in their plans.
    engine = registry.engine("platform")
    async with engine.begin() as conn:
        await conn.execute(
            sa.text("TRUNCATE platform.pings, platform.operations, platform.outbox CASCADE")
        )
    await run_pings(Container(settings, registry))
    async with autocommit_connection(engine, generic_plans=True) as conn:
        raw = conn._fairy.driver_connection  # asyncpg: PREPARE and EXPLAIN as they are
        texts = [r["statement"] for r in await raw.fetch("SELECT statement" + HOT_STATEMENTS)]
        # The instant CTE, the claim with its target, the finish, the fused INSERT, the GET.
        assert len(texts) >= 5, texts
        for index, text in enumerate(texts):
            params = len(set(re.findall(r"\$(\d+)", text)))
            await raw.execute(f"PREPARE probe_{index} AS {text}")
            nulls = ", ".join(["NULL"] * params)
            plan = "\n".join(
                r[0] for r in await raw.fetch(f"EXPLAIN EXECUTE probe_{index}({nulls})")
            )
            await raw.execute(f"DEALLOCATE probe_{index}")
            assert "Seq Scan" not in plan, f"{text[:80]}...\n{plan}"


async def test_fast_path_marks_sent_with_generic_plans(
    settings: Settings, registry: EngineRegistry, database_url: str, redis_client: Any
) -> None:
    # The fast path's one UPDATE per batch (id = ANY) on the partitioned outbox.
    publisher = OutboxPublisher(registry, settings)
    queue = f"generic-plans-{secrets.token_hex(4)}"  # no worker consumes it
    try:
        for _ in range(8):
            message = await written_outbox_row(database_url, queue)
            await publisher.publish_now("platform", [message])
            await publisher.drain()
        assert redis_client.llen(queue) == 8
        sent = await query(
            database_url,
            "SELECT count(*) AS n FROM platform.outbox WHERE queue = :q AND sent_time IS NOT NULL",
            q=queue,
        )
        assert sent[0].n == 8
        async with autocommit_connection(registry.engine("platform"), generic_plans=True) as conn:
            raw = conn._fairy.driver_connection
            rows = await raw.fetch(
                "SELECT generic_plans, custom_plans FROM pg_prepared_statements"
                " WHERE statement LIKE 'UPDATE platform.outbox SET sent_time%'"
            )
        assert rows and sum(r["generic_plans"] for r in rows) >= 8, rows
        assert all(r["custom_plans"] == 0 for r in rows), rows
    finally:
        redis_client.delete(queue)
        await query(database_url, "DELETE FROM platform.outbox WHERE queue = :q", q=queue)
