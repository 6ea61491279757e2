"""List-method helpers: AIP-158 page size and page tokens.

Page tokens are opaque to clients: url-safe base64 of compact JSON
``{"f": fingerprint, "p": position}`` followed by an HMAC-SHA256 signature, so a client can
neither forge a position nor reuse a token with a different filter or ordering.

AIP-160 filtering is in :mod:`api.filtering`.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import hmac
import json
import os
import re
import secrets
import uuid
from collections.abc import Mapping

from domains.shared.errors import InvalidArgument
from domains.shared.query import Keyset

__all__ = [
    "DEFAULT_PAGE_SIZE",
    "MAX_PAGE_SIZE",
    "MAX_PAGE_TOKEN_LENGTH",
    "PAGE_TOKEN_SECRET_ENV",
    "clamp_page_size",
    "decode_after",
    "decode_after_id",
    "decode_after_keyset",
    "decode_page_token",
    "encode_page_token",
    "next_keyset_token",
    "next_page_token",
    "query_fingerprint",
]

MAX_PAGE_SIZE = 1000
"""Largest page served; bigger requests are coerced down (AIP-158)."""

DEFAULT_PAGE_SIZE = 50
"""Page size used when the request leaves ``page_size`` unset or 0."""

MAX_PAGE_TOKEN_LENGTH = 2048
"""Longest ``page_token`` accepted, in characters (ours are far shorter)."""

PAGE_TOKEN_SECRET_ENV = "CONVEYOR_PAGE_TOKEN_SECRET"  # noqa: S105 - a variable name
"""Environment variable holding the page-token signing key."""

# Used when the variable is unset (never in production: start-up refuses). A random value until
# create_app() installs the one kept in the data directory, so no public constant signs tokens.
_fallback_secret: bytes = secrets.token_bytes(32)
_SIGNATURE_BYTES = hashlib.sha256().digest_size
_TOKEN_CHARS = re.compile(r"[A-Za-z0-9_-]+")
_INVALID_CURSOR_MESSAGE = "page_token is invalid or expired; start again without page_token"
_MISMATCHED_CURSOR_MESSAGE = (
    "page_token does not match the request; keep filter and order_by the same across pages"
)


def clamp_page_size(page_size: int | None) -> int:
    """Returns the page size to serve for a request's ``page_size``.

    Args:
        page_size: The requested size; None or 0 means "use the default".

    Returns:
        ``DEFAULT_PAGE_SIZE`` for None/0, the request itself up to ``MAX_PAGE_SIZE``, and
        ``MAX_PAGE_SIZE`` for anything larger.

    Raises:
        InvalidArgument: ``reason="INVALID_PAGE_SIZE"`` if ``page_size`` is negative.
    """
    if not page_size:
        return DEFAULT_PAGE_SIZE
    if page_size < 0:
        raise InvalidArgument(
            f"page_size must not be negative (got {page_size}); "
            f"omit it or use 1 to {MAX_PAGE_SIZE}",
            reason="INVALID_PAGE_SIZE",
            metadata={"page_size": str(page_size)},
        )
    return min(page_size, MAX_PAGE_SIZE)


def query_fingerprint(*parts: object) -> str:
    """Fingerprints the parts of a list request that must stay fixed across pages.

    Args:
        *parts: E.g. parent, filter text and order_by. None is treated like ``""`` so that
            an omitted and an empty field fingerprint the same; other values are
            JSON-encoded (``str()`` for anything JSON cannot encode).

    Returns:
        The first 16 hex digits of the SHA-256 of the parts.
    """
    normalized = ["" if part is None else part for part in parts]
    encoded = json.dumps(normalized, separators=(",", ":"), sort_keys=True, default=str)
    return hashlib.sha256(encoded.encode()).hexdigest()[:16]


def use_fallback_secret(secret: str) -> None:
    """Sets the key used when ``CONVEYOR_PAGE_TOKEN_SECRET`` is unset (development: the one
    generated in the data directory, so restarts and sibling processes accept the tokens).

    Args:
        secret: The key.
    """
    global _fallback_secret
    _fallback_secret = secret.encode()


def _signing_key() -> bytes:
    """Returns the page-token signing key (read on every call so it can be rotated)."""
    value = os.environ.get(PAGE_TOKEN_SECRET_ENV)
    return value.encode() if value else _fallback_secret


def _sign(payload: bytes) -> bytes:
    """Returns the HMAC-SHA256 of ``payload`` under the signing key."""
    return hmac.new(_signing_key(), payload, hashlib.sha256).digest()


def encode_page_token(position: Mapping[str, object], *, query_fingerprint: str) -> str:
    """Builds an opaque, signed ``next_page_token``.

    Args:
        position: Where the next page starts, e.g. the last row's sort key and id; values
            must be JSON-serializable.
        query_fingerprint: :func:`query_fingerprint` of the request.

    Returns:
        Url-safe base64 (no padding) of compact JSON ``{"f": ..., "p": ...}`` followed by
        its HMAC-SHA256 signature.

    Raises:
        TypeError: If a position value is not JSON-serializable.
    """
    payload = json.dumps(
        {"f": query_fingerprint, "p": dict(position)}, separators=(",", ":"), sort_keys=True
    ).encode()
    return base64.urlsafe_b64encode(payload + _sign(payload)).rstrip(b"=").decode("ascii")


def decode_page_token(token: str | None, *, query_fingerprint: str) -> dict[str, object] | None:
    """Verifies a request's ``page_token`` and returns the position it carries.

    Args:
        token: The ``page_token`` request field; None or empty means the first page.
        query_fingerprint: :func:`query_fingerprint` of the current request.

    Returns:
        The position given to :func:`encode_page_token`, or None for the first page.

    Raises:
        InvalidArgument: ``reason="INVALID_PAGE_TOKEN"`` if the token is garbled, forged or
            signed with another key, or if it was issued for a request with a different
            fingerprint (filter, order_by, parent...).
    """
    if not token:
        return None
    invalid = InvalidArgument(_INVALID_CURSOR_MESSAGE, reason="INVALID_PAGE_TOKEN")
    if len(token) > MAX_PAGE_TOKEN_LENGTH or not _TOKEN_CHARS.fullmatch(token):
        raise invalid
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (binascii.Error, ValueError):
        raise invalid from None
    if base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii") != token:
        raise invalid  # Non-canonical spelling (e.g. changed padding bits): not ours.
    payload, signature = raw[:-_SIGNATURE_BYTES], raw[-_SIGNATURE_BYTES:]
    if not payload or not hmac.compare_digest(signature, _sign(payload)):
        raise invalid
    try:
        decoded: object = json.loads(payload)
    except ValueError:
        raise invalid from None
    if not isinstance(decoded, dict):
        raise invalid
    fingerprint: object = decoded.get("f")
    position: object = decoded.get("p")
    if not isinstance(fingerprint, str) or not isinstance(position, dict):
        raise invalid
    if fingerprint != query_fingerprint:
        raise InvalidArgument(_MISMATCHED_CURSOR_MESSAGE, reason="INVALID_PAGE_TOKEN")
    return {str(key): value for key, value in position.items()}


def decode_after(token: str | None, *, query_fingerprint: str) -> str | None:
    """Returns the keyset position (``after``) of a list call's ``page_token``.

    Args:
        token: The ``page_token`` request field; None or empty means the first page.
        query_fingerprint: :func:`query_fingerprint` of the current request.

    Returns:
        The last key of the previous page, or None for the first page.

    Raises:
        InvalidArgument: As :func:`decode_page_token`.
    """
    position = decode_page_token(token, query_fingerprint=query_fingerprint)
    return str(position["after"]) if position else None


def decode_after_id(token: str | None, *, query_fingerprint: str) -> uuid.UUID | None:
    """:func:`decode_after` for lists keyed by UUID.

    Args:
        token: The ``page_token`` request field.
        query_fingerprint: :func:`query_fingerprint` of the current request.

    Returns:
        The last id of the previous page, or None for the first page.
    """
    after = decode_after(token, query_fingerprint=query_fingerprint)
    return uuid.UUID(after) if after else None


def next_page_token(last: object | None, *, query_fingerprint: str) -> str:
    """Returns the ``next_page_token`` of a keyset page ("" when there is no next page).

    Args:
        last: The page's last key (None when the page is the last one).
        query_fingerprint: :func:`query_fingerprint` of the current request.

    Returns:
        A signed token carrying ``{"after": str(last)}``, or "".
    """
    if last is None:
        return ""
    return encode_page_token({"after": str(last)}, query_fingerprint=query_fingerprint)


def decode_after_keyset(token: str | None, *, query_fingerprint: str) -> Keyset | None:
    """Returns the ``(create_time, id)`` position of a ``page_token`` of a time-ordered list.

    Args:
        token: The ``page_token`` request field; None or empty means the first page.
        query_fingerprint: :func:`query_fingerprint` of the current request.

    Returns:
        The previous page's last ``(create_time, id)``, or None for the first page.

    Raises:
        InvalidArgument: As :func:`decode_page_token` (also for a token of another list).
    """
    position = decode_page_token(token, query_fingerprint=query_fingerprint)
    if not position:
        return None
    try:
        return (
            dt.datetime.fromisoformat(str(position["t"])),
            uuid.UUID(str(position["after"])),
        )
    except (KeyError, ValueError):
        raise InvalidArgument(_INVALID_CURSOR_MESSAGE, reason="INVALID_PAGE_TOKEN") from None


def next_keyset_token(last: Keyset | None, *, query_fingerprint: str) -> str:
    """Returns the ``next_page_token`` of a page ordered by ``(create_time, id)``.

    Args:
        last: The page's last ``(create_time, id)`` (None when the page is the last one).
        query_fingerprint: :func:`query_fingerprint` of the current request.

    Returns:
        A signed token carrying the position, or "".
    """
    if last is None:
        return ""
    return encode_page_token(
        {"t": last[0].isoformat(), "after": str(last[1])}, query_fingerprint=query_fingerprint
    )
