"""Integration: the engine registry routes (domain, role) to real databases."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from app.config import Settings
from app.db import EngineRegistry, migrate
from tests.support import services


@pytest.fixture
def second_database(admin_url: str) -> Iterator[str]:
    """A second, empty database on the test server (dropped at the end)."""
    name = f"conveyor_test_second_{secrets.token_hex(4)}"
    url = services.create_database(admin_url, name)
    try:
        yield url
    finally:
        services.drop_database(admin_url, name)


def replica_form(url: str) -> str:
    # Same database under a distinct URL: asyncpg rejects unknown query parameters such as
    # application_name, but accepts the dialect option prepared_statement_cache_size.
    assert "?" not in url
    return f"{url}?prepared_statement_cache_size=64"


async def scalar(engine, sql: str):
    async with engine.connect() as conn:
        return (await conn.execute(sa.text(sql))).scalar_one()


@pytest.fixture
def split_settings(settings: Settings, second_database: str) -> Settings:
    """imports on the second database; reports read from a replica URL."""
    return settings.model_copy(
        update={
            "db": settings.db.model_validate(
                {
                    "imports": {"url": second_database},
                    "reports": {"replica_url": replica_form(str(settings.database_url))},
                }
            )
        }
    )


def db_name(url: str) -> str:
    return str(make_url(url).database)


async def test_domain_override_runs_queries_on_its_own_database(
    split_settings: Settings, second_database: str
):
    registry = EngineRegistry(split_settings)
    try:
        main_db = db_name(str(split_settings.database_url))
        assert await scalar(registry.engine("imports"), "SELECT current_database()") == db_name(
            second_database
        )
        # With no replica configured for imports, the replica role is its own primary.
        assert registry.engine("imports", "replica") is registry.engine("imports")
        assert await scalar(registry.engine("platform"), "SELECT current_database()") == main_db
        assert (
            await scalar(registry.engine("platform", "replica"), "SELECT current_database()")
            == main_db
        )
    finally:
        await registry.dispose()


async def test_replica_role_gets_its_own_engine_on_the_replica_url(split_settings: Settings):
    registry = EngineRegistry(split_settings)
    try:
        replica_url = replica_form(str(split_settings.database_url))
        replica = registry.engine("reports", "replica")
        primary = registry.engine("reports", "primary")
        assert replica is not primary
        assert registry.url("reports", "replica") == replica_url
        assert replica.url.render_as_string(hide_password=False) == replica_url
        assert primary.url.render_as_string(hide_password=False) == str(split_settings.database_url)
        assert await scalar(replica, "SELECT current_database()") == db_name(replica_url)
        assert registry.sessionmaker("reports", "replica").kw["bind"] is replica
    finally:
        await registry.dispose()


async def test_domains_with_the_same_url_share_one_engine(split_settings: Settings):
    registry = EngineRegistry(split_settings)
    try:
        platform = registry.engine("platform")
        assert registry.engine("webhooks") is platform
        assert registry.engine("reports") is platform
        assert registry.engine("webhooks", "replica") is platform
        assert registry.engine("imports") is not platform
        assert registry.sessionmaker("webhooks") is registry.sessionmaker("platform")
        assert registry.sessionmaker("imports") is not registry.sessionmaker("platform")
    finally:
        await registry.dispose()


async def test_unknown_domain_is_rejected(settings: Settings):
    registry = EngineRegistry(settings)
    with pytest.raises(ValueError, match="unknown domain 'billing'"):
        registry.engine("billing")


async def test_dispose_lets_the_registry_create_fresh_engines(settings: Settings):
    registry = EngineRegistry(settings)
    first = registry.engine("platform")
    assert await scalar(first, "SELECT 1") == 1
    await registry.dispose()
    second = registry.engine("platform")
    try:
        assert second is not first
        assert await scalar(second, "SELECT 1") == 1
    finally:
        await registry.dispose()


async def test_migrating_one_domain_creates_its_schema_on_its_own_database(
    split_settings: Settings,
):
    await asyncio.to_thread(migrate.upgrade, split_settings, domains=["imports"])
    registry = EngineRegistry(split_settings)
    try:
        engine = registry.engine("imports")
        async with engine.connect() as conn:
            schemas = set(
                (await conn.execute(sa.text("SELECT nspname FROM pg_namespace"))).scalars()
            )
            assert "imports" in schemas
            assert "platform" not in schemas  # only the requested domain was migrated
            assert (
                await conn.execute(sa.text("SELECT to_regclass('imports.operations')::text"))
            ).scalar_one() == "imports.operations"
            assert (
                await conn.execute(sa.text("SELECT version_num FROM imports.alembic_version"))
            ).scalar_one() in migrate.script_heads("imports")
            # The table is usable: an empty listing.
            assert (
                await conn.execute(sa.text("SELECT count(*) FROM imports.operations"))
            ).scalar_one() == 0
    finally:
        await registry.dispose()


async def test_lists_read_from_the_replica_and_gets_from_the_primary(
    settings: Settings, second_database: str
):
    """A replica that lags (here: an empty, migrated database) shows in lists, not in gets."""
    from app.container import Container

    replica_settings = settings.model_copy(update={"replica_url": second_database})
    await asyncio.to_thread(
        migrate.upgrade, replica_settings.model_copy(update={"database_url": second_database})
    )
    registry = EngineRegistry(replica_settings)
    try:
        container = Container(replica_settings, registry)
        op = await container.pings.create_ping(message="fresh")
        assert (await container.operations.get(op.name)).id == op.id
        page = await container.operations.list([], page_size=1000, after=None)
        assert page.operations == []
        assert registry.url("platform", "replica") == second_database
    finally:
        await registry.dispose()
