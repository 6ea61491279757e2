"""API key rules on the in-memory fakes: the plaintext is shown once and only its digest is
stored, verification accepts the right key and refuses every other one with UNAUTHENTICATED,
create validation, revocation, and the verification cache (including stale-if-unreachable)."""

from __future__ import annotations

import datetime as dt
import hashlib
from types import TracebackType
from typing import Any

import pytest

from domains.platform.keys import service as key_service
from domains.platform.keys.model import OPERATOR_SCOPE
from domains.platform.keys.service import STALE_IF_UNREACHABLE_SECONDS, ApiKeyService
from domains.shared.errors import InvalidArgument, NotFound, Unauthenticated
from tests.fakes.operations import FakeDatabase
from tests.fakes.platform import FakePlatformUnitOfWork, platform_database


class Clock:
    """A monotonic clock the test moves by hand (the service's cache clock)."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class UnreachableUnitOfWork:
    """A unit of work whose database cannot be reached (what asyncpg raises then)."""

    def __init__(self, error: BaseException) -> None:
        self.error = error

    async def __aenter__(self) -> Any:
        raise self.error

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None


class Database:
    """The fake platform database, which the test can take down (``error``)."""

    def __init__(self) -> None:
        self.db: FakeDatabase = platform_database()
        self.error: BaseException | None = None
        self.opened = 0

    def uow(self) -> Any:
        self.opened += 1
        if self.error is not None:
            return UnreachableUnitOfWork(self.error)
        return FakePlatformUnitOfWork(self.db)

    @property
    def keys(self) -> dict[str, Any]:
        return self.db.state["api_keys"]  # type: ignore[no-any-return]


@pytest.fixture
def database() -> Database:
    return Database()


@pytest.fixture
def clock() -> Clock:
    return Clock()


def make(database: Database, clock: Clock, cache_seconds: float = 2.0) -> ApiKeyService:
    return ApiKeyService(database.uow, cache_seconds=cache_seconds, clock=clock)


def secret_of(plaintext: str) -> str:
    # cvk_<prefix>_<secret>; the secret is url-safe base64, which may itself hold "_".
    return plaintext.split("_", 2)[2]


def wrong_secret(plaintext: str) -> str:
    # Same prefix, another (well-formed) secret.
    secret = secret_of(plaintext)
    return f"{plaintext[: -len(secret)]}{'B' if secret[0] == 'A' else 'A'}{secret[1:]}"


async def test_create_returns_the_plaintext_once_and_stores_only_prefix_and_digest(database, clock):
    new = await make(database, clock).create(tenant="acme", scopes=["imports:write"], name="ci")

    kind, prefix, secret = new.plaintext.split("_", 2)
    assert (kind, prefix) == ("cvk", new.key.prefix)
    assert len(prefix) == 12 and len(secret) == 43
    [stored] = database.keys.values()
    assert stored.secret_hash == hashlib.sha256(secret.encode()).hexdigest()
    assert secret not in repr(stored) and new.plaintext not in repr(stored)
    assert (stored.tenant, stored.name, stored.scopes) == ("acme", "ci", ("imports:write",))
    assert stored.expire_time is None and stored.revoke_time is None
    listed = await make(database, clock).list()
    assert [k.prefix for k in listed] == [prefix]
    assert not hasattr(listed[0], "plaintext")


async def test_two_keys_never_share_a_plaintext(database, clock):
    svc = make(database, clock)
    a = await svc.create(tenant="acme", scopes=["*"])
    b = await svc.create(tenant="acme", scopes=["*"])
    assert a.plaintext != b.plaintext and a.key.prefix != b.key.prefix
    assert len(database.keys) == 2


async def test_a_prefix_collision_is_retried_with_a_new_prefix(database, clock, monkeypatch):
    svc = make(database, clock)
    first = await svc.create(tenant="acme", scopes=["*"])
    prefixes = iter([first.key.prefix, "0123456789ab"])
    monkeypatch.setattr("secrets.token_hex", lambda n: next(prefixes))

    second = await svc.create(tenant="acme", scopes=["*"])

    assert second.key.prefix == "0123456789ab"
    assert set(database.keys) == {first.key.prefix, "0123456789ab"}
    assert (await svc.authenticate(second.plaintext)).id == second.key.id


async def test_create_validates_tenant_scopes_name_and_lifetime(database, clock):
    svc = make(database, clock)
    bad: list[tuple[dict[str, Any], str]] = [
        ({"tenant": "", "scopes": ["*"]}, "INVALID_TENANT"),
        ({"tenant": "-acme", "scopes": ["*"]}, "INVALID_TENANT"),
        ({"tenant": "a" * 65, "scopes": ["*"]}, "INVALID_TENANT"),
        ({"tenant": "acme corp", "scopes": ["*"]}, "INVALID_TENANT"),
        ({"tenant": "acme", "scopes": []}, "INVALID_SCOPE"),
        ({"tenant": "acme", "scopes": [" "]}, "INVALID_SCOPE"),
        ({"tenant": "acme", "scopes": ["imports:delete"]}, "INVALID_SCOPE"),
        ({"tenant": "acme", "scopes": ["*"], "name": "n" * 201}, "INVALID_NAME"),
        ({"tenant": "acme", "scopes": ["*"], "expires_in": dt.timedelta(0)}, "INVALID_DURATION"),
        (
            {"tenant": "acme", "scopes": ["*"], "expires_in": dt.timedelta(days=3651)},
            "INVALID_DURATION",
        ),
    ]
    for kwargs, reason in bad:
        with pytest.raises(InvalidArgument) as info:
            await svc.create(**kwargs)
        assert info.value.reason == reason, kwargs
    assert database.keys == {}


async def test_scopes_are_normalized_and_the_operator_scope_is_explicit(database, clock):
    svc = make(database, clock)
    new = await svc.create(
        tenant="a.b_c-1", scopes=["operations:read", " imports:write ", "operations:read"]
    )
    assert new.key.scopes == ("imports:write", "operations:read")
    operator = await svc.create(tenant="ops", scopes=[OPERATOR_SCOPE, "*"])
    assert operator.key.scopes == ("*", OPERATOR_SCOPE)
    everything = await svc.create(tenant="acme", scopes=["*"])
    assert OPERATOR_SCOPE not in everything.key.scopes


async def test_the_right_key_authenticates(database, clock):
    svc = make(database, clock)
    new = await svc.create(tenant="acme", scopes=["reports:read"])

    key = await svc.authenticate(new.plaintext)

    assert (key.id, key.tenant, key.scopes) == (new.key.id, "acme", ("reports:read",))


async def test_a_wrong_or_unknown_key_gets_one_error_that_never_echoes_it(database, clock):
    svc = make(database, clock)
    new = await svc.create(tenant="acme", scopes=["*"])
    wrong = wrong_secret(new.plaintext)
    unknown = f"cvk_{'f' * 12}_{secret_of(new.plaintext)}"
    if unknown.split("_")[1] == new.key.prefix:  # pragma: no cover - 1 in 2**48
        unknown = f"cvk_{'e' * 12}_{secret_of(new.plaintext)}"

    errors = []
    for token in (wrong, unknown):
        with pytest.raises(Unauthenticated) as info:
            await svc.authenticate(token)
        errors.append((info.value.reason, info.value.message))
        assert secret_of(token) not in info.value.message

    assert errors[0] == errors[1]
    assert errors[0][0] == "INVALID_API_KEY"


async def test_a_malformed_key_is_refused_without_a_lookup(database, clock):
    svc = make(database, clock)
    for token in ("", "Bearer x", "cvk_123_abc", "xyz_0123456789ab_" + "A" * 43):
        with pytest.raises(Unauthenticated) as info:
            await svc.authenticate(token)
        assert info.value.reason == "INVALID_API_KEY"
    assert database.opened == 0


async def test_a_revoked_key_stops_working_at_once_in_the_revoking_process(database, clock):
    svc = make(database, clock)
    new = await svc.create(tenant="acme", scopes=["*"])
    await svc.authenticate(new.plaintext)  # now cached

    await svc.revoke(f"cvk_{new.key.prefix}")

    assert database.keys[new.key.prefix].revoke_time is not None
    with pytest.raises(Unauthenticated) as info:
        await svc.authenticate(new.plaintext)
    assert info.value.reason == "API_KEY_REVOKED"
    assert info.value.metadata == {"key_prefix": new.key.prefix}
    assert secret_of(new.plaintext) not in info.value.message
    [listed] = await svc.list("acme")
    assert listed.state(dt.datetime.now(dt.UTC)) == "REVOKED"


async def test_revoking_twice_keeps_the_first_revocation_time(database, clock):
    svc = make(database, clock)
    new = await svc.create(tenant="acme", scopes=["*"])
    await svc.revoke(new.key.prefix)
    first = database.keys[new.key.prefix].revoke_time
    await svc.revoke(new.key.prefix)
    assert database.keys[new.key.prefix].revoke_time == first


async def test_revoke_checks_the_prefix_and_that_the_key_exists(database, clock):
    svc = make(database, clock)
    with pytest.raises(InvalidArgument) as bad:
        await svc.revoke("nope")
    assert bad.value.reason == "INVALID_KEY_PREFIX"
    with pytest.raises(NotFound) as missing:
        await svc.revoke("cvk_aaaaaaaaaaaa")
    assert missing.value.reason == "API_KEY_NOT_FOUND"


async def test_an_expired_key_is_refused(database, clock, monkeypatch):
    svc = make(database, clock, cache_seconds=0)
    new = await svc.create(tenant="acme", scopes=["*"], expires_in=dt.timedelta(hours=1))
    created = new.key.create_time
    assert new.key.expire_time == created + dt.timedelta(hours=1)
    assert (await svc.authenticate(new.plaintext)).id == new.key.id

    later = created + dt.timedelta(hours=1, seconds=1)
    monkeypatch.setattr(key_service, "utcnow", lambda: later)

    with pytest.raises(Unauthenticated) as info:
        await svc.authenticate(new.plaintext)
    assert info.value.reason == "API_KEY_EXPIRED"
    with pytest.raises(Unauthenticated) as wrong:  # a wrong secret says nothing about expiry
        await svc.authenticate(wrong_secret(new.plaintext))
    assert wrong.value.reason == "INVALID_API_KEY"


async def test_list_filters_by_tenant_oldest_first(database, clock):
    svc = make(database, clock)
    a1 = await svc.create(tenant="a", scopes=["*"])
    b1 = await svc.create(tenant="b", scopes=["*"])
    a2 = await svc.create(tenant="a", scopes=["*"])
    assert [k.id for k in await svc.list("a")] == [a1.key.id, a2.key.id]
    assert [k.id for k in await svc.list()] == [a1.key.id, b1.key.id, a2.key.id]
    assert await svc.list("nobody") == []


async def test_a_lookup_is_reused_for_cache_seconds(database, clock):
    svc = make(database, clock, cache_seconds=2)
    new = await svc.create(tenant="acme", scopes=["*"])
    opened = database.opened

    await svc.authenticate(new.plaintext)
    await svc.authenticate(new.plaintext)
    clock.now = 1.9
    await svc.authenticate(new.plaintext)
    assert database.opened == opened + 1

    clock.now = 2.0
    await svc.authenticate(new.plaintext)
    assert database.opened == opened + 2


async def test_another_process_sees_a_revocation_once_its_cache_entry_ages_out(database, clock):
    api = make(database, clock, cache_seconds=2)
    cli = make(database, clock, cache_seconds=2)
    new = await cli.create(tenant="acme", scopes=["*"])
    await api.authenticate(new.plaintext)

    await cli.revoke(new.key.prefix)

    assert (await api.authenticate(new.plaintext)).id == new.key.id  # still cached
    clock.now = 2.0
    with pytest.raises(Unauthenticated) as info:
        await api.authenticate(new.plaintext)
    assert info.value.reason == "API_KEY_REVOKED"


async def test_an_unknown_prefix_is_cached_too(database, clock):
    svc = make(database, clock, cache_seconds=2)
    token = f"cvk_{'a' * 12}_{'A' * 43}"
    for _ in range(3):
        with pytest.raises(Unauthenticated):
            await svc.authenticate(token)
    assert database.opened == 1


async def test_cache_seconds_zero_reads_the_key_every_time_and_keeps_nothing(database, clock):
    svc = make(database, clock, cache_seconds=0)
    new = await svc.create(tenant="acme", scopes=["*"])
    opened = database.opened
    for _ in range(3):
        await svc.authenticate(new.plaintext)
    assert database.opened == opened + 3

    database.error = ConnectionRefusedError("platform primary down")
    with pytest.raises(ConnectionRefusedError):  # no cache: nothing stale to fall back on
        await svc.authenticate(new.plaintext)


async def test_a_verified_key_keeps_working_for_a_while_when_the_database_is_unreachable(
    database, clock
):
    svc = make(database, clock, cache_seconds=1)
    new = await svc.create(tenant="acme", scopes=["*"])
    other = await svc.create(tenant="acme", scopes=["*"])
    await svc.authenticate(new.plaintext)

    database.error = ConnectionRefusedError("platform primary down")
    clock.now = 60.0  # the entry is old: the service reads the database, which fails
    assert (await svc.authenticate(new.plaintext)).id == new.key.id
    with pytest.raises(ConnectionRefusedError):  # a key never verified is not let in
        await svc.authenticate(other.plaintext)
    with pytest.raises(Unauthenticated):  # the stale entry still checks the secret
        await svc.authenticate(wrong_secret(new.plaintext))

    clock.now = 1 + STALE_IF_UNREACHABLE_SECONDS  # not forever
    with pytest.raises(ConnectionRefusedError):
        await svc.authenticate(new.plaintext)


async def test_an_error_other_than_unreachable_is_never_hidden_by_the_cache(database, clock):
    svc = make(database, clock, cache_seconds=1)
    new = await svc.create(tenant="acme", scopes=["*"])
    await svc.authenticate(new.plaintext)

    database.error = RuntimeError("a bug, not an outage")
    clock.now = 5.0
    with pytest.raises(RuntimeError):
        await svc.authenticate(new.plaintext)
