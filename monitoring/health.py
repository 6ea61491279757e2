"""Readiness checks: every database the domains use, and the broker."""

from __future__ import annotations

import asyncio
from typing import Any

import sqlalchemy as sa
from celery import Celery

from app.config import DOMAINS
from app.db import EngineRegistry


async def check_databases(registry: EngineRegistry, timeout: float = 2.0) -> dict[str, str]:
    """Runs ``SELECT 1`` on each distinct primary database.

    Args:
        registry: Engines.
        timeout: Seconds per check.

    Returns:
        ``{url-label: "ok" | error}``.
    """
    results: dict[str, str] = {}
    seen: set[str] = set()
    for domain in DOMAINS:
        url = registry.url(domain)
        if url in seen:
            continue
        seen.add(url)
        label = f"database:{domain}" if len(seen) > 1 else "database"
        try:
            async with asyncio.timeout(timeout):
                async with registry.engine(domain).connect() as conn:
                    await conn.execute(sa.text("SELECT 1"))
            results[label] = "ok"
        except Exception as exc:
            results[label] = f"{type(exc).__name__}: {exc}"[:300]
    return results


def _check_broker(celery: Celery, timeout: float) -> str:
    with celery.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, timeout=timeout)
    return "ok"


async def check_broker(celery: Celery, timeout: float = 2.0) -> str:
    """Opens a broker connection.

    Args:
        celery: The Celery app.
        timeout: Seconds.

    Returns:
        ``"ok"`` or the error.
    """
    try:
        async with asyncio.timeout(timeout + 1):
            return await asyncio.to_thread(_check_broker, celery, timeout)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"[:300]


async def readiness(registry: EngineRegistry, celery: Celery) -> tuple[bool, dict[str, Any]]:
    """Checks databases and broker.

    Args:
        registry: Engines.
        celery: The Celery app.

    Returns:
        ``(ready, checks)``.
    """
    checks: dict[str, Any] = await check_databases(registry)
    checks["broker"] = await check_broker(celery)
    return all(v == "ok" for v in checks.values()), checks
