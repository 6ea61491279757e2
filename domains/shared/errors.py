"""Domain errors.

Domain errors carry a canonical code (google.rpc.Code name) and a machine-readable
``reason``, never an HTTP status: ``api/errors.py`` maps codes to HTTP in one place.
"""

from __future__ import annotations

from typing import Any, ClassVar


class DomainError(Exception):
    """Base class of every error a domain raises on purpose.

    Attributes:
        code: Canonical code name, e.g. ``NOT_FOUND``.
        reason: UPPER_SNAKE_CASE machine-readable reason for ``ErrorInfo``.
        message: Human-readable message saying what to fix.
        metadata: Extra string key/values for ``ErrorInfo.metadata``.
    """

    code: ClassVar[str] = "UNKNOWN"
    default_reason: ClassVar[str] = "UNKNOWN"

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        metadata: dict[str, str] | None = None,
        details: list[dict[str, Any]] | None = None,
    ) -> None:
        """Creates the error.

        Args:
            message: What went wrong and what to fix.
            reason: Machine-readable reason; defaults to the class default.
            metadata: Extra context for clients.
            details: Extra AIP-193 detail objects (e.g. BadRequest field violations).
        """
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason
        self.metadata = dict(metadata or {})
        self.details = list(details or [])


class InvalidArgument(DomainError):
    """The client sent a value that is wrong whatever the system state."""

    code = "INVALID_ARGUMENT"
    default_reason = "INVALID_ARGUMENT"


class NotFound(DomainError):
    """The named resource does not exist."""

    code = "NOT_FOUND"
    default_reason = "RESOURCE_NOT_FOUND"


class AlreadyExists(DomainError):
    """The resource (or request id) already exists with different content."""

    code = "ALREADY_EXISTS"
    default_reason = "ALREADY_EXISTS"


class FailedPrecondition(DomainError):
    """The system is not in a state that allows the request."""

    code = "FAILED_PRECONDITION"
    default_reason = "FAILED_PRECONDITION"


class PermissionDenied(DomainError):
    """The caller is known but lacks the permission (scope) for the call."""

    code = "PERMISSION_DENIED"
    default_reason = "PERMISSION_DENIED"


class Unauthenticated(DomainError):
    """The caller presented no valid credentials."""

    code = "UNAUTHENTICATED"
    default_reason = "UNAUTHENTICATED"


class ResourceExhausted(DomainError):
    """A quota or rate limit was hit, or a payload is too large."""

    code = "RESOURCE_EXHAUSTED"
    default_reason = "RESOURCE_EXHAUSTED"


class Conflict(DomainError):
    """Concurrency conflict: somebody else changed the resource first."""

    code = "ABORTED"
    default_reason = "CONFLICT"


class Unavailable(DomainError):
    """A dependency is temporarily unavailable; retrying later may succeed."""

    code = "UNAVAILABLE"
    default_reason = "UNAVAILABLE"


class DeadlineExceeded(DomainError):
    """The work did not finish within its deadline."""

    code = "DEADLINE_EXCEEDED"
    default_reason = "DEADLINE_EXCEEDED"


class Internal(DomainError):
    """An invariant was broken; never shown with internals to clients."""

    code = "INTERNAL"
    default_reason = "INTERNAL"


class TransientError(Unavailable):
    """A failure inside a task that is worth retrying with backoff."""

    default_reason = "TRANSIENT_FAILURE"


class PermanentError(DomainError):
    """A failure inside a task that retrying cannot fix."""

    code = "FAILED_PRECONDITION"
    default_reason = "PERMANENT_FAILURE"
