"""``create_app()``: the FastAPI application with /v1 routers, docs, errors and health."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator
from typing import Any

from celery import Celery
from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse

from api.errors import ERROR_RESPONSES, error_body, install_error_handlers
from api.middleware import RequestIdMiddleware, request_id_var
from app.celery_app import create_celery
from app.config import Settings, get_settings
from app.container import Container
from app.db import EngineRegistry
from app.outbox import OutboxPublisher
from app.wiring import wirings
from domains.operations.service import OperationsService
from domains.platform.service import PingService
from monitoring import health
from monitoring import logging as conveyor_logging
from monitoring import metrics as http_metrics


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


@dataclasses.dataclass
class AppServices:
    """The services routers use (see ``api.deps.Services``)."""

    operations: OperationsService
    pings: PingService
    control: CeleryControl


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
    celery = celery or create_celery(settings)
    registry = EngineRegistry(settings)
    publisher = OutboxPublisher(registry, settings)
    container = Container(settings, registry, after_commit=publisher.publish_now)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await publisher.drain()
        await registry.dispose()

    app = FastAPI(
        title="Conveyor API",
        version="1.0.0",
        description=(
            "Submit jobs, watch their progress as long-running operations (AIP-151), and manage "
            "the domains' resources. Errors follow AIP-193."
        ),
        docs_url="/docs",
        redoc_url="/redoc",
        openapi_url="/openapi.json",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.container = container
    app.state.publisher = publisher
    app.state.celery = celery
    app.state.services = AppServices(
        operations=container.operations, pings=container.pings, control=CeleryControl(celery)
    )
    app.add_middleware(RequestIdMiddleware)
    app.add_middleware(http_metrics.MetricsMiddleware)
    conveyor_logging.add_correlation_source(request_id_var)  # request lines carry the id
    install_error_handlers(app)
    for wiring in wirings():
        for router in wiring.routers():
            app.include_router(router)

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
                        "example": {"status": "ok", "checks": {"database": "ok", "broker": "ok"}}
                    }
                }
            },
            503: ERROR_RESPONSES[503],
        },
    )
    async def readyz() -> Any:
        """Databases and broker reachable, every domain schema migrated to head (503 otherwise)."""
        report = await health.check_readiness(registry, celery)
        if report.ready:
            return {"status": "ok", "checks": report.checks, "migrations": report.migrations}
        body = error_body(
            "UNAVAILABLE",
            "not ready: " + ", ".join(report.problems()),
            reason="NOT_READY",
            metadata={
                **{k: str(v) for k, v in report.checks.items()},
                **{f"migrations:{d}": v for d, v in report.migrations.items()},
            },
        )
        return JSONResponse(body, status_code=503)

    app.add_route("/metrics", http_metrics.metrics_endpoint, include_in_schema=False)

    install_openapi(app)
    return app


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
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
