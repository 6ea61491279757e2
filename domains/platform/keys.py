"""API keys: model, table, repository and service.

A key reads ``cvk_<prefix>_<secret>``: ``prefix`` (12 hex digits) is stored in clear to find the
row, ``secret`` (32 random bytes, url-safe base64) is never stored, only its SHA-256. The
plaintext is shown once, when the key is created. Verification compares digests in constant
time (:func:`hmac.compare_digest`). Keys carry a tenant, scopes, an optional expiry and can be
revoked; every failure to authenticate is the same ``UNAUTHENTICATED`` error, which never
echoes the key.
"""

from __future__ import annotations

import base64
import builtins
import dataclasses
import datetime as dt
import hashlib
import hmac
import logging
import re
import secrets
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.exc import DBAPIError, IntegrityError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncSession

from domains.operations.unit_of_work import SqlUnitOfWork
from domains.platform import tables
from domains.shared.clock import utcnow
from domains.shared.errors import InvalidArgument, NotFound, Unauthenticated
from domains.shared.ids import new_id

KEY_PREFIX = "cvk"
"""Every key starts with ``cvk_`` (easy to spot in leaked text, e.g. by secret scanners)."""

AREAS: tuple[str, ...] = ("operations", "imports", "webhooks", "schedules", "reports")
"""Scope areas; a scope is ``<area>:read`` or ``<area>:write`` (write implies read), or ``*``."""

ALL_SCOPES: tuple[str, ...] = tuple(f"{a}:{x}" for a in AREAS for x in ("read", "write"))
"""Every named tenant scope."""

OPERATOR_SCOPE = "platform:admin"
"""The operator's scope: change and run the platform's system schedules. Never included in
``*`` (the tenants' all-scopes grant): only a key created with it explicitly holds it."""

MAX_NAME_LENGTH = 200
MAX_EXPIRES_IN = dt.timedelta(days=3650)
_TENANT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_PREFIX = re.compile(r"[0-9a-f]{12}")
_TOKEN = re.compile(r"cvk_([0-9a-f]{12})_([A-Za-z0-9_-]{43})")
_DURATION = re.compile(r"(\d{1,6})([smhdw])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}

api_keys = sa.Table(
    "api_keys",
    tables.metadata,
    sa.Column("id", pg.UUID(as_uuid=True), primary_key=True),
    sa.Column("prefix", sa.Text, nullable=False),
    sa.Column("secret_hash", sa.Text, nullable=False),
    sa.Column("tenant", sa.Text, nullable=False),
    sa.Column("name", sa.Text, nullable=False, server_default=""),
    sa.Column("scopes", pg.JSONB, nullable=False),
    sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
    sa.Column("expire_time", sa.DateTime(timezone=True)),
    sa.Column("revoke_time", sa.DateTime(timezone=True)),
    sa.Index("uq_api_keys_prefix", "prefix", unique=True),
    sa.Index("ix_api_keys_tenant", "tenant"),
)
"""The ``platform.api_keys`` table: prefix and secret digest, never the secret."""


def hash_secret(secret: str) -> str:
    """Returns the stored digest of a key's secret part.

    Args:
        secret: The part after ``cvk_<prefix>_``.

    Returns:
        Hex SHA-256. The secret has 256 bits of entropy, so a plain hash is enough (no salt or
        slow KDF is needed against guessing; those protect low-entropy passwords).
    """
    return hashlib.sha256(secret.encode()).hexdigest()


def validate_tenant(tenant: str) -> str:
    """Checks a tenant name.

    Args:
        tenant: 1 to 64 characters: letters, digits, ``.``, ``_``, ``-``; starts alphanumeric.

    Returns:
        The tenant.

    Raises:
        InvalidArgument: If it does not fit.
    """
    if not _TENANT.fullmatch(tenant):
        raise InvalidArgument(
            "tenant must be 1-64 characters of letters, digits, '.', '_' or '-', starting with a"
            " letter or digit",
            reason="INVALID_TENANT",
        )
    return tenant


def parse_scopes(scopes: Sequence[str]) -> tuple[str, ...]:
    """Validates and normalizes scopes.

    Args:
        scopes: ``*``, ``<area>:read|write`` or :data:`OPERATOR_SCOPE` items.

    Returns:
        Sorted unique scopes.

    Raises:
        InvalidArgument: If a scope is unknown or none is given.
    """
    cleaned = sorted({s.strip() for s in scopes if s.strip()})
    if not cleaned:
        raise InvalidArgument(
            "give at least one scope, e.g. operations:read (or * for all)",
            reason="INVALID_SCOPE",
        )
    for scope in cleaned:
        if scope != "*" and scope != OPERATOR_SCOPE and scope not in ALL_SCOPES:
            raise InvalidArgument(
                f"unknown scope {scope[:60]!r}; use * or one of: {', '.join(ALL_SCOPES)}"
                f" (and {OPERATOR_SCOPE} for operators)",
                reason="INVALID_SCOPE",
            )
    return tuple(cleaned)


def parse_duration(text: str) -> dt.timedelta:
    """Parses ``30d``, ``12h``, ``90m``, ``45s`` or ``2w``.

    Args:
        text: A number and a unit.

    Returns:
        The duration.

    Raises:
        InvalidArgument: If malformed, zero or longer than ten years.
    """
    match = _DURATION.fullmatch(text.strip())
    if not match:
        raise InvalidArgument(
            f"duration {text[:40]!r} is malformed; use a number and a unit, like 30d, 12h or 90m",
            reason="INVALID_DURATION",
        )
    delta = dt.timedelta(seconds=int(match.group(1)) * _UNITS[match.group(2)])
    if not dt.timedelta(0) < delta <= MAX_EXPIRES_IN:
        raise InvalidArgument(
            "duration must be more than 0 and at most 3650d", reason="INVALID_DURATION"
        )
    return delta


@dataclasses.dataclass
class ApiKey:
    """An API key (without its secret).

    Attributes:
        id: Key id.
        prefix: Public lookup part (12 hex digits), shown in listings and logs.
        secret_hash: Hex SHA-256 of the secret part.
        tenant: Tenant whose resources the key reaches.
        name: Free text naming the holder or purpose.
        scopes: Granted scopes (``*`` = all).
        create_time: Creation time.
        expire_time: When it stops working (``None``: never).
        revoke_time: When it was revoked (``None``: not revoked).
    """

    id: uuid.UUID
    prefix: str
    secret_hash: str
    tenant: str
    name: str
    scopes: tuple[str, ...]
    create_time: dt.datetime
    expire_time: dt.datetime | None = None
    revoke_time: dt.datetime | None = None

    def state(self, now: dt.datetime) -> str:
        """Returns ``ACTIVE``, ``EXPIRED`` or ``REVOKED``.

        Args:
            now: Current time.

        Returns:
            The state name.
        """
        if self.revoke_time is not None:
            return "REVOKED"
        if self.expire_time is not None and self.expire_time <= now:
            return "EXPIRED"
        return "ACTIVE"

    def matches(self, secret: str) -> bool:
        """Whether ``secret`` is this key's secret (constant-time comparison).

        Args:
            secret: The secret part of a presented key.

        Returns:
            True on a match.
        """
        return hmac.compare_digest(hash_secret(secret), self.secret_hash)


@dataclasses.dataclass(frozen=True)
class NewKey:
    """A created key with its plaintext, which is shown once and never stored.

    Attributes:
        key: The stored key.
        plaintext: ``cvk_<prefix>_<secret>``.
    """

    key: ApiKey
    plaintext: str


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


log = logging.getLogger(__name__)

# While the platform database is unreachable, a key verified within this many seconds keeps
# working: an outage of the primary must not log every caller out (revoking needs the database
# too, so nothing revoked meanwhile is missed).
STALE_IF_UNREACHABLE_SECONDS = 300.0


def _unreachable(exc: BaseException) -> bool:
    if isinstance(exc, (OSError, TimeoutError, OperationalError, InterfaceError)):
        return True
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


class ApiKeyService:
    """Creates, lists, revokes and verifies API keys."""

    def __init__(
        self,
        uow_factory: Callable[[], SqlUnitOfWork],
        *,
        cache_seconds: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Creates the service.

        Args:
            uow_factory: Platform unit of work factory.
            cache_seconds: How long a looked-up key is reused before reading it again
                (revocation takes effect within this delay).
            clock: Monotonic clock for the cache.
        """
        self._uow = uow_factory
        self._cache_seconds = cache_seconds
        self._clock = clock
        self._cache: dict[str, tuple[float, ApiKey | None]] = {}

    async def create(
        self,
        *,
        tenant: str,
        scopes: Sequence[str],
        name: str = "",
        expires_in: dt.timedelta | None = None,
    ) -> NewKey:
        """Creates a key.

        Args:
            tenant: The tenant it acts for.
            scopes: Granted scopes.
            name: Holder or purpose.
            expires_in: Lifetime (``None``: no expiry).

        Returns:
            The key and its plaintext (shown once).

        Raises:
            InvalidArgument: On a bad tenant, scope, name or lifetime.
        """
        validate_tenant(tenant)
        granted = parse_scopes(scopes)
        if len(name) > MAX_NAME_LENGTH:
            raise InvalidArgument(
                f"name must be at most {MAX_NAME_LENGTH} characters", reason="INVALID_NAME"
            )
        if expires_in is not None and not dt.timedelta(0) < expires_in <= MAX_EXPIRES_IN:
            raise InvalidArgument(
                "expires_in must be more than 0 and at most 3650 days", reason="INVALID_DURATION"
            )
        now = utcnow()
        for _ in range(5):  # a 48-bit prefix collision is rare; try again if it happens
            prefix = secrets.token_hex(6)
            secret = base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()
            key = ApiKey(
                id=new_id(),
                prefix=prefix,
                secret_hash=hash_secret(secret),
                tenant=tenant,
                name=name,
                scopes=granted,
                create_time=now,
                expire_time=now + expires_in if expires_in else None,
            )
            try:
                async with self._uow() as uow:
                    await SqlApiKeyRepository(uow.session).add(key)
                    await uow.commit()
            except IntegrityError:  # pragma: no cover - prefix collision
                continue
            return NewKey(key=key, plaintext=f"{KEY_PREFIX}_{prefix}_{secret}")
        raise RuntimeError("could not allocate a unique key prefix")  # pragma: no cover

    async def list(self, tenant: str | None = None) -> builtins.list[ApiKey]:
        """Lists keys (never their secrets).

        Args:
            tenant: Only this tenant's keys; ``None`` for all (operator CLI).

        Returns:
            The keys, oldest first.
        """
        async with self._uow() as uow:
            return await SqlApiKeyRepository(uow.session).list(tenant)

    async def revoke(self, prefix: str) -> None:
        """Revokes a key; it stops working within ``cache_seconds`` in every API process.

        Args:
            prefix: The key's prefix (12 hex digits; ``cvk_<prefix>`` is accepted too).

        Raises:
            InvalidArgument: If the prefix is malformed.
            NotFound: If no key has it.
        """
        prefix = prefix.removeprefix(f"{KEY_PREFIX}_").split("_", 1)[0]
        if not _PREFIX.fullmatch(prefix):
            raise InvalidArgument(
                "a key prefix is 12 hex digits (as shown by `conveyor keys list`)",
                reason="INVALID_KEY_PREFIX",
            )
        async with self._uow() as uow:
            found = await SqlApiKeyRepository(uow.session).revoke(prefix, utcnow())
            await uow.commit()
        self._cache.pop(prefix, None)
        if not found:
            raise NotFound(f"no API key has prefix {prefix}", reason="API_KEY_NOT_FOUND")

    async def authenticate(self, token: str) -> ApiKey:
        """Verifies a presented key.

        Args:
            token: ``cvk_<prefix>_<secret>`` from the Authorization header.

        Returns:
            The active key.

        Raises:
            Unauthenticated: If the key is malformed, unknown, wrong, expired or revoked (the
                message never contains the key).
        """
        match = _TOKEN.fullmatch(token)
        if match is None:
            raise Unauthenticated(
                "the API key is malformed; send Authorization: Bearer cvk_<prefix>_<secret>"
                " as printed by `conveyor keys create`",
                reason="INVALID_API_KEY",
            )
        prefix, secret = match.groups()
        key = await self._lookup(prefix)
        # Compare even for unknown prefixes so timing says little about which prefixes exist.
        expected = key.secret_hash if key else hash_secret("")
        if not hmac.compare_digest(hash_secret(secret), expected) or key is None:
            raise Unauthenticated(
                "the API key is not valid; check it or create a new one",
                reason="INVALID_API_KEY",
            )
        state = key.state(utcnow())
        if state != "ACTIVE":
            raise Unauthenticated(
                f"the API key {KEY_PREFIX}_{prefix} is {state.lower()}; create a new one",
                reason=f"API_KEY_{state}",
                metadata={"key_prefix": prefix},
            )
        return key

    async def _lookup(self, prefix: str) -> ApiKey | None:
        now = self._clock()
        cached = self._cache.get(prefix)
        if cached is not None and now - cached[0] < self._cache_seconds:
            return cached[1]
        try:
            async with self._uow() as uow:
                key = await SqlApiKeyRepository(uow.session).by_prefix(prefix)
        except Exception as exc:
            if (
                cached is None
                or not _unreachable(exc)
                or now - cached[0] >= self._cache_seconds + STALE_IF_UNREACHABLE_SECONDS
            ):
                raise
            log.warning(
                "platform database unreachable (%s); key %s verified %.0f s ago is reused",
                type(exc).__name__,
                prefix,
                now - cached[0],
            )
            return cached[1]
        if self._cache_seconds > 0:
            if len(self._cache) > 10_000:  # unknown prefixes must not grow it forever
                self._cache.clear()
            self._cache[prefix] = (now, key)
        return key
