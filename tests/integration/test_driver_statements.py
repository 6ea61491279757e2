"""Integration: hot-path statements run on the driver (domains.shared.driver) exactly as
SQLAlchemy's own ``execute`` runs them, against the real PostgreSQL.

Each test compares with ``AsyncConnection.execute`` or checks a value that a wrong shortcut
would get wrong: a cached form reused with another statement's literals, a numeric column
without its processor, an IN list of another length, a driver error not translated.
"""

from __future__ import annotations

import decimal
import secrets
import uuid
from collections.abc import AsyncIterator

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from domains.shared import driver
from domains.shared.driver import DriverConnection, driver_supported
from tests.support.ops import engine_with_tables

metadata = sa.MetaData()
items = sa.Table(
    f"driver_items_{secrets.token_hex(3)}",
    metadata,
    sa.Column("id", sa.Uuid, primary_key=True),
    sa.Column("name", sa.Text, nullable=False, unique=True),
    sa.Column("price", sa.Numeric(10, 2), nullable=False),
    sa.Column("doc", pg.JSONB, nullable=False),
    sa.Column("at", sa.DateTime(timezone=True), nullable=True),
)


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    async with engine_with_tables(database_url, metadata) as eng:
        yield eng


async def _insert(engine: AsyncEngine, name: str, price: str) -> uuid.UUID:
    new_id = uuid.uuid4()
    async with DriverConnection(engine) as conn:
        result = await conn.execute(
            sa.insert(items),
            {"id": new_id, "name": name, "price": decimal.Decimal(price), "doc": {"n": name}},
        )
    assert result.rowcount == 1
    return new_id


async def test_engine_is_driver_capable(engine: AsyncEngine) -> None:
    # If SQLAlchemy's internals moved, the hot path silently falls back: this says so.
    assert driver_supported(engine)


async def test_rows_and_types_match_sqlalchemy(engine: AsyncEngine) -> None:
    await _insert(engine, "a", "1.50")
    query = sa.select(items).where(items.c.name == "a")
    async with DriverConnection(engine) as conn:
        fast = (await conn.execute(query)).mappings().first()
    async with engine.connect() as conn:
        slow = (await conn.execute(query)).mappings().first()
    assert fast == dict(slow)
    assert fast["price"] == decimal.Decimal("1.50") and isinstance(fast["price"], decimal.Decimal)
    assert fast["doc"] == {"n": "a"}


async def test_equal_statements_with_other_literals_get_their_own_values(
    engine: AsyncEngine,
) -> None:
    # Statements built per call share one compiled form (same cache key): each must still run
    # with its own literal, not the one the form was compiled from.
    first, second = await _insert(engine, "x", "1"), await _insert(engine, "y", "2")
    async with DriverConnection(engine) as conn:
        for wanted in (first, second, first):
            row = (await conn.execute(sa.select(items.c.id).where(items.c.id == wanted))).first()
            assert row.id == wanted


async def test_in_lists_of_different_lengths(engine: AsyncEngine) -> None:
    ids = [await _insert(engine, f"n{i}", "1") for i in range(3)]
    async with DriverConnection(engine) as conn:
        for size in (1, 3, 2):
            query = sa.select(items.c.id).where(items.c.id.in_(ids[:size]))
            assert sorted((await conn.execute(query)).scalars()) == sorted(ids[:size])


async def test_a_statement_run_again_takes_its_plan_with_each_runs_values(
    engine: AsyncEngine,
) -> None:
    # The first execution goes through construct_params, the later ones through the plan made
    # on the second (a literal of the statement's own, a JSON value processed once).
    ids = [await _insert(engine, f"r{i}", "1") for i in range(3)]
    statement = (
        sa.update(items)
        .where(items.c.id == sa.bindparam("k", type_=sa.Uuid))
        .values(doc={"fixed": True}, name=sa.bindparam("new_name", type_=sa.Text))
        .returning(items.c.name, items.c.doc)
    )
    async with DriverConnection(engine) as conn:
        for i, key in enumerate(ids):
            row = (await conn.execute(statement, {"k": key, "new_name": f"renamed {i}"})).one()
            assert (row.name, row.doc) == (f"renamed {i}", {"fixed": True})
    seen = driver._BY_OBJECT[(id(statement), ("k", "new_name"))]
    assert seen.statement is statement and seen.planned and seen.plan is not None


async def test_update_rowcount_and_returning(engine: AsyncEngine) -> None:
    await _insert(engine, "p", "1")
    await _insert(engine, "q", "1")
    async with DriverConnection(engine) as conn:
        result = await conn.execute(sa.update(items).values(price=decimal.Decimal("3")))
        assert result.rowcount == 2
        returned = await conn.execute(
            sa.update(items).where(items.c.name == "p").values(doc={"v": 2}).returning(items.c.doc)
        )
        assert returned.scalar_one() == {"v": 2}


async def test_unique_violation_is_sqlalchemy_integrity_error(engine: AsyncEngine) -> None:
    await _insert(engine, "dup", "1")
    with pytest.raises(IntegrityError) as info:
        await _insert(engine, "dup", "1")
    assert "duplicate key" in str(info.value.orig)
    # The connection went back to the pool usable: the next statement runs.
    await _insert(engine, "after", "1")


async def test_killed_backend_is_an_invalidated_connection(engine: AsyncEngine) -> None:
    await _insert(engine, "k", "1")
    async with DriverConnection(engine) as conn:
        pid = (await conn.execute(sa.select(sa.func.pg_backend_pid()))).scalar()
        async with engine.connect() as other:
            await other.execute(sa.text("SELECT pg_terminate_backend(:p)"), {"p": pid})
            await other.commit()
        with pytest.raises(DBAPIError) as info:
            await conn.execute(sa.select(items.c.id))
    assert info.value.connection_invalidated
    # The dead connection was discarded, not pooled: a new checkout works.
    async with DriverConnection(engine) as conn:
        assert (await conn.execute(sa.select(sa.func.count()).select_from(items))).scalar() == 1
