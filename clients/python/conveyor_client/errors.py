"""AIP-193 errors of the Conveyor API as typed exceptions.

Every error response of the API is ``{"error": {"code", "status", "message", "details"}}``;
:func:`from_response` turns it into the subclass of :class:`ApiError` named after its
``status`` (``NOT_FOUND`` -> :class:`NotFound`, ...), so callers catch what they can handle.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import httpx


class ConveyorError(Exception):
    """Base class of every error this client raises."""


class ConnectionFailed(ConveyorError):
    """The API could not be reached (after the retries the call allowed)."""


@dataclasses.dataclass(frozen=True)
class FieldViolation:
    """One bad field of a request (``google.rpc.BadRequest.FieldViolation``).

    Attributes:
        field: Dotted path of the field, e.g. ``fields.0.type``.
        description: What is wrong with it.
    """

    field: str
    description: str


class ApiError(ConveyorError):
    """An AIP-193 error answered by the API.

    Attributes:
        http_status: HTTP status code.
        status: Canonical code name, e.g. ``NOT_FOUND``.
        message: Human-readable message (says what to fix).
        reason: ``ErrorInfo.reason``, e.g. ``MISSING_SCOPE`` (``None`` if absent).
        metadata: ``ErrorInfo.metadata``.
        details: The raw ``details`` list.
        retry_after: ``Retry-After`` seconds, when the response carried it.
        aip193: Whether the body was an AIP-193 error (``False``: e.g. a proxy's HTML page,
            whose text is then the message).
    """

    status_name = "UNKNOWN"

    def __init__(
        self,
        message: str,
        *,
        http_status: int = 500,
        status: str | None = None,
        details: list[dict[str, Any]] | None = None,
        retry_after: float | None = None,
        aip193: bool = True,
    ) -> None:
        super().__init__(f"{http_status} {status or self.status_name}: {message}")
        self.http_status = http_status
        self.status = status or self.status_name
        self.message = message
        self.details = details or []
        self.retry_after = retry_after
        self.aip193 = aip193
        info = next((d for d in self.details if str(d.get("@type", "")).endswith("ErrorInfo")), {})
        self.reason: str | None = info.get("reason")
        self.metadata: dict[str, Any] = dict(info.get("metadata") or {})

    @property
    def field_violations(self) -> list[FieldViolation]:
        """The ``BadRequest`` field violations among the details (empty if none)."""
        out: list[FieldViolation] = []
        for detail in self.details:
            if str(detail.get("@type", "")).endswith("BadRequest"):
                for v in detail.get("field_violations") or detail.get("fieldViolations") or []:
                    out.append(
                        FieldViolation(str(v.get("field", "")), str(v.get("description", "")))
                    )
        return out


class InvalidArgument(ApiError):
    """400 INVALID_ARGUMENT: the request is malformed (see :attr:`field_violations`)."""

    status_name = "INVALID_ARGUMENT"


class FailedPrecondition(ApiError):
    """400 FAILED_PRECONDITION: the resource is not in a state that allows the call."""

    status_name = "FAILED_PRECONDITION"


class OutOfRange(ApiError):
    """400/413 OUT_OF_RANGE: a value or the request body is beyond its limit."""

    status_name = "OUT_OF_RANGE"


class Unauthenticated(ApiError):
    """401 UNAUTHENTICATED: no API key, or an unknown, expired or revoked one."""

    status_name = "UNAUTHENTICATED"


class PermissionDenied(ApiError):
    """403 PERMISSION_DENIED: the key lacks the scope the call needs."""

    status_name = "PERMISSION_DENIED"


class NotFound(ApiError):
    """404 NOT_FOUND: no such resource (or it belongs to another tenant)."""

    status_name = "NOT_FOUND"


class AlreadyExists(ApiError):
    """409 ALREADY_EXISTS: e.g. a request_id reused with a different request."""

    status_name = "ALREADY_EXISTS"


class Aborted(ApiError):
    """409 ABORTED: a concurrent change won; read again and retry."""

    status_name = "ABORTED"


class ResourceExhausted(ApiError):
    """429 RESOURCE_EXHAUSTED: rate limit or quota; wait :attr:`retry_after` seconds."""

    status_name = "RESOURCE_EXHAUSTED"


class Cancelled(ApiError):
    """499 CANCELLED."""

    status_name = "CANCELLED"


class Internal(ApiError):
    """500 INTERNAL / UNKNOWN / DATA_LOSS: a server bug."""

    status_name = "INTERNAL"


class Unimplemented(ApiError):
    """501 UNIMPLEMENTED."""

    status_name = "UNIMPLEMENTED"


class Unavailable(ApiError):
    """503 UNAVAILABLE: a dependency is down; retrying later (same request_id) is safe."""

    status_name = "UNAVAILABLE"


class DeadlineExceeded(ApiError):
    """504 DEADLINE_EXCEEDED."""

    status_name = "DEADLINE_EXCEEDED"


_BY_STATUS: dict[str, type[ApiError]] = {
    cls.status_name: cls
    for cls in (
        InvalidArgument,
        FailedPrecondition,
        OutOfRange,
        Unauthenticated,
        PermissionDenied,
        NotFound,
        AlreadyExists,
        Aborted,
        ResourceExhausted,
        Cancelled,
        Internal,
        Unimplemented,
        Unavailable,
        DeadlineExceeded,
    )
}
_BY_STATUS["UNKNOWN"] = Internal
_BY_STATUS["DATA_LOSS"] = Internal

_BY_HTTP: dict[int, type[ApiError]] = {
    400: InvalidArgument,
    401: Unauthenticated,
    403: PermissionDenied,
    404: NotFound,
    409: Aborted,
    413: OutOfRange,
    429: ResourceExhausted,
    499: Cancelled,
    501: Unimplemented,
    503: Unavailable,
    504: DeadlineExceeded,
}


def retry_after_seconds(response: httpx.Response) -> float | None:
    """Returns the ``Retry-After`` of a response in seconds (``None`` if absent or a date).

    Args:
        response: The response.

    Returns:
        Seconds, or ``None``.
    """
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def from_response(response: httpx.Response) -> ApiError:
    """Builds the typed error of an error response.

    Args:
        response: A response with status >= 400 (its body already read).

    Returns:
        The matching :class:`ApiError` subclass instance.
    """
    try:
        error = response.json().get("error") or {}
    except (ValueError, AttributeError):
        error = {}
    if not isinstance(error, dict):
        error = {}
    status = error.get("status")
    cls = _BY_STATUS.get(str(status)) if status else None
    if cls is None:
        cls = _BY_HTTP.get(
            response.status_code, Internal if response.status_code >= 500 else ApiError
        )
    message = error.get("message") or response.text.strip()[:300] or response.reason_phrase
    details = error.get("details") if isinstance(error.get("details"), list) else []
    return cls(
        str(message),
        http_status=response.status_code,
        status=str(status) if status else None,
        details=details,
        retry_after=retry_after_seconds(response),
        aip193=bool(status),
    )
