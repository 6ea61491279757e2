"""``create_app()``: the FastAPI application with /v1 routers, docs, errors and health."""

from __future__ import annotations

import contextlib
import importlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from celery import Celery
from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse

from api import pagination
from api.auth import AuthMiddleware
from api.errors import ERROR_RESPONSES, ErrorMiddleware, error_body, install_error_handlers
from api.limits import UPLOAD_ROUTE, BodyLimitMiddleware, TokenBucketLimiter
from api.middleware import ReadYourWritesMiddleware, RequestIdMiddleware, request_id_var
from app.adapters.celery_app import create_celery
from app.config import Settings, get_settings
from app.container import Container
from app.db import EngineRegistry
from app.runtime.heap import freeze_heap
from app.runtime.outbox import OutboxPublisher
from app.wiring import modules
from monitoring import health
from monitoring import logging as conveyor_logging
from monitoring import metrics as http_metrics

log = logging.getLogger(__name__)


class CeleryControl:
    """Task control through Celery (revoke)."""

    def __init__(self, celery: Celery) -> None:
        """Wraps ``celery``.

        Args:
            celery: The Celery app.
        """
        self._celery = celery

    def revoke(self, task_id: str) -> None:
        """Asks every worker to skip ``task_id`` (best effort, no terminate).

        Args:
            task_id: Task id (the operation id).
        """
        self._celery.control.revoke(task_id)


DOCS_ASSETS_URL = "/docs/assets"
_REDOC_LOGO = b"https://cdn.redoc.ly/redoc/logo-mini.svg"


def _offline_docs(app: FastAPI) -> None:
    """Serves Swagger UI at ``/docs`` and ReDoc at ``/redoc`` with no request leaving the host.

    FastAPI's default pages load their JavaScript, CSS and fonts from a CDN and stay blank
    offline. The assets come from the ``fastapi-offline`` package (Swagger UI and ReDoc builds
    shipped in its wheel), served by this app under ``/docs/assets``; ReDoc without Google Fonts.
    """
    import pathlib

    import fastapi_offline
    from fastapi.openapi.docs import (
        get_redoc_html,
        get_swagger_ui_html,
        get_swagger_ui_oauth2_redirect_html,
    )
    from fastapi.responses import HTMLResponse, Response
    from fastapi.staticfiles import StaticFiles
    from starlette.requests import Request

    static = pathlib.Path(fastapi_offline.__file__).parent / "static"
    redoc_js: list[bytes] = []

    async def redoc_script(_: Request) -> Response:
        # ReDoc's side menu shows a logo from cdn.redoc.ly: the one request it makes elsewhere.
        if not redoc_js:
            text = (static / "redoc.standalone.js").read_bytes()
            redoc_js.append(text.replace(_REDOC_LOGO, f"{DOCS_ASSETS_URL}/favicon.png".encode()))
        return Response(
            redoc_js[0],
            media_type="text/javascript",
            headers={"cache-control": "public, max-age=3600"},
        )

    # Before the mount, which would otherwise serve the file as shipped.
    app.add_route(f"{DOCS_ASSETS_URL}/redoc.standalone.js", redoc_script, include_in_schema=False)
    app.mount(DOCS_ASSETS_URL, StaticFiles(directory=static), name="docs-assets")
    openapi_url = str(app.openapi_url)
    redirect_url = str(app.swagger_ui_oauth2_redirect_url)

    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=f"{root}{openapi_url}",
            title=f"{app.title} - Swagger UI",
            oauth2_redirect_url=f"{root}{redirect_url}",
            swagger_js_url=f"{root}{DOCS_ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{DOCS_ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{root}{DOCS_ASSETS_URL}/favicon.png",
            swagger_ui_parameters=app.swagger_ui_parameters,
        )

    async def oauth2_redirect(_: Request) -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_redoc_html(
            openapi_url=f"{root}{openapi_url}",
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{root}{DOCS_ASSETS_URL}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{DOCS_ASSETS_URL}/favicon.png",
            with_google_fonts=False,
        )

    app.add_route("/docs", swagger_ui, include_in_schema=False)
    app.add_route(redirect_url, oauth2_redirect, include_in_schema=False)
    app.add_route("/redoc", redoc, include_in_schema=False)


def server_app() -> FastAPI:
    """The application ``conveyor api`` serves: :func:`create_app`, then :func:`freeze_heap`.

    Returns:
        The FastAPI app.
    """
    app = create_app()
    freeze_heap()
    return app


def create_app(settings: Settings | None = None, *, celery: Celery | None = None) -> FastAPI:
    """Builds the API.

    Args:
        settings: Settings (default: from the environment).
        celery: Celery app to publish with (default: built from settings).

    Returns:
        The FastAPI app.
    """
    settings = settings or get_settings()
    settings.database_for("platform")  # fail fast with one clear line
    # Production refuses to start without its secrets (ConfigError names the variable); in
    # development they come from the data directory, generated on first start.
    settings.require_secrets()
    pagination.use_fallback_secret(settings.page_token_secret())
    celery = celery or create_celery(settings)
    registry = EngineRegistry(settings)
    publisher = OutboxPublisher(registry, settings)
    container = Container(settings, registry, after_commit=publisher.publish_now)

    security = settings.security
    limiter = (
        TokenBucketLimiter(
            security.rate_limit_per_second, security.rate_limit_burst, rate_limit_redis(settings)
        )
        if security.rate_limit_enabled
        else None
    )

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await publisher.drain()
        if limiter is not None:
            await limiter.close()
        await registry.dispose()

    app = FastAPI(
        title="Conveyor API",
        version="1.0.0",
        description=(
            "Submit jobs, watch their progress as long-running operations (AIP-151), and manage "
            "the domains' resources. Errors follow AIP-193."
        ),
        # Production may hide the API description (CONVEYOR_SECURITY__DOCS_ENABLED=false).
        # /docs and /redoc are added by _offline_docs (FastAPI's own pages load a CDN).
        docs_url=None,
        redoc_url=None,
        openapi_url="/openapi.json" if security.docs_enabled else None,
        lifespan=lifespan,
    )
    if security.docs_enabled:
        _offline_docs(app)
    app.state.settings = settings
    app.state.container = container
    app.state.publisher = publisher
    app.state.celery = celery
    # Routes reach the services through api.deps (one dependency per container attribute).
    app.state.control = CeleryControl(celery)
    # Outermost last: metrics -> request id -> errors -> authentication/rate limit -> body caps
    # -> read-your-writes -> app. Errors sits inside metrics and request id, so a mapped error
    # is counted under its real status and carries the id, and outside auth, whose key lookup
    # can meet an outage. Read-your-writes needs the caller auth found.
    replicas = settings.replicas
    if container.replicas.domains and replicas.read_your_writes:
        app.add_middleware(
            ReadYourWritesMiddleware,
            window_seconds=replicas.max_lag_seconds + replicas.check_seconds + 1.0,
        )
    app.add_middleware(
        BodyLimitMiddleware,
        routes=lambda: app.router.routes,
        max_body_bytes=security.max_body_bytes,
        # Upload routes: one cap, the smaller of ours and the imports domain's own.
        max_upload_bytes=settings.upload_limit_bytes(),
    )
    app.add_middleware(
        AuthMiddleware,
        keys=container.api_keys,
        required=security.auth_required,
        rate_limit=limiter,
    )
    app.add_middleware(ErrorMiddleware)
    app.add_middleware(RequestIdMiddleware)
    app.add_middleware(http_metrics.MetricsMiddleware)
    conveyor_logging.add_correlation_source(request_id_var)  # request lines carry the id
    install_error_handlers(app)
    for domain in modules():
        for path in domain.routers:
            app.include_router(importlib.import_module(path).router)
    from api.v1 import system as system_api
    from app.status.system import SystemStatus

    app.state.system_status = SystemStatus(settings, registry, celery)
    app.include_router(system_api.router)
    if security.console_enabled:
        install_console(app)

    @app.get(
        "/healthz",
        tags=["health"],
        summary="Liveness",
        responses={200: {"content": {"application/json": {"example": {"status": "ok"}}}}},
    )
    async def healthz() -> dict[str, str]:
        """The process is up."""
        return {"status": "ok"}

    @app.get(
        "/readyz",
        tags=["health"],
        summary="Readiness",
        responses={
            200: {
                "content": {
                    "application/json": {
                        "example": {
                            "status": "ok",
                            "checks": {"database": "ok", "broker": "ok"},
                            "replicas": {"imports": "ok"},
                        }
                    }
                }
            },
            503: ERROR_RESPONSES[503],
        },
    )
    async def readyz() -> Any:
        """Databases and broker reachable, every domain schema migrated to head (503 otherwise).

        Read replicas are reported under `replicas` but never make it 503: while a replica is
        down or behind, its reads go to the primary.
        """
        report = await health.check_readiness(registry, celery)
        # A replica down is not "not ready": its reads go to the primary (docs/operations.md).
        replica_status = await container.replicas.status()
        if report.ready:
            body: dict[str, Any] = {
                "status": "ok",
                "checks": report.checks,
                "migrations": report.migrations,
            }
            if replica_status:
                body["replicas"] = replica_status
            return body
        body = error_body(
            "UNAVAILABLE",
            "not ready: " + ", ".join(report.problems()),
            reason="NOT_READY",
            metadata={
                **{k: str(v) for k, v in report.checks.items()},
                **{f"migrations:{d}": v for d, v in report.migrations.items()},
                **{f"replica:{d}": v for d, v in replica_status.items()},
            },
        )
        return JSONResponse(body, status_code=503)

    app.add_route("/metrics", http_metrics.metrics_endpoint, include_in_schema=False)

    install_openapi(app)
    return app


def install_console(app: FastAPI) -> None:
    """Serves the operations console at ``/console`` (pages calling /v1 with the user's key).

    Args:
        app: The app.
    """
    from fastapi.staticfiles import StaticFiles

    from api.console import routes as console

    app.include_router(console.router)
    app.mount(
        "/console/static", StaticFiles(directory=str(console.HERE / "static")), name="console"
    )


def rate_limit_redis(settings: Settings) -> str | None:
    """Returns the Redis URL holding the rate-limit buckets.

    Args:
        settings: Settings.

    Returns:
        ``security.rate_limit_redis_url``, else the broker or result backend when it is Redis,
        else ``None`` (in-process buckets).
    """
    for url in (settings.security.rate_limit_redis_url, settings.broker_url, settings.backend()):
        if url and url.startswith(("redis://", "rediss://")):
            return url
    return None


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """Returns the uvicorn options that keep slow or greedy clients from exhausting the API.

    ``timeout_keep_alive`` drops idle connections, ``limit_concurrency`` answers 503 instead of
    queueing without bound, ``h11_max_incomplete_event_size`` caps the request line and headers
    a client may trickle in (h11 enforces it itself; the default httptools parser through
    :class:`~app.adapters.http_protocol.CappedHttpToolsProtocol`). uvicorn has no header/body
    read timeout: run it behind a proxy
    that has one (see SECURITY.md) where clients are untrusted.

    Args:
        settings: Settings (``CONVEYOR_SECURITY__UVICORN_*``).

    Returns:
        Keyword arguments for ``uvicorn.run``.
    """
    from app.adapters.http_protocol import CappedHttpToolsProtocol

    security = settings.security
    http: Any = "h11" if security.uvicorn_http == "h11" else CappedHttpToolsProtocol
    return {
        "timeout_keep_alive": security.uvicorn_timeout_keep_alive_seconds,
        "limit_concurrency": security.uvicorn_limit_concurrency,
        "backlog": security.uvicorn_backlog,
        "http": http,
        "h11_max_incomplete_event_size": security.uvicorn_h11_max_incomplete_event_size,
        "timeout_graceful_shutdown": security.uvicorn_timeout_graceful_shutdown_seconds,
        "server_header": False,
    }


_SECURITY_ERRORS: dict[str, tuple[str, str, str, str]] = {
    "401": (
        "UNAUTHENTICATED: no API key, or one that is malformed, unknown, expired or revoked",
        "UNAUTHENTICATED",
        "this API needs an API key: send Authorization: Bearer <key>"
        " (create one with `conveyor keys create`)",
        "API_KEY_MISSING",
    ),
    "403": (
        "PERMISSION_DENIED: the API key lacks the scope this route needs",
        "PERMISSION_DENIED",
        "this API key lacks the 'operations:write' scope; create a key with it",
        "MISSING_SCOPE",
    ),
    "429": (
        "RESOURCE_EXHAUSTED: the API key's rate limit is exceeded; wait Retry-After seconds",
        "RESOURCE_EXHAUSTED",
        "rate limit of this API key exceeded; retry after 1 s",
        "RATE_LIMITED",
    ),
    "413": (
        "OUT_OF_RANGE: the request body is larger than this route accepts",
        "OUT_OF_RANGE",
        "request body is larger than 1048576 bytes, the limit of this route",
        "REQUEST_TOO_LARGE",
    ),
}


def _document_security(
    schema: dict[str, Any], limits: tuple[int, int] = (1024 * 1024, 256 * 1024 * 1024)
) -> None:
    """Adds the bearer-key scheme and the 401/403/429 (and 413 on bodies, saying the route's own
    limit) answers to /v1 routes.

    Args:
        schema: The OpenAPI document.
        limits: ``(body cap of JSON routes, upload cap)`` in bytes.
    """
    components = schema.setdefault("components", {})
    components.setdefault("securitySchemes", {})["apiKey"] = {
        "type": "http",
        "scheme": "bearer",
        "description": "An API key from `conveyor keys create`: `cvk_<prefix>_<secret>`.",
    }
    for path, methods in schema.get("paths", {}).items():
        if not path.startswith("/v1/"):
            continue
        for method, operation in methods.items():
            operation["security"] = [{"apiKey": []}]
            responses = operation.setdefault("responses", {})
            codes = ["401", "403", "429"]
            if method in ("post", "put", "patch"):
                codes.append("413")
            for code in codes:
                description, status, message, reason = _SECURITY_ERRORS[code]
                if code == "413":
                    description, message = _body_limit_doc(path, operation, limits)
                    if "413" in responses:  # the route's own 413 (e.g. a file cap): one limit
                        responses["413"]["description"] = description
                        continue
                responses.setdefault(
                    code,
                    {
                        "description": description,
                        "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/ErrorResponse"},
                                "example": error_body(
                                    status, message, http_code=int(code), reason=reason
                                ),
                            }
                        },
                    },
                )


def _body_limit_doc(
    path: str, operation: dict[str, Any], limits: tuple[int, int]
) -> tuple[str, str]:
    upload = bool(operation.get("x-upload")) or bool(UPLOAD_ROUTE.search(path))
    limit = limits[1] if upload else limits[0]
    source = (
        "the smaller of CONVEYOR_SECURITY__MAX_UPLOAD_BYTES and CONVEYOR_IMPORTS__MAX_UPLOAD_BYTES"
        if upload
        else "CONVEYOR_SECURITY__MAX_BODY_BYTES"
    )
    description = (
        f"OUT_OF_RANGE: the request body is larger than this route's limit, {limit} bytes"
        f" ({source}); a Content-Length above it is refused before the body is read"
    )
    return description, f"request body is larger than {limit} bytes, the limit of this route"


def install_openapi(app: FastAPI) -> None:
    """Makes the OpenAPI document tell the truth about errors: validation failures are AIP-193
    400s here, never FastAPI's default 422.

    Args:
        app: The app whose ``openapi()`` is wrapped.
    """

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title, version=app.version, description=app.description, routes=app.routes
            )
            for path in schema.get("paths", {}).values():
                for operation in path.values():
                    operation.get("responses", {}).pop("422", None)
            for name in ("HTTPValidationError", "ValidationError"):
                schema.get("components", {}).get("schemas", {}).pop(name, None)
            settings: Settings = app.state.settings
            _document_security(
                schema, (settings.security.max_body_bytes, settings.upload_limit_bytes())
            )
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
