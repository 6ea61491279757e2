"""Who is calling: the principal of a request and the scopes a route requires.

Routers take the caller's tenant from :func:`principal` and pass it to services, which record it
on every resource and never show one tenant's resources to another (404, not 403). Each route
declares the scope it needs with ``dependencies=[Depends(require_scope("imports:write"))]``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from fastapi import Request

from domains.shared.errors import PermissionDenied


@dataclasses.dataclass(frozen=True)
class Principal:
    """The authenticated caller.

    Attributes:
        tenant: Tenant whose resources the caller sees.
        key_id: API key id (``None`` when authentication is off).
        scopes: Granted scopes, e.g. ``imports:write``; ``*`` grants all.
    """

    tenant: str = "default"
    key_id: str | None = None
    scopes: frozenset[str] = frozenset({"*"})

    def allows(self, scope: str) -> bool:
        """Whether the principal holds ``scope``.

        Args:
            scope: ``<area>:<read|write>``; ``write`` implies ``read``.

        Returns:
            True if granted.
        """
        if "*" in self.scopes or scope in self.scopes:
            return True
        area, _, action = scope.partition(":")
        return action == "read" and f"{area}:write" in self.scopes


ANONYMOUS = Principal()
"""The principal when authentication is off (development)."""


def principal(request: Request) -> Principal:
    """Returns the caller of ``request`` (set by the authentication layer).

    Args:
        request: The request.

    Returns:
        The principal.
    """
    value = getattr(request.state, "principal", None)
    return value if isinstance(value, Principal) else ANONYMOUS


def require_scope(scope: str) -> Callable[[Request], Principal]:
    """Returns a dependency that refuses callers without ``scope`` (403 PERMISSION_DENIED).

    Args:
        scope: E.g. ``imports:write``.

    Returns:
        The dependency.
    """

    def dependency(request: Request) -> Principal:
        caller = principal(request)
        if not caller.allows(scope):
            raise PermissionDenied(
                f"this API key lacks the {scope!r} scope; create a key with it",
                reason="MISSING_SCOPE",
                metadata={"scope": scope},
            )
        return caller

    return dependency
