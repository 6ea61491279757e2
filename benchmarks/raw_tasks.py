"""Baseline for the end-to-end benchmark: plain Celery, no database, no operations.

A Celery app on the benchmark's broker (``BENCH_BROKER_URL``; the result backend is the same
Redis), JSON only, one no-op task with ``acks_late``. Run a worker with::

    BENCH_BROKER_URL=redis://127.0.0.1:6379/15 \
        celery -A benchmarks.raw_tasks worker -c 2 -P prefork -Q bench_raw
"""

from __future__ import annotations

import os
import time

from celery import Celery

QUEUE = "bench_raw"

_broker = os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6379/15")

app = Celery("bench_raw", broker=_broker, backend=_broker, set_as_current=False)
app.conf.update(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    result_accept_content=["json"],
    task_default_queue=QUEUE,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    result_expires=3600,
)


@app.task(name="bench.noop", acks_late=True)  # type: ignore[untyped-decorator,misc,unused-ignore]
def noop(submitted_at: float) -> dict[str, float]:
    """Does nothing but report when it started.

    Args:
        submitted_at: ``time.time()`` when the producer sent it.

    Returns:
        ``{"submitted": submitted_at, "started": <time.time() at start>}``.
    """
    return {"submitted": submitted_at, "started": time.time()}
