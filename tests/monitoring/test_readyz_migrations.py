"""/readyz includes each domain schema's migrations at head."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator

import httpx
import pytest

from app.config import DOMAINS
from app.db import migrate
from app.main import create_app
from tests.support import services
from tests.support.ops import query


async def test_readyz_reports_every_schema_at_head(client):
    response = await client.get("/readyz")
    assert response.status_code == 200, response.text
    assert response.json()["migrations"] == dict.fromkeys(DOMAINS, "ok")


@pytest.fixture(scope="module")
def fresh_database(admin_url, settings) -> Iterator[str]:
    """A database of its own, migrated to head (the session database is never downgraded)."""
    name = f"conveyor_readyz_{secrets.token_hex(4)}"
    url = services.create_database(admin_url, name)
    migrate.upgrade(settings.model_copy(update={"database_url": url}))
    yield url
    services.drop_database(admin_url, name)


async def _readyz(settings, url: str) -> httpx.Response:
    app = create_app(settings.model_copy(update={"database_url": url}))
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            return await http.get("/readyz")
    finally:
        await app.state.container.registry.dispose()


async def test_readyz_is_503_naming_the_domain_whose_schema_is_behind(settings, fresh_database):
    fresh = settings.model_copy(update={"database_url": fresh_database})
    # Alembic's env runs its own event loop: off this one.
    await asyncio.to_thread(migrate.downgrade, fresh, "reports", "base")
    try:
        response = await _readyz(settings, fresh_database)
        assert response.status_code == 503, response.text
        error = response.json()["error"]
        assert error["status"] == "UNAVAILABLE"
        assert "migrations reports: behind" in error["message"]
        assert "run `conveyor migrate`" in error["message"]
        assert "platform" not in error["message"]
        metadata = error["details"][0]["metadata"]
        assert metadata["migrations:reports"].startswith("behind: at no revision, head is ")
        assert metadata["migrations:platform"] == "ok"
        assert metadata["database"] == "ok"
    finally:
        await asyncio.to_thread(migrate.upgrade, fresh, ["reports"])
    assert (await _readyz(settings, fresh_database)).status_code == 200


async def test_readyz_stays_ready_when_a_schema_is_ahead_of_this_code(settings, fresh_database):
    """A newer release migrated first (rolling deploy): this one keeps serving."""
    (head,) = migrate.script_heads("imports")
    await query(fresh_database, "UPDATE imports.alembic_version SET version_num = 'imports_9999'")
    try:
        response = await _readyz(settings, fresh_database)
    finally:
        await query(fresh_database, "UPDATE imports.alembic_version SET version_num = :v", v=head)
    assert response.status_code == 200, response.text
    assert response.json()["migrations"]["imports"] == "ahead of this code (at imports_9999)"
