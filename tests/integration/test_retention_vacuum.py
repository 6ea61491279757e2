"""The purge's VACUUM: the space of purged rows is reused even where autovacuum is off (the
test server runs without it, as the soak that found the growth did)."""

from __future__ import annotations

import asyncio
import time

from app.db import EngineRegistry
from tests.support.ops import query

# The outbox is partitioned by day (UUIDv7 ids): the churned rows' partition is looked up
# when they are written (a name computed at import time was yesterday's after midnight).
DEAD = (
    "SELECT n_dead_tup, vacuum_count FROM pg_stat_user_tables WHERE relid = 'platform.{}'::regclass"
)
UUID7 = (
    "(lpad(to_hex((extract(epoch FROM now()) * 1000)::bigint), 12, '0') || '7'"
    " || substr(md5(i::text), 1, 3) || '8' || substr(md5(i::text), 4, 15))::uuid"
)


async def _stats(database_url: str, partition: str) -> tuple[int, int]:
    [(dead, vacuums)] = await query(database_url, DEAD.format(partition))
    return int(dead), int(vacuums)


async def test_tables_left_with_many_dead_rows_are_vacuumed(settings, database_url):
    await query(
        database_url,
        "INSERT INTO platform.outbox (id, task_name, queue, task_id, created_time, available_time,"
        f" sent_time) SELECT {UUID7}, 'platform.sweep', 'platform', 'churn-' || i,"
        " now(), now(), now() FROM generate_series(1, 3000) AS i",
    )
    [(partition,)] = await query(
        database_url,
        "SELECT DISTINCT c.relname FROM platform.outbox o JOIN pg_class c ON c.oid = o.tableoid"
        " WHERE o.task_id LIKE 'churn-%'",
    )
    await query(database_url, "DELETE FROM platform.outbox WHERE task_id LIKE 'churn-%'")
    # Positive control: the deletes reached the statistics (a closed backend flushes them).
    deadline = time.monotonic() + 20
    dead, vacuums = await _stats(database_url, partition)
    while dead < 3000 and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
        dead, vacuums = await _stats(database_url, partition)
    assert dead >= 3000, dead

    registry = EngineRegistry(settings)
    try:
        vacuumed = await registry.vacuum_churned()
    finally:
        await registry.dispose()

    assert f"platform.{partition}" in vacuumed
    deadline = time.monotonic() + 20
    after = await _stats(database_url, partition)
    while after[1] == vacuums and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
        after = await _stats(database_url, partition)
    assert after[1] == vacuums + 1 and after[0] < 3000, after


async def test_a_table_with_few_dead_rows_is_left_alone(settings, database_url):
    registry = EngineRegistry(settings)
    try:
        vacuumed = await registry.vacuum_churned(min_dead_rows=10**9)
    finally:
        await registry.dispose()
    assert vacuumed == []
