"""API keys use cases: create, list and revoke (operator CLI), authenticate (every API call).

Keys carry a tenant, scopes, an optional expiry and can be revoked; every failure to
authenticate is the same ``UNAUTHENTICATED`` error, which never echoes the key.
"""

from __future__ import annotations

import base64
import builtins
import datetime as dt
import hmac
import logging
import re
import secrets
import time
from collections.abc import Callable, Sequence

from sqlalchemy.exc import DBAPIError, IntegrityError, InterfaceError, OperationalError

from domains.platform.keys.model import (
    KEY_PREFIX,
    MAX_EXPIRES_IN,
    MAX_NAME_LENGTH,
    ApiKey,
    NewKey,
    hash_secret,
    parse_scopes,
    validate_tenant,
)
from domains.platform.unit_of_work import PlatformUoW
from domains.shared.clock import utcnow
from domains.shared.errors import InvalidArgument, NotFound, Unauthenticated
from domains.shared.ids import new_id

_PREFIX = re.compile(r"[0-9a-f]{12}")
_TOKEN = re.compile(r"cvk_([0-9a-f]{12})_([A-Za-z0-9_-]{43})")

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
        uow_factory: Callable[[], PlatformUoW],
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
                    await uow.keys.add(key)
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
            return await uow.keys.list(tenant)

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
            found = await uow.keys.revoke(prefix, utcnow())
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
                key = await uow.keys.by_prefix(prefix)
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
