"""Domain error -> AIP-193 error body and HTTP status, in one place."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from domains.shared.errors import DomainError

log = logging.getLogger(__name__)

HTTP_STATUS: dict[str, int] = {
    "INVALID_ARGUMENT": 400,
    "FAILED_PRECONDITION": 400,
    "OUT_OF_RANGE": 400,
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
    "NOT_FOUND": 404,
    "ABORTED": 409,
    "ALREADY_EXISTS": 409,
    "RESOURCE_EXHAUSTED": 429,
    "CANCELLED": 499,
    "DATA_LOSS": 500,
    "UNKNOWN": 500,
    "INTERNAL": 500,
    "UNIMPLEMENTED": 501,
    "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
}
"""google.rpc.Code name -> HTTP status (per google/rpc/code.proto)."""

_STATUS_BY_HTTP: dict[int, str] = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    405: "UNIMPLEMENTED",
    409: "ABORTED",
    413: "OUT_OF_RANGE",
    415: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED",
    501: "UNIMPLEMENTED",
    503: "UNAVAILABLE",
}

ERROR_DOMAIN = "conveyor.dev"


def error_body(
    status: str,
    message: str,
    *,
    http_code: int | None = None,
    reason: str | None = None,
    metadata: dict[str, str] | None = None,
    details: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Builds an AIP-193 error body.

    Args:
        status: Canonical code name.
        message: Developer-facing message.
        http_code: HTTP status (defaults from ``status``).
        reason: ``ErrorInfo.reason``.
        metadata: ``ErrorInfo.metadata``.
        details: Extra detail objects.

    Returns:
        ``{"error": {"code", "status", "message", "details"}}``.
    """
    info = {
        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
        "reason": reason or status,
        "domain": ERROR_DOMAIN,
        "metadata": {k: str(v) for k, v in (metadata or {}).items()},
    }
    return {
        "error": {
            "code": http_code or HTTP_STATUS.get(status, 500),
            "status": status,
            "message": message,
            "details": [info, *(details or [])],
        }
    }


def _response(body: dict[str, Any], headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(body, status_code=body["error"]["code"], headers=headers)


def _field_path(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or str(loc[0] if loc else "request")


def _retry_after(exc: DomainError) -> dict[str, str] | None:
    # An outage named by the domain (a database whose primary and replica are both down) tells
    # clients when to retry, like the outages mapped from driver errors.
    return {"retry-after": "1"} if exc.code == "UNAVAILABLE" else None


async def _domain_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, DomainError)
    return _response(
        error_body(
            exc.code, exc.message, reason=exc.reason, metadata=exc.metadata, details=exc.details
        ),
        headers=_retry_after(exc),
    )


def _json_position(body: Any, offset: Any) -> str:
    """``line 3, column 7`` of character ``offset`` in the request body (JSON errors)."""
    if not isinstance(offset, int):
        return ""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else str(body or "")
    before = text[:offset]
    line = before.count("\n") + 1
    column = offset - (before.rfind("\n") + 1) + 1
    return f" at line {line}, column {column} (character {offset})"


def _not_json_content(request: Request) -> bool:
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    return request.method in ("POST", "PUT", "PATCH") and not (
        media == "application/json" or media.endswith("+json")
    )


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    violations = []
    for err in exc.errors():
        loc = tuple(err.get("loc", ()))
        field = _field_path(loc)
        msg = str(err.get("msg", "invalid value"))
        if err.get("type") == "json_invalid":
            # The location's second part is a character offset, not a field.
            reason = (err.get("ctx") or {}).get("error")
            field = "body"
            msg = (
                "request body is not valid JSON"
                + (f": {reason}" if reason else "")
                + _json_position(getattr(exc, "body", None), loc[1] if len(loc) > 1 else None)
            )
        elif loc == ("body",) and _not_json_content(request):
            # e.g. curl -d '{...}' without -H, which sends application/x-www-form-urlencoded.
            media = request.headers.get("content-type") or "no Content-Type"
            msg = (
                f"expected a JSON object, got a body sent as {media}; send it with"
                " Content-Type: application/json (curl: -H 'content-type: application/json')"
            )
        violations.append({"field": field, "description": msg})
    first = violations[0] if violations else {"field": "request", "description": "invalid request"}
    message = f"{first['field']}: {first['description']}"
    if len(violations) > 1:
        message += f" (and {len(violations) - 1} more problem(s), see details)"
    return _response(
        error_body(
            "INVALID_ARGUMENT",
            message,
            reason="INVALID_REQUEST",
            details=[
                {
                    "@type": "type.googleapis.com/google.rpc.BadRequest",
                    "field_violations": violations,
                }
            ],
        )
    )


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    body = getattr(exc, "body", None)
    if isinstance(body, dict):  # already an AIP-193 body (api.limits' 413)
        return _response(body, headers=getattr(exc, "headers", None))
    status = _STATUS_BY_HTTP.get(
        exc.status_code, "UNKNOWN" if exc.status_code >= 500 else "INVALID_ARGUMENT"
    )
    if exc.status_code == 404:
        message = (
            f"no resource or method at {request.method} {request.url.path}; see /docs for the API"
        )
    elif exc.status_code == 405:
        message = f"method {request.method} is not allowed on {request.url.path}"
    else:
        message = str(exc.detail)
    return _response(
        error_body(status, message, http_code=exc.status_code),
        headers=getattr(exc, "headers", None),
    )


def dependency_down(exc: BaseException) -> str | None:
    """Tells whether ``exc`` means a dependency (database, broker, Redis) is unreachable.

    Walks the cause chain, since SQLAlchemy wraps driver errors.

    Args:
        exc: The error.

    Returns:
        A short name of what is down, or ``None`` if it is some other error.
    """
    import asyncpg
    import redis.exceptions
    import sqlalchemy.exc
    from kombu.exceptions import OperationalError as KombuOperationalError

    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, sqlalchemy.exc.DBAPIError) and current.connection_invalidated:
            return "database"
        if isinstance(
            current,
            asyncpg.PostgresConnectionError
            | asyncpg.exceptions.OperatorInterventionError
            | asyncpg.InterfaceError
            | sqlalchemy.exc.DisconnectionError,
        ):
            return "database"
        if isinstance(current, redis.exceptions.ConnectionError | redis.exceptions.TimeoutError):
            return "redis"
        if isinstance(current, KombuOperationalError):
            return "broker"
        if isinstance(current, ConnectionError | TimeoutError | OSError):
            return _raised_by(current) or "a dependency"
        current = getattr(current, "orig", None) or current.__cause__ or current.__context__
    return None


_CLIENT_PACKAGES = (
    (("asyncpg", "sqlalchemy"), "database"),
    (("redis",), "redis"),
    (("kombu", "amqp", "celery"), "broker"),
)


def _raised_by(exc: BaseException) -> str | None:
    # A bare socket error (a refused connect) says nothing of whom it was for: the client
    # library that raised it does (innermost frame first).
    frames = []
    tb = exc.__traceback__
    while tb is not None:
        frames.append(str(tb.tb_frame.f_globals.get("__name__", "")))
        tb = tb.tb_next
    for module in reversed(frames):
        root = module.split(".", 1)[0]
        for packages, name in _CLIENT_PACKAGES:
            if root in packages:
                return name
    return None


def unstorable_value(exc: BaseException) -> bool:
    """Tells whether PostgreSQL refused a value itself (a NUL character, an invalid escape),
    which is the client's input to fix, not a server fault.

    Args:
        exc: The error.

    Returns:
        True for a data error on a value.
    """
    import asyncpg

    current: BaseException | None = exc
    for _ in range(5):
        if current is None:
            return False
        if isinstance(
            current,
            asyncpg.exceptions.CharacterNotInRepertoireError
            | asyncpg.exceptions.UntranslatableCharacterError
            | asyncpg.exceptions.InvalidTextRepresentationError
            | asyncpg.exceptions.InvalidParameterValueError,
        ):
            return True
        current = getattr(current, "orig", None) or current.__cause__
    return False


def expected_error_response(exc: BaseException) -> JSONResponse | None:
    """Maps an error that is not a bug to its AIP-193 response, logging it in one line.

    Expected errors are: a domain error raised outside a route (the auth middleware's key
    lookup), a value PostgreSQL refuses (NUL characters: the client's to fix, 400) and an
    unreachable dependency (503 with ``Retry-After``: an outage is not a bug, so one WARNING
    line and no traceback).

    Args:
        exc: The error.

    Returns:
        The response, or ``None`` if ``exc`` is a genuine bug.
    """
    if isinstance(exc, DomainError):
        return _response(
            error_body(
                exc.code, exc.message, reason=exc.reason, metadata=exc.metadata, details=exc.details
            ),
            headers=_retry_after(exc),
        )
    if isinstance(exc, StarletteHTTPException):
        body = getattr(exc, "body", None)
        if isinstance(body, dict):
            return _response(body, headers=getattr(exc, "headers", None))
        status = _STATUS_BY_HTTP.get(exc.status_code, "INVALID_ARGUMENT")
        return _response(
            error_body(status, str(exc.detail), http_code=exc.status_code),
            headers=getattr(exc, "headers", None),
        )
    if unstorable_value(exc):
        log.info("value refused by the database: %s", _one_line(exc))
        return _response(
            error_body(
                "INVALID_ARGUMENT",
                "a value contains characters that cannot be stored (such as NUL, \\u0000);"
                " remove them and retry",
                reason="UNSTORABLE_VALUE",
            )
        )
    down = dependency_down(exc)
    if down is not None:
        log.warning("%s unavailable: %s", down, _one_line(exc))
        return _response(
            error_body(
                "UNAVAILABLE",
                f"{down} is unavailable; retry later with the same request_id",
                reason="DEPENDENCY_UNAVAILABLE",
                metadata={"dependency": down},
            ),
            headers={"retry-after": "1"},
        )
    return None


def _one_line(exc: BaseException) -> str:
    # An outage is one log line: the exception's type and first line, never a traceback.
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300] if text else ''}"


class ErrorMiddleware:
    """Turns every exception escaping the app (routes, the auth and body-limit middlewares) into
    an ordinary AIP-193 response.

    Why not ``app.add_exception_handler(Exception, ...)``: Starlette runs that handler in its
    outermost ``ServerErrorMiddleware``, which sends the response and then *re-raises*, so
    uvicorn logs "Exception in ASGI application" with a traceback and closes the keep-alive
    connection, and the metrics middleware (inside it) counts the answer as a 500. Here the
    exception is handled and not re-raised: the connection stays open, ``/metrics`` counts the
    real status, expected errors (:func:`expected_error_response`) are one log line and a
    genuine bug is a 500 logged once, with its traceback and request id.
    """

    def __init__(self, app: ASGIApp) -> None:
        """Wraps ``app``.

        Args:
            app: The ASGI app.
        """
        self.app = app

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
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            if started:  # a body already on its way cannot become an error: let uvicorn close
                raise
            if isinstance(exc, ClientDisconnect):  # nobody is left to answer: not a bug
                log.info("%s %s: client disconnected", scope.get("method"), scope.get("path"))
                return
            response = expected_error_response(exc)
            if response is None:
                response = _internal_error(scope, exc)
            await response(scope, receive, send)


def _internal_error(scope: Scope, exc: BaseException) -> JSONResponse:
    # Log everything, show nothing internal.
    request_id = str(scope.get("state", {}).get("request_id", ""))
    log.error(
        "unhandled error on %s %s (request %s)",
        scope.get("method", ""),
        scope.get("path", ""),
        request_id,
        exc_info=exc,
    )
    return _response(
        error_body(
            "INTERNAL",
            f"internal error; it was logged with request id {request_id!r}: retry later or"
            " report it",
        )
    )


def install_error_handlers(app: FastAPI) -> None:
    """Registers the AIP-193 handlers on ``app``.

    Domain, validation and HTTP errors of routes are mapped by Starlette's
    ``ExceptionMiddleware`` (ordinary responses); anything else, and errors raised by the
    middlewares outside it, is left to :class:`ErrorMiddleware`, which ``create_app`` adds. No
    handler is registered for ``Exception`` (see :class:`ErrorMiddleware` for why).

    Args:
        app: The FastAPI app.
    """
    app.add_exception_handler(DomainError, _domain_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)


class ErrorInfoOut(BaseModel):
    """``google.rpc.ErrorInfo`` (and other AIP-193 details)."""

    model_config = ConfigDict(populate_by_name=True, extra="allow")

    type_url: str = Field(alias="@type")
    reason: str | None = None
    domain: str | None = None
    metadata: dict[str, str] = {}


class ErrorOut(BaseModel):
    """The AIP-193 error object."""

    code: int = Field(description="HTTP status code.")
    status: str = Field(description="google.rpc.Code name, e.g. INVALID_ARGUMENT.")
    message: str = Field(description="What went wrong and what to fix.")
    details: list[ErrorInfoOut] = []


def _example(code: int, status: str, message: str, reason: str) -> dict[str, Any]:
    return error_body(status, message, http_code=code, reason=reason)


class ErrorResponse(BaseModel):
    """Every error response: ``{"error": {...}}`` (AIP-193)."""

    model_config = ConfigDict(
        json_schema_extra={
            "example": _example(
                400,
                "INVALID_ARGUMENT",
                "steps: Input should be greater than or equal to 1",
                "INVALID_REQUEST",
            )
        }
    )

    error: ErrorOut


def _error_response(description: str, example: dict[str, Any]) -> dict[str, Any]:
    return {
        "model": ErrorResponse,
        "description": description,
        "content": {"application/json": {"example": example}},
    }


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: _error_response(
        "INVALID_ARGUMENT (a bad field, filter or page token) or FAILED_PRECONDITION (the resource"
        " is not in a state that allows it)",
        _example(
            400,
            "INVALID_ARGUMENT",
            "filter: OR is not supported; combine conditions with AND",
            "INVALID_FILTER",
        ),
    ),
    404: _error_response(
        "NOT_FOUND: no such resource",
        _example(
            404,
            "NOT_FOUND",
            "operations/platform.019a8f0e-7d1c-7b3e-9c55-3f1f9e0a1b2c does not exist",
            "OPERATION_NOT_FOUND",
        ),
    ),
    409: _error_response(
        "ALREADY_EXISTS: the request_id was used with a different body (or ABORTED on a conflict)",
        _example(
            409,
            "ALREADY_EXISTS",
            "request_id 'r-1' was already used with a different request body",
            "REQUEST_ID_REUSED",
        ),
    ),
    500: _error_response(
        "INTERNAL: unexpected error; nothing internal is shown, the request id is logged",
        _example(
            500,
            "INTERNAL",
            "internal error; it was logged with request id 'abc': retry later or report it",
            "INTERNAL",
        ),
    ),
    503: _error_response(
        "UNAVAILABLE: a dependency is down; retry with backoff",
        _example(503, "UNAVAILABLE", "not ready: broker: OperationalError", "NOT_READY"),
    ),
}
"""Error responses listed on every route in the OpenAPI document (AIP-193 bodies)."""
