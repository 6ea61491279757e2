"""Alembic environment shared by every domain: migrates one schema per run.

The domain and URL come from ``config.attributes`` (set by :mod:`app.db.migrate`); the version
table lives in the domain's schema, so each schema has its own history.
"""

from __future__ import annotations

import asyncio
import zlib

import sqlalchemy as sa
from alembic import context
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

config = context.config
domain: str = config.attributes["domain"]
url: str = config.attributes["url"]


def _run(connection: Connection) -> None:
    # Serialise concurrent `conveyor migrate` runs (compose one-shot + `conveyor up`).
    connection.execute(
        sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": zlib.crc32(f"migrate:{domain}".encode())}
    )
    connection.execute(sa.text(f'CREATE SCHEMA IF NOT EXISTS "{domain}"'))
    context.configure(
        connection=connection,
        version_table_schema=domain,
        version_table="alembic_version",
        transaction_per_migration=False,
    )
    with context.begin_transaction():
        context.run_migrations()
    connection.commit()


async def _main() -> None:
    engine = create_async_engine(url, poolclass=NullPool)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run)
    finally:
        await engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline (--sql) migrations are not supported; run `conveyor migrate`")
asyncio.run(_main())
