"""Helpers for tests that watch operations through the API and the database."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from domains.shared.outbox import OutboxMessage


def op_path(name: str) -> str:
    """``operations/platform.<id>`` -> ``platform.<id>``."""
    return name.removeprefix("operations/")


async def get_op(client: httpx.AsyncClient, name: str) -> dict[str, Any]:
    response = await client.get(f"/v1/operations/{op_path(name)}")
    assert response.status_code == 200, response.text
    return response.json()


async def wait_state(
    client: httpx.AsyncClient, name: str, states: set[str], timeout: float = 60
) -> dict[str, Any]:
    """Polls until the operation is in one of ``states``."""
    deadline = time.monotonic() + timeout
    op: dict[str, Any] = {}
    while time.monotonic() < deadline:
        op = await get_op(client, name)
        if op["metadata"]["state"] in states:
            return op
        await asyncio.sleep(0.1)
    raise AssertionError(f"{name} never reached {states}: {op}")


async def query(database_url: str, sql: str, **params: Any) -> list[Any]:
    """Runs one SQL statement on a fresh engine and returns the rows."""
    engine = create_async_engine(database_url)
    try:
        async with engine.begin() as conn:
            result = await conn.execute(sa.text(sql), params)
            return list(result.all()) if result.returns_rows else []
    finally:
        await engine.dispose()


async def written_outbox_row(database_url: str, queue: str) -> OutboxMessage:
    """An outbox row for ``platform.sweep`` on ``queue``, as a commit wrote it, and its message.

    Args:
        database_url: The test database.
        queue: The queue (a private one nothing consumes).

    Returns:
        The row's message.
    """
    message = OutboxMessage(task_name="platform.sweep", queue=queue, args=[])
    await query(
        database_url,
        "INSERT INTO platform.outbox (id, task_name, queue, task_id, created_time,"
        " available_time) VALUES (:id, 'platform.sweep', :q, :t, now(), now())",
        id=message.id,
        q=queue,
        t=message.task_id,
    )
    return message


async def wait_done(client: httpx.AsyncClient, name: str, timeout: float = 30) -> dict[str, Any]:
    """Long-polls ``:wait`` (5 s at a time) until the operation is done."""
    deadline = time.monotonic() + timeout
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        response = await client.post(f"/v1/operations/{op_path(name)}:wait", json={"timeout": 5})
        assert response.status_code == 200, response.text
        body = response.json()
        if body["done"]:
            return body
    raise AssertionError(f"{name} not done within {timeout}s: {body}")


@contextlib.asynccontextmanager
async def engine_with_tables(
    database_url: str, metadata: sa.MetaData
) -> AsyncIterator[AsyncEngine]:
    """An asyncpg engine on ``database_url`` with ``metadata``'s tables, dropped afterwards."""
    engine = create_async_engine(database_url.replace("postgresql://", "postgresql+asyncpg://"))
    async with engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
    try:
        yield engine
    finally:
        async with engine.begin() as conn:
            await conn.run_sync(metadata.drop_all)
        await engine.dispose()
