"""Helpers for the security tests: keys for other tenants/scopes, apps with other settings."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx

from app.config import Settings
from tests.conftest import create_api_key


async def new_key(
    settings: Settings, *, tenant: str = "default", scopes: tuple[str, ...] = ("*",), **kw: Any
) -> str:
    """A fresh key through the real keys service."""
    return await create_api_key(settings, tenant=tenant, scopes=scopes, **kw)


def bearer(key: str) -> dict[str, str]:
    """The Authorization header for ``key``."""
    return {"authorization": f"Bearer {key}"}


@contextlib.asynccontextmanager
async def api(
    settings: Settings, celery: Any = None, **security: Any
) -> AsyncIterator[tuple[Any, httpx.AsyncClient]]:
    """The real app with ``settings.security`` fields replaced, and an unauthenticated client."""
    from app.main import create_app

    changed = settings.model_copy(
        update={"security": settings.security.model_copy(update=security)}
    )
    app = create_app(changed, celery=celery)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://conveyor.test") as http:
            yield app, http
    finally:
        await app.state.container.registry.dispose()


def fill_path(path: str) -> str:
    """A concrete URL for a route template (every parameter a harmless placeholder)."""
    import re

    return re.sub(r"\{[^}]+\}", "platform.019a8f0e-7d1c-7b3e-9c55-3f1f9e0a1b2c", path)
