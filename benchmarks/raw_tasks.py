"""Baseline for the end-to-end benchmark: plain Celery doing the same effect as a ping.

A Celery app on the benchmark's broker (``BENCH_BROKER_URL``), JSON only, ``acks_late``,
**no result backend** (PostgreSQL holds the effect, as in Conveyor) and one task,
``bench.ping``, that writes one row over an asyncpg connection held per worker process
(``BENCH_DATABASE_URL``): one statement, one round trip, autocommit. Run the worker with task
events on (``-E``), as a Flower user runs it::

    BENCH_BROKER_URL=redis://127.0.0.1:6379/15 BENCH_DATABASE_URL=postgresql://... \
        celery -A benchmarks.raw_tasks worker -E -c 2 -P prefork -Q bench_raw

The benchmark creates :data:`TABLE` (``CREATE_SQL``) and polls it for completion: each row
records when the job was submitted (``time.time()`` in the args) and when it started.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from typing import Any

from celery import Celery

QUEUE = "bench_raw"
TASK = "bench.ping"
TABLE = "public.bench_raw_jobs"
CREATE_SQL = (
    f"CREATE TABLE IF NOT EXISTS {TABLE} (id uuid PRIMARY KEY, submitted float8 NOT NULL,"
    " started float8 NOT NULL, worker text NOT NULL)"
)
# The effect: one statement (idempotent under redelivery, like Conveyor's fenced finish).
EFFECT_SQL = (
    f"INSERT INTO {TABLE} (id, submitted, started, worker) VALUES ($1, $2, $3, $4)"
    " ON CONFLICT (id) DO UPDATE SET started = EXCLUDED.started"
)

_broker = os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6379/15")

app = Celery("bench_raw", broker=_broker, set_as_current=False)
app.conf.update(
    task_serializer="json",
    accept_content=["json"],
    task_default_queue=QUEUE,
    task_acks_late=True,
    worker_prefetch_multiplier=1,  # as Conveyor's workers
    task_ignore_result=True,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)

_state: dict[str, Any] = {}


def _connection() -> tuple[asyncio.AbstractEventLoop, Any]:
    """The process's event loop and asyncpg connection (made after fork, then reused)."""
    if _state.get("pid") != os.getpid():
        import asyncpg  # type: ignore[import-untyped,unused-ignore]

        loop = asyncio.new_event_loop()
        dsn = os.environ["BENCH_DATABASE_URL"]
        conn = loop.run_until_complete(asyncpg.connect(dsn))
        _state.update(pid=os.getpid(), loop=loop, conn=conn)
    return _state["loop"], _state["conn"]


@app.task(name=TASK, acks_late=True)  # type: ignore[untyped-decorator,misc,unused-ignore]
def ping(job_id: str, submitted_at: float) -> None:
    """Records that the job ran: one row write, nothing in a result backend.

    Args:
        job_id: The job (the bare endpoint's task id).
        submitted_at: ``time.time()`` when the producer sent it.
    """
    started = time.time()
    loop, conn = _connection()
    loop.run_until_complete(
        conn.execute(EFFECT_SQL, uuid.UUID(job_id), submitted_at, started, "raw")
    )
