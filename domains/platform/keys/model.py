"""API keys: the key, its scopes and the validation of what a key is created with.

A key reads ``cvk_<prefix>_<secret>``: ``prefix`` (12 hex digits) is stored in clear to find the
row, ``secret`` (32 random bytes, url-safe base64) is never stored, only its SHA-256. The
plaintext is shown once, when the key is created. Verification compares digests in constant
time (:func:`hmac.compare_digest`).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import hmac
import re
import uuid
from collections.abc import Sequence

from domains.shared.errors import InvalidArgument

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
_DURATION = re.compile(r"(\d{1,6})([smhdw])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


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
