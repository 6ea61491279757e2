"""Readiness checks: every database the domains use, their migrations, and the broker."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import sqlalchemy as sa
from celery import Celery

from app.config import DOMAINS
from app.db import EngineRegistry, migrate


def _domains_by_database(registry: EngineRegistry) -> dict[str, list[str]]:
    """Groups the domains by primary URL.

    Keys are the check labels: ``database`` for the first URL, ``database:<domain>`` after.
    """
    groups: dict[str, list[str]] = {}
    labels: dict[str, str] = {}
    for domain in DOMAINS:
        url = registry.url(domain)
        if url not in labels:
            labels[url] = f"database:{domain}" if labels else "database"
        groups.setdefault(labels[url], []).append(domain)
    return groups


async def _check_database(
    registry: EngineRegistry, domains: list[str], timeout: float
) -> tuple[str, dict[str, tuple[bool, str]]]:
    """``SELECT 1`` then each domain's migration state, on one connection of that database."""
    migrations: dict[str, tuple[bool, str]] = {}
    reached = False
    try:
        async with asyncio.timeout(timeout):
            async with registry.engine(domains[0]).connect() as conn:
                await conn.execute(sa.text("SELECT 1"))
                reached = True
                for domain in domains:
                    migrations[domain] = await migrate.check_at_head(conn, domain)
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"[:300]
        if not reached:
            return error, {d: (False, "database unreachable") for d in domains}
        for domain in domains:
            migrations.setdefault(domain, (False, f"not checked: {error}"))
    return "ok", migrations


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


@dataclasses.dataclass
class Readiness:
    """What ``/readyz`` reports.

    Attributes:
        checks: ``{"database"[:<domain>]: ..., "broker": ...}``, each ``"ok"`` or the error.
        migrations: ``{domain: "ok" | what is wrong}`` (schema at the scripts' head or not).
        ready: Whether every check passed and every schema is at head (or ahead).
    """

    checks: dict[str, Any]
    migrations: dict[str, str]
    ready: bool

    def problems(self) -> list[str]:
        """Returns one line per failed check.

        Returns:
            ``"<check>: <error>"`` lines, migrations as ``"migrations <domain>: ..."``.
        """
        lines = [f"{k}: {v}" for k, v in self.checks.items() if v != "ok"]
        unreachable = "database unreachable"
        lines += [
            f"migrations {d}: {v}"
            for d, v in self.migrations.items()
            if v != "ok" and not v.startswith("ahead") and v != unreachable
        ]
        return lines


async def check_readiness(
    registry: EngineRegistry, celery: Celery, timeout: float = 2.0
) -> Readiness:
    """Checks every database (and that its domains' schemas are migrated to head) and the broker.

    Args:
        registry: Engines.
        celery: The Celery app.
        timeout: Seconds per database and for the broker.

    Returns:
        The report.
    """
    checks: dict[str, Any] = {}
    migrations: dict[str, tuple[bool, str]] = {}
    for label, domains in _domains_by_database(registry).items():
        checks[label], found = await _check_database(registry, domains, timeout)
        migrations.update(found)
    checks["broker"] = await check_broker(celery, timeout)
    ready = all(v == "ok" for v in checks.values()) and all(ok for ok, _ in migrations.values())
    return Readiness(
        checks=checks,
        migrations={d: detail for d, (_, detail) in migrations.items()},
        ready=ready,
    )


async def readiness(registry: EngineRegistry, celery: Celery) -> tuple[bool, dict[str, Any]]:
    """Checks databases, migrations and broker (see :func:`check_readiness`).

    Args:
        registry: Engines.
        celery: The Celery app.

    Returns:
        ``(ready, checks)``.
    """
    report = await check_readiness(registry, celery)
    return report.ready, report.checks
