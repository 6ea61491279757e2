"""Console sessions: the API key in a signed, HttpOnly, SameSite=Strict cookie, plus a CSRF
token that every form posts back.

The cookie holds ``base64(json{"k": key, "c": csrf, "e": expiry})`` and an HMAC-SHA256 of it, so
it cannot be forged or altered. It is only sent to this site (HttpOnly: scripts cannot read it;
SameSite=Strict: other sites' pages cannot make the browser send it; Secure over https). The key
it carries is the user's own; signing out deletes the cookie.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import json
import secrets
import time

COOKIE = "conveyor_console"
"""Name of the session cookie."""


@dataclasses.dataclass(frozen=True)
class Session:
    """A signed-in console user.

    Attributes:
        api_key: The API key every page calls /v1 with.
        csrf: Token every form must post back (``csrf`` field).
        expires: Unix time the session ends.
    """

    api_key: str
    csrf: str
    expires: float


def signing_key(configured: str) -> bytes:
    """Returns the HMAC key of session cookies.

    Args:
        configured: ``CONVEYOR_SECURITY__CONSOLE_SESSION_SECRET`` (may be empty).

    Returns:
        The configured secret, else one derived from the page-token secret (the same on every
        API process), separated from its other use by a label.
    """
    if configured:
        return configured.encode()
    from api import pagination

    # The page-token key: CONVEYOR_PAGE_TOKEN_SECRET, else the one generated for this data dir.
    base = pagination._signing_key()
    return hmac.new(base, b"conveyor-console-session", hashlib.sha256).digest()


def new_session(api_key: str, max_age: float) -> Session:
    """Starts a session for ``api_key``.

    Args:
        api_key: The verified key.
        max_age: Seconds it lasts.

    Returns:
        The session (with a fresh CSRF token).
    """
    return Session(api_key=api_key, csrf=secrets.token_urlsafe(24), expires=time.time() + max_age)


def dump(session: Session, key: bytes) -> str:
    """Signs a session into a cookie value.

    Args:
        session: The session.
        key: Signing key.

    Returns:
        ``payload.signature`` (URL-safe base64).
    """
    payload = json.dumps({"k": session.api_key, "c": session.csrf, "e": session.expires})
    body = base64.urlsafe_b64encode(payload.encode()).decode().rstrip("=")
    sig = hmac.new(key, body.encode(), hashlib.sha256).digest()
    return f"{body}.{base64.urlsafe_b64encode(sig).decode().rstrip('=')}"


def load(value: str | None, key: bytes) -> Session | None:
    """Verifies a cookie value.

    Args:
        value: The cookie (may be missing or garbage).
        key: Signing key.

    Returns:
        The session, or ``None`` if missing, tampered with or expired.
    """
    if not value or len(value) > 4096 or "." not in value:
        return None
    body, _, sig = value.partition(".")
    expected = base64.urlsafe_b64encode(hmac.new(key, body.encode(), hashlib.sha256).digest())
    if not hmac.compare_digest(expected.decode().rstrip("="), sig):
        return None
    try:
        data = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        session = Session(api_key=str(data["k"]), csrf=str(data["c"]), expires=float(data["e"]))
    except (ValueError, KeyError, TypeError):
        return None
    return session if session.expires > time.time() else None


def csrf_ok(session: Session, token: str | None) -> bool:
    """Whether a form's CSRF token is the session's.

    Args:
        session: The session.
        token: The posted ``csrf`` field.

    Returns:
        True if it matches (constant-time comparison).
    """
    return bool(token) and hmac.compare_digest(session.csrf, str(token))
