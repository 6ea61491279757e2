"""API keys: shown once, stored as prefix + SHA-256 only, constant-time checked, expire and revoke;
the `conveyor keys` commands; 401 for every kind of bad key, never echoing the key."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import re

import pytest
from click.testing import CliRunner

from app.cli import main as conveyor
from domains.platform.keys import model as key_model
from domains.platform.keys import service as key_service
from domains.platform.unit_of_work import PlatformUnitOfWork
from domains.shared.errors import InvalidArgument, NotFound, Unauthenticated
from tests.security.support import api, bearer, new_key
from tests.support.ops import query

KEY = re.compile(r"^cvk_[0-9a-f]{12}_[A-Za-z0-9_-]{43}$")


def run_cli(service_env, *args: str):
    return CliRunner().invoke(conveyor, list(args), env=service_env, catch_exceptions=False)


async def test_created_key_is_stored_only_as_prefix_and_sha256(settings, database_url):
    key = await new_key(settings, tenant="acme", scopes=("imports:write", "operations:read"))
    assert KEY.match(key)
    _, prefix, secret = key.split("_", 2)
    rows = await query(
        database_url,
        "SELECT prefix, secret_hash, tenant, scopes, row_to_json(k)::text AS whole"
        " FROM platform.api_keys k WHERE prefix = :p",
        p=prefix,
    )
    assert len(rows) == 1
    row = rows[0]
    assert row.secret_hash == hashlib.sha256(secret.encode()).hexdigest()
    assert row.tenant == "acme"
    assert sorted(row.scopes) == ["imports:write", "operations:read"]
    assert secret not in row.whole and key not in row.whole


async def test_every_bad_key_is_401_with_www_authenticate_and_never_echoed(settings, api_key):
    _, prefix, secret = api_key.split("_", 2)
    wrong_secret = f"cvk_{prefix}_{'A' * 43}"
    unknown = f"cvk_{'0' * 12}_{secret}"
    cases = {
        "missing": None,
        "basic scheme": "Basic dXNlcjpwYXNz",
        "empty bearer": "Bearer ",
        "malformed": "Bearer not-a-key",
        "wrong secret": f"Bearer {wrong_secret}",
        "unknown prefix": f"Bearer {unknown}",
        "oversized": "Bearer " + "x" * 5000,
    }
    async with api(settings) as (_, http):
        for case, header in cases.items():
            headers = {"authorization": header} if header else {}
            response = await http.get("/v1/operations", headers=headers)
            assert response.status_code == 401, (case, response.text)
            assert response.headers["www-authenticate"].startswith("Bearer"), case
            error = response.json()["error"]
            assert error["status"] == "UNAUTHENTICATED", case
            assert secret not in response.text and "A" * 43 not in response.text, case
        ok = await http.get("/v1/operations", headers=bearer(api_key))
        assert ok.status_code == 200, ok.text


async def test_expired_key_is_refused(settings):
    key = await new_key(settings, expires_in=dt.timedelta(seconds=1))
    async with api(settings, key_cache_seconds=0) as (_, http):
        assert (await http.get("/v1/operations", headers=bearer(key))).status_code == 200
        await asyncio.sleep(1.2)
        response = await http.get("/v1/operations", headers=bearer(key))
    assert response.status_code == 401
    assert response.json()["error"]["details"][0]["reason"] == "API_KEY_EXPIRED"
    assert "expired" in response.json()["error"]["message"]


async def test_revoked_key_stops_working_within_the_cache_time(settings, service_env):
    key = await new_key(settings, name="to revoke")
    prefix = key.split("_")[1]
    async with api(settings, key_cache_seconds=0.5) as (_, http):
        assert (await http.get("/v1/operations", headers=bearer(key))).status_code == 200
        result = await asyncio.to_thread(run_cli, service_env, "keys", "revoke", prefix)
        assert result.exit_code == 0, result.output
        await asyncio.sleep(0.6)
        response = await http.get("/v1/operations", headers=bearer(key))
    assert response.status_code == 401
    assert response.json()["error"]["details"][0]["reason"] == "API_KEY_REVOKED"


def test_keys_cli_creates_lists_and_revokes(service_env):
    created = run_cli(
        service_env,
        "keys",
        "create",
        "--tenant",
        "cli-t",
        "--scopes",
        "reports:read,operations:write",
        "--expires-in",
        "30d",
        "--name",
        "ci bot",
    )
    assert created.exit_code == 0, created.output
    key = created.stdout.strip()
    assert KEY.match(key), created.stdout  # stdout is the key alone: $(conveyor keys create ...)
    prefix = key.split("_")[1]
    assert prefix in created.stderr and "only this once" in created.stderr

    listed = run_cli(service_env, "keys", "list", "--tenant", "cli-t")
    line = next(row for row in listed.stdout.splitlines() if prefix in row)
    assert "ACTIVE" in line and "cli-t" in line and "ci bot" in line
    assert key.split("_", 2)[2] not in listed.stdout  # never the secret

    assert run_cli(service_env, "keys", "revoke", prefix).exit_code == 0
    listed = run_cli(service_env, "keys", "list", "--json")
    assert '"REVOKED"' in listed.stdout

    bad = run_cli(service_env, "keys", "create", "--scopes", "imports:delete")
    assert bad.exit_code == 2 and "unknown scope" in bad.stderr
    bad = run_cli(service_env, "keys", "create", "--scopes", "*", "--expires-in", "soon")
    assert bad.exit_code == 2 and "--expires-in" in bad.stderr
    missing = run_cli(service_env, "keys", "revoke", "0123456789ab")
    assert missing.exit_code == 2 and "no API key" in missing.stderr


async def test_only_a_key_minted_as_operator_holds_the_operator_scope(service_env, settings):
    from api.auth import Principal

    created = await asyncio.to_thread(run_cli, service_env, "keys", "create", "--operator")
    assert created.exit_code == 0, created.output
    assert "platform:admin" in created.stderr
    tenant_key = await new_key(settings)  # `*` alone
    async with api(settings) as (_, http):
        for key, code in ((created.stdout.strip(), 200), (tenant_key, 403)):
            response = await http.post(
                "/v1/schedules/system.stale-sweeper:run", headers=bearer(key)
            )
            assert response.status_code == code, response.text
    assert not Principal(scopes=frozenset({"*"})).operator
    operator_only = Principal(scopes=frozenset({"platform:admin"}))
    assert operator_only.operator and operator_only.allows("schedules:write")
    assert not operator_only.allows("imports:read")


def test_scope_tenant_and_duration_validation():
    assert key_model.parse_scopes(["operations:read", " *", "operations:read"]) == (
        "*",
        "operations:read",
    )
    for bad in ([], ["admin"], ["imports:delete"], ["x" * 500]):
        with pytest.raises(InvalidArgument):
            key_model.parse_scopes(bad)
    for bad in ("", "-x", "a b", "x" * 65, "ten/ant"):
        with pytest.raises(InvalidArgument):
            key_model.validate_tenant(bad)
    assert key_model.parse_duration("30d") == dt.timedelta(days=30)
    assert key_model.parse_duration("90m") == dt.timedelta(minutes=90)
    for bad in ("0d", "30", "1y", "99999w"):
        with pytest.raises(InvalidArgument):
            key_model.parse_duration(bad)


async def test_service_refuses_bad_tokens_with_unauthenticated_only(settings):
    from app.container import Container
    from app.db import EngineRegistry

    registry = EngineRegistry(settings)
    try:
        service = Container(settings, registry).api_keys
        for token in ("", "cvk_", "cvk_zz_yy", "cvk_0123456789ab_" + "a" * 43, "Bearer x" * 50):
            with pytest.raises(Unauthenticated) as info:
                await service.authenticate(token)
            assert token[4:] not in info.value.message or not token[4:]
        with pytest.raises(NotFound):
            await service.revoke("cvk_aaaaaaaaaaaa")
        with pytest.raises(InvalidArgument):
            await service.revoke("nope")
    finally:
        await registry.dispose()


async def test_a_recently_verified_key_keeps_working_while_the_database_is_unreachable(
    settings, api_key
):
    """The cache is stale-if-unreachable: an outage of the platform primary does not log every
    caller out, but only for keys verified before it; an unknown key still fails (503)."""
    from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

    from app.container import Container
    from app.db import EngineRegistry

    registry = EngineRegistry(settings)
    dead = create_async_engine(
        "postgresql+asyncpg://postgres@127.0.0.1:1/nowhere", connect_args={"timeout": 2}
    )
    now = [0.0]
    try:
        container = Container(settings, registry)
        service = key_service.ApiKeyService(
            container.uow_factory("platform"), cache_seconds=1, clock=lambda: now[0]
        )
        verified = await service.authenticate(api_key)
        live_factory = service._uow
        tables = live_factory().tables  # the platform tables the live unit of work uses
        service._uow = lambda: PlatformUnitOfWork(tables, async_sessionmaker(dead))
        now[0] = 60.0  # the cache entry is old: the service must read the database again
        again = await service.authenticate(api_key)
        assert again.prefix == verified.prefix
        other = await new_key(settings, name="never verified")
        with pytest.raises(OSError):  # positive control: the database really is unreachable
            await service.authenticate(other)
        now[0] = 60.0 + key_service.STALE_IF_UNREACHABLE_SECONDS + 1
        with pytest.raises(OSError):  # not forever
            await service.authenticate(api_key)
    finally:
        await dead.dispose()
        await registry.dispose()
