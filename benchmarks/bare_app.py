"""Baseline for the submit benchmark: a bare FastAPI app that only publishes a Celery task.

It publishes the way Conveyor's fast path does (``create_celery(settings, results=False)``:
JSON, no result backend, no ``task-sent`` event, queues declared once) with the same request
body as ``POST /v1/pings``, but no database, no outbox, no middleware. The task is
``bench.ping`` on queue ``bench_raw`` (``benchmarks/raw_tasks.py``), so the same app is also
the HTTP front of the raw-Celery end-to-end baseline. Serve it with::

    CONVEYOR_BROKER_URL=redis://127.0.0.1:6379/15 \
        python -m uvicorn benchmarks.bare_app:create_app --factory --port 8001

``BENCH_BARE_MODE=async`` publishes from an ``async def`` endpoint (blocking the loop, as a
naive app would); the default ``sync`` runs it in the thread pool.
"""

from __future__ import annotations

import os
import time
import uuid
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, Field

from app.adapters.celery_app import create_celery
from app.config import load_settings

PING_TASK = "bench.ping"
QUEUE = "bench_raw"


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
    celery = create_celery(settings, results=False)  # the fast path's publisher config
    # Declared once up front, as the outbox publisher does (Redis drops unbound messages);
    # the same auto-created queue Celery would route ``queue=QUEUE`` to.
    queue = celery.amqp.queues[QUEUE]
    with celery.connection_for_write() as conn:
        queue(conn.default_channel).declare()
    app = FastAPI(title="bare baseline", docs_url=None, redoc_url=None, openapi_url=None)

    def publish() -> dict[str, Any]:
        task_id = str(uuid.uuid4())
        celery.send_task(
            PING_TASK,
            args=[task_id, time.time()],
            task_id=task_id,
            queue=QUEUE,
            routing_key=QUEUE,
            retry=False,
        )
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
