"""Service level: time partitions of operations and outbox, and retention by dropping them
(issue #22), on the real database."""

from __future__ import annotations

import asyncio
import datetime as dt
import secrets
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from app.config import Settings
from app.container import Container
from app.db import EngineRegistry, migrate
from domains.shared import partitions
from domains.shared.clock import utcnow
from domains.shared.errors import NotFound
from tests.support import services


@pytest.fixture(scope="module")
def own_settings(admin_url: str, settings: Settings) -> Iterator[Settings]:
    """A database of this module's own: its tests drop and make partitions. Its (empty)
    legacy partitions are dropped, so that days before today can have partitions."""
    name = f"conveyor_test_parts_{secrets.token_hex(4)}"
    url = services.create_database(admin_url, name)
    try:
        own = settings.model_copy(update={"database_url": url})
        migrate.upgrade(own)

        async def drop_legacy() -> None:
            engine = create_async_engine(url)
            async with engine.begin() as conn:
                for table in ("operations", "outbox"):
                    legacy = partitions.legacy_partition(table)
                    await conn.execute(sa.text(f'DROP TABLE platform."{legacy}"'))
            await engine.dispose()

        asyncio.run(drop_legacy())
        yield own
    finally:
        services.drop_database(admin_url, name)


@pytest.fixture
async def container(own_settings: Settings) -> AsyncIterator[Container]:
    registry = EngineRegistry(own_settings)
    async with registry.engine("platform").begin() as conn:
        await conn.execute(
            sa.text(
                "TRUNCATE platform.operations, platform.outbox, platform.operation_requests,"
                " platform.pings"
            )
        )
    yield Container(own_settings, registry)
    await registry.dispose()


async def execute(container: Container, sql: str, **params):
    async with container.registry.engine("platform").begin() as conn:
        result = await conn.execute(sa.text(sql), params)
        return result.mappings().all() if result.returns_rows else []


async def tables(container: Container) -> set[str]:
    rows = await execute(container, "SELECT tablename FROM pg_tables WHERE schemaname = 'platform'")
    return {row["tablename"] for row in rows}


@pytest.fixture
async def old_days(container: Container) -> AsyncIterator[list[dt.date]]:
    """Two day partitions 20 and 19 days back (as if made back then), dropped at the end."""
    today = utcnow().date()
    days = [today - dt.timedelta(days=20), today - dt.timedelta(days=19)]
    for day in days:
        for table in ("operations", "outbox"):
            await execute(container, partitions.create_day_partition_sql("platform", table, day))
    yield days
    for day in days:
        for table in ("operations", "outbox"):
            name = partitions.day_partition(table, day)
            await execute(container, f'DROP TABLE IF EXISTS platform."{name}"')


def id_on(day: dt.date, n: int) -> uuid.UUID:
    """A UUIDv7-shaped id created on ``day`` (n apart)."""
    base = partitions.id_at(partitions.day_start(day) + dt.timedelta(hours=1))
    return uuid.UUID(int=base.int | (0x7 << 76) | (0x8 << 60) | n)


async def move(container: Container, operation_id: uuid.UUID, new_id: uuid.UUID, **cols) -> None:
    """Moves an operation (and its outbox rows) to another id: the row goes to that id's
    partition."""
    sets = "".join(f", {column} = :{column}" for column in cols)
    await execute(
        container,
        f"UPDATE platform.operations SET id = :new{sets} WHERE id = :id",
        id=operation_id,
        new=new_id,
        **cols,
    )
    await execute(
        container,
        "UPDATE platform.outbox SET id = :new, operation_id = :new, sent_time = :sent"
        " WHERE operation_id = :id",
        id=operation_id,
        new=new_id,
        sent=cols.get("end_time"),
    )
    await execute(
        container,
        "UPDATE platform.operation_requests SET operation_id = :new, create_time = :created"
        " WHERE operation_id = :id",
        id=operation_id,
        new=new_id,
        created=dt.datetime.fromtimestamp((new_id.int >> 80) / 1000, dt.UTC),
    )


async def test_new_operations_and_outbox_rows_land_in_todays_partition(container):
    op = await container.pings.create_ping(message="now")
    today = f"p{utcnow().date():%Y%m%d}"
    [row] = await execute(
        container,
        "SELECT tableoid::regclass::text AS part FROM platform.operations WHERE id = :id",
        id=op.id,
    )
    assert row["part"] == f"platform.operations_{today}"
    [row] = await execute(
        container,
        "SELECT tableoid::regclass::text AS part FROM platform.outbox WHERE operation_id = :id",
        id=op.id,
    )
    assert row["part"] == f"platform.outbox_{today}"


async def test_purge_drops_whole_expired_days_and_keeps_a_day_with_live_rows(container, old_days):
    gone_day, kept_day = old_days
    ended = utcnow() - dt.timedelta(days=10)
    # Day 1: two operations, both done long ago (one created with a request id).
    done = [
        await container.pings.create_ping(message="a"),
        await container.pings.create_ping(message="b", request_id="old-request"),
    ]
    for n, op in enumerate(done):
        await container.operations.cancel(op.name)
        await move(container, op.id, id_on(gone_day, n), end_time=ended)
    # Day 2: one done long ago, one still pending: the day must stay.
    old = await container.pings.create_ping(message="c")
    await container.operations.cancel(old.name)
    await move(container, old.id, id_on(kept_day, 1), end_time=ended)
    pending = await container.pings.create_ping(message="d")
    await move(container, pending.id, id_on(kept_day, 2))
    assert partitions.day_partition("operations", gone_day) in await tables(container)

    cutoff = utcnow() - dt.timedelta(days=1)
    deleted = await container.operations.purge_done(cutoff)
    counts = await container.operations.purge_messages(sent_before=cutoff, handled_before=cutoff)

    names = await tables(container)
    assert partitions.day_partition("operations", gone_day) not in names
    assert partitions.day_partition("outbox", gone_day) not in names
    # The day holding a pending operation (and its unsent outbox row) stays; its old done
    # operation is deleted row by row.
    assert partitions.day_partition("operations", kept_day) in names
    assert partitions.day_partition("outbox", kept_day) in names
    assert deleted == 3
    assert counts["outbox"] >= 3
    pending_id = id_on(kept_day, 2)
    rows = await execute(
        container, "SELECT id, state FROM platform.operations WHERE id = :id", id=pending_id
    )
    assert [row["state"] for row in rows] == ["PENDING"]
    for op_id in (id_on(gone_day, 0), id_on(gone_day, 1), id_on(kept_day, 1)):
        with pytest.raises(NotFound):
            await container.operations.get(f"operations/platform.{op_id}")
    # The dropped operation's request id is freed with it.
    assert await execute(container, "SELECT * FROM platform.operation_requests") == []


async def test_ensure_makes_days_ahead_but_leaves_a_day_already_in_the_default_partition(container):
    today = utcnow().date()
    late = today + dt.timedelta(days=10)
    ahead = today + dt.timedelta(days=11)
    # A row of day `late` arrives before its partition exists: the DEFAULT one takes it.
    op = await container.pings.create_ping(message="early bird")
    await move(container, op.id, id_on(late, 1))
    try:
        async with container.registry.sessionmaker("platform")() as session:
            made = await partitions.ensure_partitions(
                session, "platform", "operations", late, days_ahead=1
            )
            await session.commit()
        assert made == [partitions.day_partition("operations", ahead)]
        [row] = await execute(
            container,
            "SELECT tableoid::regclass::text AS part FROM platform.operations WHERE id = :id",
            id=id_on(late, 1),
        )
        assert row["part"] == "platform.operations_p_default"
    finally:
        await execute(
            container,
            f'DROP TABLE IF EXISTS platform."{partitions.day_partition("operations", ahead)}"',
        )


async def test_request_ids_stay_unique_per_tenant_across_partitions(container):
    first = await container.pings.create_ping(message="x", request_id="same")
    again = await container.pings.create_ping(message="x", request_id="same")
    assert again.id == first.id
    rows = await execute(
        container, "SELECT operation_id FROM platform.operation_requests WHERE request_id = 'same'"
    )
    assert [row["operation_id"] for row in rows] == [first.id]
