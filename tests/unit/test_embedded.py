"""Embedded PostgreSQL/Redis (app.runtime.embedded) and the test service helpers."""

from __future__ import annotations

import asyncio
import pathlib
import socket
import uuid

import asyncpg
import pytest
import redis

from app.runtime.embedded import find_free_port, start_embedded
from tests.support import services


async def _fetchval(url: str, sql: str) -> object:
    conn = await asyncpg.connect(services.to_plain_url(url))
    try:
        return await conn.fetchval(sql)
    finally:
        await conn.close()


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def test_start_embedded_postgres_and_redis(tmp_path: pathlib.Path) -> None:
    svc = start_embedded(tmp_path)
    try:
        assert svc.database_url.startswith("postgresql+asyncpg://postgres@127.0.0.1:")
        assert svc.broker_url.startswith("redis://127.0.0.1:")
        assert asyncio.run(_fetchval(svc.database_url, "SELECT 1")) == 1

        client = redis.Redis.from_url(svc.broker_url)
        assert client.ping() is True
        assert client.connection_pool.connection_kwargs["port"] != 6379
        client.close()

        assert (tmp_path / "postgres" / "PG_VERSION").exists()
        assert (tmp_path / "redis").is_dir()
    finally:
        svc.stop()
    svc.stop()  # idempotent

    pg_port = int(svc.database_url.rsplit(":", 1)[1].split("/")[0])
    redis_port = int(svc.broker_url.rsplit(":", 1)[1].split("/")[0])
    assert not _port_open(pg_port)
    assert not _port_open(redis_port)


def test_start_embedded_redis_only_persists_data(tmp_path: pathlib.Path) -> None:
    svc = start_embedded(tmp_path, postgres=False)
    try:
        assert svc.database_url == ""
        redis.Redis.from_url(svc.broker_url).set("conveyor:key", "kept")
    finally:
        svc.stop()
    assert not (tmp_path / "postgres").exists()

    svc = start_embedded(tmp_path, postgres=False)
    try:
        assert redis.Redis.from_url(svc.broker_url).get("conveyor:key") == b"kept"
    finally:
        svc.stop()


def test_find_free_port_is_bindable() -> None:
    port = find_free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


@pytest.mark.parametrize(
    ("url", "asyncpg_url", "plain_url"),
    [
        (
            "postgresql://u:p@127.0.0.1:5432/db",
            "postgresql+asyncpg://u:p@127.0.0.1:5432/db",
            "postgresql://u:p@127.0.0.1:5432/db",
        ),
        (
            "postgresql+asyncpg://postgres@/postgres?host=/tmp/sock",
            "postgresql+asyncpg://postgres@/postgres?host=/tmp/sock",
            "postgresql://postgres@/postgres?host=/tmp/sock",
        ),
        (
            "postgres://u@h/db?sslmode=disable",
            "postgresql+asyncpg://u@h/db?sslmode=disable",
            "postgresql://u@h/db?sslmode=disable",
        ),
        (
            "postgresql+psycopg2://u@h/db",
            "postgresql+asyncpg://u@h/db",
            "postgresql://u@h/db",
        ),
    ],
)
def test_url_conversion(url: str, asyncpg_url: str, plain_url: str) -> None:
    assert services.to_asyncpg_url(url) == asyncpg_url
    assert services.to_plain_url(url) == plain_url
    assert services.to_plain_url(services.to_asyncpg_url(url)) == plain_url


def test_url_conversion_rejects_other_schemes() -> None:
    with pytest.raises(ValueError, match="not a PostgreSQL URL"):
        services.to_plain_url("redis://127.0.0.1:6379/0")


def _check_create_drop(admin_url: str) -> None:
    assert admin_url.startswith("postgresql://")
    name = f"conveyor_test_{uuid.uuid4().hex[:12]}"
    db_url = services.create_database(admin_url, name)
    try:
        assert db_url.startswith("postgresql+asyncpg://")
        assert db_url.rsplit("?", 1)[0].endswith(f"/{name}")
        assert asyncio.run(_fetchval(db_url, "SELECT current_database()")) == name

        async def drop_while_connected() -> None:
            # An open connection must not block the drop (it gets terminated).
            conn = await asyncpg.connect(services.to_plain_url(db_url))
            try:
                services.drop_database(admin_url, name)  # runs in a helper thread
            finally:
                conn.terminate()

        asyncio.run(drop_while_connected())
        exists = asyncio.run(
            _fetchval(admin_url, f"SELECT count(*) FROM pg_database WHERE datname = '{name}'")
        )
        assert exists == 0
    finally:
        services.drop_database(admin_url, name)  # idempotent (IF EXISTS)


def test_create_and_drop_database() -> None:
    _check_create_drop(services.test_database_admin_url())


def test_unreachable_servers_fall_back_to_embedded(monkeypatch: pytest.MonkeyPatch) -> None:
    dead_port = find_free_port()  # nothing listens there
    monkeypatch.setenv(
        services.DATABASE_URL_ENV, f"postgresql://postgres@127.0.0.1:{dead_port}/test"
    )
    monkeypatch.setenv(services.BROKER_URL_ENV, f"redis://127.0.0.1:{dead_port}/0")

    admin_url = services.test_database_admin_url()
    assert f":{dead_port}/" not in admin_url
    assert admin_url == services.test_database_admin_url()  # started once per process
    _check_create_drop(admin_url)

    broker_url = services.test_broker_url()
    assert f":{dead_port}/" not in broker_url
    assert redis.Redis.from_url(broker_url).ping() is True
