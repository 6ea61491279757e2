"""The relay's idle probe against the real database: it must see exactly the rows a claim
would take (a probe that misses a due row would leave it unpublished)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from app.container import DOMAIN_TABLES
from app.db import EngineRegistry
from domains.shared.driver import autocommit_connection
from domains.shared.outbox import SqlOutboxRepository
from tests.support.ops import query

GRACE = dt.timedelta(seconds=2)


async def _insert(database_url: str, task_id: str, created: str, available: str, sent: str) -> None:
    await query(
        database_url,
        "INSERT INTO platform.outbox (id, task_name, queue, task_id, created_time,"
        f" available_time, sent_time) VALUES (gen_random_uuid(), 'platform.sweep', 'platform',"
        f" '{task_id}', {created}, {available}, {sent})",
    )


async def _probe_and_claim(registry: EngineRegistry) -> tuple[bool, list[str]]:
    maker = registry.sessionmaker("platform")
    table = DOMAIN_TABLES["platform"].outbox
    async with autocommit_connection(maker.kw["bind"]) as conn:
        due = await SqlOutboxRepository(conn, table).has_due(GRACE)
    async with maker() as session, session.begin():
        claimed = await SqlOutboxRepository(session, table).claim(limit=100, grace=GRACE)
        await session.rollback()
    return due, [m.task_id for m in claimed]


async def test_has_due_sees_exactly_what_the_relay_would_claim(
    settings: Any, clean_db: None, database_url: str
) -> None:
    registry = EngineRegistry(settings)
    try:
        past = "now() - interval '10 seconds'"
        # Left to the fast path (too young), delayed, already sent: nothing is due.
        await _insert(database_url, "young", "now()", "now()", "NULL")
        await _insert(database_url, "delayed", past, "now() + interval '1 hour'", "NULL")
        await _insert(database_url, "sent", past, past, "now()")
        assert await _probe_and_claim(registry) == (False, [])
        # The positive control: a row the fast path left behind.
        await _insert(database_url, "left-behind", past, past, "NULL")
        assert await _probe_and_claim(registry) == (True, ["left-behind"])
    finally:
        await registry.dispose()
