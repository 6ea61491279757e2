"""Integration: bulk writes through ``unnest`` (domains.shared.bulk) on the real PostgreSQL.

They must write exactly what a multi-row ``VALUES`` insert or one UPDATE per row writes (JSON
documents of every shape, NULLs, timestamps), in the given order, with one statement text for
any number of rows (so one prepared statement).
"""

from __future__ import annotations

import datetime as dt
import secrets
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.ext.asyncio import AsyncEngine

from domains.shared.bulk import insert_many, insert_statement, row_params, update_statement
from tests.support.ops import engine_with_tables

metadata = sa.MetaData()
items = sa.Table(
    f"bulk_items_{secrets.token_hex(3)}",
    metadata,
    sa.Column("id", sa.Uuid, primary_key=True),
    sa.Column("seq", sa.BigInteger, sa.Identity(), nullable=False),
    sa.Column("name", sa.Text),
    sa.Column("doc", pg.JSONB, nullable=False),
    sa.Column("extra", pg.JSONB),
    sa.Column("score", sa.Float),
    sa.Column("at", sa.DateTime(timezone=True)),
)
COLUMNS = ("id", "name", "doc", "extra", "score", "at")
NOW = dt.datetime(2026, 12, 7, 12, 0, tzinfo=dt.UTC)
# JSON shapes a per-column array must not flatten: arrays, nested arrays, scalars, null.
DOCS: list[Any] = [{"a": 1, "l": [1, "x"]}, [], [[1, 2], [3]], "text", 7, None, {"n": None}]


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    async with engine_with_tables(database_url, metadata) as eng:
        yield eng


def _rows(n: int) -> list[dict[str, Any]]:
    return [
        {
            "id": uuid.uuid4(),
            "name": None if i % 3 == 1 else f"item {i}",
            "doc": DOCS[i % len(DOCS)],
            "extra": None if i % 2 else {"i": i},
            "score": i / 2,
            "at": None if i % 4 == 3 else NOW + dt.timedelta(seconds=i),
        }
        for i in range(n)
    ]


async def _stored(engine: AsyncEngine) -> list[dict[str, Any]]:
    async with engine.connect() as conn:
        result = await conn.execute(sa.select(items).order_by(items.c.seq))
        return [{k: row[k] for k in COLUMNS} for row in result.mappings()]


async def _json_kinds(engine: AsyncEngine) -> list[tuple[str | None, str | None]]:
    # JSON null and SQL NULL both read back as None: tell them apart.
    async with engine.connect() as conn:
        kinds = sa.select(sa.func.jsonb_typeof(items.c.doc), sa.func.jsonb_typeof(items.c.extra))
        return [tuple(r) for r in await conn.execute(kinds.order_by(items.c.seq))]


async def test_insert_writes_what_a_values_insert_writes_in_order(engine: AsyncEngine) -> None:
    bulk, plain = _rows(14), _rows(14)
    async with engine.begin() as conn:
        await conn.execute(*insert_many(items, bulk))
    assert await _stored(engine) == bulk
    kinds = await _json_kinds(engine)
    assert ("null", "null") in kinds  # None is JSON null, as SQLAlchemy's JSON type binds it
    async with engine.begin() as conn:
        await conn.execute(sa.delete(items))
        await conn.execute(sa.insert(items).values(plain))
    assert [{**r, "id": None} for r in await _stored(engine)] == [{**r, "id": None} for r in plain]
    assert await _json_kinds(engine) == kinds


async def test_one_statement_text_for_any_number_of_rows(engine: AsyncEngine) -> None:
    seen: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(statement)

    sa.event.listen(engine.sync_engine, "before_cursor_execute", record)
    try:
        for n in (1, 3, 40):
            async with engine.begin() as conn:
                await conn.execute(*insert_many(items, _rows(n)))
    finally:
        sa.event.remove(engine.sync_engine, "before_cursor_execute", record)
    assert len(seen) == 3 and len(set(seen)) == 1, seen
    assert "unnest" in seen[0]
    assert len(await _stored(engine)) == 44


async def test_insert_on_conflict_skips_existing_keys(engine: AsyncEngine) -> None:
    first = _rows(3)
    async with engine.begin() as conn:
        await conn.execute(*insert_many(items, first[:2]))
    statement = (
        insert_statement(items, COLUMNS)
        .on_conflict_do_nothing(index_elements=["id"])
        .returning(items.c.id)
    )
    changed = [{**first[0], "name": "changed"}, *first[1:]]
    async with engine.begin() as conn:
        inserted = (await conn.execute(statement, row_params(items, COLUMNS, changed))).scalars()
        assert list(inserted) == [first[2]["id"]]
    assert await _stored(engine) == first


async def test_update_sets_each_row_its_own_values(engine: AsyncEngine) -> None:
    rows = _rows(6)
    async with engine.begin() as conn:
        await conn.execute(*insert_many(items, rows))
    changes = [
        {"id": rows[4]["id"], "name": "four", "doc": [1, [2]], "at": None},
        {"id": rows[1]["id"], "name": None, "doc": {"one": 1}, "at": NOW},
    ]
    async with engine.begin() as conn:
        result = await conn.execute(
            update_statement(items, "id", ("name", "doc", "at")),
            row_params(items, ("id", "name", "doc", "at"), changes),
        )
        assert result.rowcount == 2
    expected = [dict(r) for r in rows]
    expected[4].update(name="four", doc=[1, [2]], at=None)
    expected[1].update(name=None, doc={"one": 1}, at=NOW)
    assert await _stored(engine) == expected
