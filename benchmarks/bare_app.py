"""Baseline for the submit benchmark: a bare FastAPI app that only publishes the Celery task.

Same broker, same Celery configuration (``app.celery_app.create_celery``: JSON, routes, sent
events) and the same request body as ``POST /v1/pings``, but no database, no outbox, no
middleware. Serve it with::

    CONVEYOR_BROKER_URL=redis://127.0.0.1:6379/15 \
        python -m uvicorn benchmarks.bare_app:create_app --factory --port 8001

``BENCH_BARE_MODE=async`` publishes from an ``async def`` endpoint (blocking the loop, as a
naive app would); the default ``sync`` runs it in the thread pool, like Conveyor's fast path.
"""

from __future__ import annotations

import os
import uuid
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, Field

from app.celery_app import create_celery
from app.config import load_settings

PING_TASK = "platform.ping"


class CreatePingRequest(BaseModel):
    """The same body shape as Conveyor's ``POST /v1/pings``."""

    model_config = ConfigDict(extra="forbid")

    message: str = Field(default="", max_length=1000)
    sleep_seconds: float = Field(default=0, ge=0, le=600)
    steps: int = Field(default=1, ge=1, le=1000)
    fail_attempts: int = Field(default=0, ge=0, le=20)
    request_id: str | None = Field(default=None, min_length=1, max_length=128)


def create_app() -> FastAPI:
    """Builds the baseline app from ``CONVEYOR_BROKER_URL``.

    Returns:
        The FastAPI app.
    """
    settings = load_settings(broker_url=os.environ["CONVEYOR_BROKER_URL"])
    celery = create_celery(settings)
    app = FastAPI(title="bare baseline", docs_url=None, redoc_url=None, openapi_url=None)

    def publish() -> dict[str, Any]:
        task_id = str(uuid.uuid4())
        celery.send_task(PING_TASK, args=[task_id], task_id=task_id, queue="platform")
        return {"name": f"operations/platform.{task_id}", "done": False}

    if os.environ.get("BENCH_BARE_MODE", "sync") == "async":

        @app.post("/v1/pings")
        async def create_ping_async(body: CreatePingRequest) -> dict[str, Any]:
            return publish()

    else:

        @app.post("/v1/pings")
        def create_ping(body: CreatePingRequest) -> dict[str, Any]:
            return publish()

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app
