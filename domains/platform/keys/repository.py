"""Every query on the ``api_keys`` table lives here."""

from __future__ import annotations

import builtins
import dataclasses
import datetime as dt
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from domains.platform.keys.model import ApiKey
from domains.platform.tables import api_keys


class ApiKeyRepository(Protocol):
    """Storage of API keys."""

    async def add(self, key: ApiKey) -> None:
        """Inserts a key."""

    async def by_prefix(self, prefix: str) -> ApiKey | None:
        """Loads the key with ``prefix``."""

    async def list(self, tenant: str | None) -> builtins.list[ApiKey]:
        """Lists keys (of ``tenant`` only, when given), oldest first."""

    async def revoke(self, prefix: str, now: dt.datetime) -> bool:
        """Marks a key revoked; returns whether a key with that prefix exists."""


def _from_row(row: Any) -> ApiKey:
    return ApiKey(
        id=row["id"],
        prefix=row["prefix"],
        secret_hash=row["secret_hash"],
        tenant=row["tenant"],
        name=row["name"],
        scopes=tuple(row["scopes"]),
        create_time=row["create_time"],
        expire_time=row["expire_time"],
        revoke_time=row["revoke_time"],
    )


class SqlApiKeyRepository:
    """API keys in the ``platform`` schema."""

    def __init__(self, session: AsyncSession) -> None:
        """Binds the repository.

        Args:
            session: The unit of work's session.
        """
        self._session = session

    async def add(self, key: ApiKey) -> None:
        """Inserts ``key``.

        Args:
            key: A new key.
        """
        row = dataclasses.asdict(key)
        row["scopes"] = list(key.scopes)
        await self._session.execute(sa.insert(api_keys), row)

    async def by_prefix(self, prefix: str) -> ApiKey | None:
        """Loads the key with ``prefix``.

        Args:
            prefix: 12 hex digits.

        Returns:
            The key or ``None``.
        """
        query = sa.select(api_keys).where(api_keys.c.prefix == prefix)
        row = (await self._session.execute(query)).mappings().first()
        return _from_row(row) if row else None

    async def list(self, tenant: str | None) -> builtins.list[ApiKey]:
        """Lists keys, oldest first.

        Args:
            tenant: Only this tenant's keys; ``None`` for every tenant.

        Returns:
            The keys.
        """
        query = sa.select(api_keys).order_by(api_keys.c.id)
        if tenant is not None:
            query = query.where(api_keys.c.tenant == tenant)
        rows = (await self._session.execute(query)).mappings().all()
        return [_from_row(row) for row in rows]

    async def revoke(self, prefix: str, now: dt.datetime) -> bool:
        """Marks a key revoked (no-op if it already is).

        Args:
            prefix: The key's prefix.
            now: Revocation time.

        Returns:
            Whether a key with that prefix exists.
        """
        result = await self._session.execute(
            sa.update(api_keys)
            .where(api_keys.c.prefix == prefix)
            .values(revoke_time=sa.func.coalesce(api_keys.c.revoke_time, now))
            .returning(api_keys.c.id)
        )
        return result.first() is not None
