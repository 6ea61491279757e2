"""Who is calling: API-key authentication, the principal of a request and the scopes routes need.

Every ``/v1`` request must carry ``Authorization: Bearer cvk_<prefix>_<secret>`` (see
``domains.platform.keys``); :class:`AuthMiddleware` verifies it before routing, so no ``/v1``
route can escape authentication, and stores the :class:`Principal` on the request. Missing,
malformed, unknown, expired or revoked keys get 401 UNAUTHENTICATED with
``WWW-Authenticate: Bearer``. Each request then needs the scope its path maps to in
:data:`SCOPE_AREAS` (GET/HEAD read, anything else write): 403 PERMISSION_DENIED otherwise.
Routes can ask for more with ``Depends(require_scope("imports:write"))``, which also returns the
caller: routers pass ``caller.tenant`` to services, which never show one tenant's resources to
another (404, not 403). Health, metrics and docs need no key.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from fastapi import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from api.errors import error_body
from domains.platform.keys.model import OPERATOR_SCOPE
from domains.shared.errors import DomainError, PermissionDenied, Unauthenticated

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Principal:
    """The authenticated caller.

    Attributes:
        tenant: Tenant whose resources the caller sees.
        key_id: API key prefix (``None`` when authentication is off).
        scopes: Granted scopes, e.g. ``imports:write``; ``*`` grants every tenant scope, not
            the operator's (``platform:admin``), which must be granted by name.
    """

    tenant: str = "default"
    key_id: str | None = None
    scopes: frozenset[str] = frozenset({"*"})

    def allows(self, scope: str) -> bool:
        """Whether the principal holds ``scope``.

        Args:
            scope: ``<area>:<read|write>``; ``write`` implies ``read``; ``*`` needs ``*``;
                the operator scope needs itself and implies ``schedules:write``.

        Returns:
            True if granted.
        """
        if scope == OPERATOR_SCOPE:
            return scope in self.scopes  # operators are named, never implied by "*"
        if "*" in self.scopes or scope in self.scopes:
            return True
        area, _, action = scope.partition(":")
        if area == "schedules" and OPERATOR_SCOPE in self.scopes:
            return True  # the operator's resources are schedules: no second scope to remember
        return action == "read" and f"{area}:write" in self.scopes

    @property
    def operator(self) -> bool:
        """Whether the caller holds the operator scope (``platform:admin``)."""
        return self.allows(OPERATOR_SCOPE)


ANONYMOUS = Principal(scopes=frozenset({"*", OPERATOR_SCOPE}))
"""The principal when authentication is off (``CONVEYOR_SECURITY__AUTH_REQUIRED=false``): local
experiments, so the caller is also the operator."""

SCOPE_AREAS: dict[str, str] = {
    "operations": "operations",
    "pings": "operations",
    "datasets": "imports",
    "imports": "imports",
    "records": "imports",
    "endpoints": "webhooks",
    "events": "webhooks",
    "deliveries": "webhooks",
    "webhooks": "webhooks",
    "schedules": "schedules",
    "workflows": "schedules",
    "reports": "reports",
    # The route itself asks for "*" (it shows the whole platform); the area only gates entry.
    "system": "operations",
}
"""First path segment after ``/v1/`` -> scope area. A ``/v1`` path missing here needs ``*``
(fail closed: a new router is reachable only by all-scope keys until it is mapped)."""

_READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_MAX_AUTHORIZATION_LENGTH = 512


def route_scope(method: str, path: str) -> str:
    """Returns the scope a request needs, from :data:`SCOPE_AREAS`.

    Args:
        method: HTTP method.
        path: URL path under ``/v1``.

    Returns:
        ``<area>:read`` for GET/HEAD/OPTIONS, ``<area>:write`` otherwise; ``*`` when the path's
        resource is not mapped.
    """
    segment = path.removeprefix("/v1/").split("/", 1)[0].split(":", 1)[0]
    area = SCOPE_AREAS.get(segment)
    if area is None:
        return "*"
    return f"{area}:{'read' if method.upper() in _READ_METHODS else 'write'}"


def principal(request: Request) -> Principal:
    """Returns the caller of ``request`` (set by :class:`AuthMiddleware`).

    Args:
        request: The request.

    Returns:
        The principal (:data:`ANONYMOUS` when authentication is off).

    Raises:
        Unauthenticated: If authentication is on and the request was not authenticated (a
            route outside ``/v1`` asking for a scope).
    """
    value = getattr(request.state, "principal", None)
    if isinstance(value, Principal):
        return value
    if getattr(request.state, "auth_required", True):
        # Fail closed: a route the middleware did not authenticate gets no all-scope anonymous.
        raise Unauthenticated(
            "this route needs an API key: send Authorization: Bearer <key>",
            reason="API_KEY_MISSING",
        )
    return ANONYMOUS


def require_scope(scope: str) -> Callable[[Request], Awaitable[Principal]]:
    """Returns a dependency that refuses callers without ``scope`` (403 PERMISSION_DENIED).

    Args:
        scope: E.g. ``imports:write``.

    Returns:
        The dependency; it returns the caller.
    """

    # async: no I/O here, and a sync dependency would hop to the thread pool on every request.
    async def dependency(request: Request) -> Principal:
        return authorize(request, scope)

    return dependency


def authorize(request: Request, scope: str) -> Principal:
    """Returns the caller of ``request`` if it holds ``scope``: ``require_scope`` as a call.

    The submit routes call it instead of declaring ``Depends(require_scope(...))``: every
    dependency costs FastAPI a round of dependency solving per request (about 15 us), which
    the hottest routes spare (docs/architecture.md, "Hot routes").

    Args:
        request: The request.
        scope: E.g. ``imports:write``.

    Returns:
        The caller.

    Raises:
        PermissionDenied: If the caller lacks ``scope`` (403 PERMISSION_DENIED).
    """
    caller = principal(request)
    if not caller.allows(scope):
        raise _missing_scope(scope)
    return caller


def _missing_scope(scope: str) -> PermissionDenied:
    return PermissionDenied(
        f"this API key lacks the {scope!r} scope; create a key with it",
        reason="MISSING_SCOPE",
        metadata={"scope": scope},
    )


class KeyVerifier(Protocol):
    """Verifies a presented key (``domains.platform.keys.service.ApiKeyService``)."""

    async def authenticate(self, token: str) -> Any:
        """Returns the active key (``tenant``, ``prefix``, ``scopes``) or raises Unauthenticated."""


RateLimit = Callable[[str], Awaitable[float]]
"""``await limit(key_prefix)`` -> 0 when the request may go on, else seconds until it may."""


def bearer_token(scope: Scope) -> str | None:
    """Returns the bearer token of a request, or ``None`` if there is none.

    Args:
        scope: ASGI scope.

    Returns:
        The token text (``Authorization: Bearer <token>``, scheme case-insensitive).
    """
    for name, value in scope.get("headers") or []:
        if name == b"authorization":
            if len(value) > _MAX_AUTHORIZATION_LENGTH:
                return ""
            scheme, _, token = value.decode("latin-1").strip().partition(" ")
            return token.strip() if scheme.lower() == "bearer" else ""
    return None


def _unauthenticated(message: str, reason: str, metadata: dict[str, str] | None = None) -> Any:
    body = error_body("UNAUTHENTICATED", message, reason=reason, metadata=metadata)
    return JSONResponse(
        body, status_code=401, headers={"www-authenticate": 'Bearer realm="conveyor"'}
    )


class AuthMiddleware:
    """Authenticates every ``/v1`` request, checks its mapped scope and applies the rate limit.

    Pure ASGI (no ``BaseHTTPMiddleware``): it answers 401/403/429 itself, in AIP-193 form,
    before the request reaches a router.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        keys: KeyVerifier,
        required: bool = True,
        rate_limit: RateLimit | None = None,
    ) -> None:
        """Wraps ``app``.

        Args:
            app: The ASGI app.
            keys: Key verifier.
            required: ``False`` lets every caller in as :data:`ANONYMOUS` (development only).
            rate_limit: Per-key limiter, or ``None`` for no limit.
        """
        self.app = app
        self._keys = keys
        self._required = required
        self._rate_limit = rate_limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handles one ASGI call.

        Args:
            scope: ASGI scope.
            receive: ASGI receive.
            send: ASGI send.
        """
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        root = scope.get("root_path", "")
        if root and path.startswith(root):  # behind a proxy prefix, routes see the rest
            path = path[len(root) :]
        state = scope.setdefault("state", {})
        state["auth_required"] = self._required
        if not (path == "/v1" or path.startswith("/v1/")):
            await self.app(scope, receive, send)
            return
        if not self._required:
            state["principal"] = ANONYMOUS
            await self.app(scope, receive, send)
            return
        response = await self._check(scope, state, path)
        if response is not None:
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)

    async def _check(self, scope: Scope, state: dict[str, Any], path: str) -> Any:
        token = bearer_token(scope)
        if token is None:
            return _unauthenticated(
                "this API needs an API key: send Authorization: Bearer <key>"
                " (create one with `conveyor keys create`)",
                "API_KEY_MISSING",
            )
        if not token:
            return _unauthenticated(
                "the Authorization header must be 'Bearer <key>'", "INVALID_AUTHORIZATION"
            )
        try:
            key = await self._keys.authenticate(token)
        except DomainError as exc:
            if exc.code != "UNAUTHENTICATED":
                raise
            return _unauthenticated(exc.message, exc.reason, exc.metadata)
        caller = Principal(tenant=key.tenant, key_id=key.prefix, scopes=frozenset(key.scopes))
        state["principal"] = caller
        if self._rate_limit is not None:
            wait = await self._rate_limit(key.prefix)
            if wait > 0:
                retry_after = str(max(1, math.ceil(wait)))
                body = error_body(
                    "RESOURCE_EXHAUSTED",
                    f"rate limit of this API key exceeded; retry after {retry_after} s",
                    reason="RATE_LIMITED",
                    metadata={"key_prefix": key.prefix, "retry_after_seconds": retry_after},
                )
                return JSONResponse(body, status_code=429, headers={"retry-after": retry_after})
        needed = route_scope(scope.get("method", "GET"), path)
        if not caller.allows(needed):
            denied = _missing_scope(needed)
            body = error_body(
                "PERMISSION_DENIED", denied.message, reason=denied.reason, metadata=denied.metadata
            )
            return JSONResponse(body, status_code=403)
        return None
