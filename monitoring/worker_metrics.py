"""Worker-side Prometheus metrics, recorded from Celery signals.

Importing this module connects the handlers (``app.adapters.celery_app.TASK_MODULES`` lists it, so every
worker imports it with the tasks). Under the prefork pool, tasks run in pool children: metrics are
written to per-process files in ``PROMETHEUS_MULTIPROC_DIR`` (prometheus_client multiprocess
mode), which ``conveyor metrics`` merges and serves. That variable must be set before
prometheus_client is first imported in the worker process:
:func:`app.cli.metrics.setup_worker_metrics` does it in ``conveyor worker``.

Metrics:
    ``conveyor_tasks_total{task,queue,state}``: state is ``started``, ``succeeded``, ``failed``
    or ``retried`` (Celery's view of the run: a task that records a terminal failure on its
    operation and returns counts as succeeded; ``conveyor_operations`` shows the operation).
    ``conveyor_task_runtime_seconds{task,queue}``: time from ``task_prerun`` to
    ``task_postrun``, whatever the outcome.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

from celery import signals
from prometheus_client import Counter, Histogram, multiprocess

from app.config import DOMAINS

log = logging.getLogger(__name__)

OTHER_QUEUE = "other"
"""Queue label of a message that came from a queue outside :data:`app.config.DOMAINS`."""

RUNTIME_BUCKETS = (
    0.01,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
    1800.0,
    3600.0,
)

TASKS = Counter(
    "conveyor_tasks_total",
    "Task runs seen by workers, by task name, queue and state (started/succeeded/failed/retried).",
    ["task", "queue", "state"],
)
TASK_RUNTIME = Histogram(
    "conveyor_task_runtime_seconds",
    "Time a worker spent running a task, by task name and queue.",
    ["task", "queue"],
    buckets=RUNTIME_BUCKETS,
)

# (task_id, thread) -> start time: the threads pool runs several tasks in one process, and a
# redelivered duplicate may run next to the original.
_started: dict[tuple[str, int], float] = {}


def multiprocess_mode() -> bool:
    """Tells whether metrics go to per-process files (``PROMETHEUS_MULTIPROC_DIR`` is set).

    Returns:
        ``True`` in multiprocess mode.
    """
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


def queue_of(request: Any, task_name: str) -> str:
    """Returns the queue label of a task run (bounded to the domain queues).

    Args:
        request: The task's request context.
        task_name: The task's name (its prefix names its queue when delivery info is missing).

    Returns:
        The domain queue, or :data:`OTHER_QUEUE`.
    """
    info = getattr(request, "delivery_info", None) or {}
    queue = info.get("routing_key") or task_name.split(".", 1)[0]
    return queue if queue in DOMAINS else OTHER_QUEUE


def _labels(task: Any) -> tuple[str, str] | None:
    name = getattr(task, "name", None)
    if not name:
        return None
    return name, queue_of(getattr(task, "request", None), name)


class _Children:
    """A task's labelled metrics, looked up once per (task, queue) instead of on every run:
    ``labels()`` takes the metric's lock and builds its key each time, twice per task.
    """

    def __init__(self, task: str, queue: str) -> None:
        self.started = TASKS.labels(task, queue, "started")
        self.succeeded = TASKS.labels(task, queue, "succeeded")
        self.runtime = TASK_RUNTIME.labels(task, queue)


_children: dict[tuple[str, str], _Children] = {}  # bounded: task names x domain queues


def _metrics(task: Any) -> _Children | None:
    labels = _labels(task)
    if labels is None:
        return None
    found = _children.get(labels)
    if found is None:
        found = _children[labels] = _Children(*labels)
    return found


@signals.task_prerun.connect(dispatch_uid="conveyor.metrics.prerun")
def _on_prerun(task_id: str | None = None, task: Any = None, **_: Any) -> None:
    metrics = _metrics(task)
    if metrics is None:
        return
    metrics.started.inc()
    _started[(task_id or "", threading.get_ident())] = time.perf_counter()


@signals.task_postrun.connect(dispatch_uid="conveyor.metrics.postrun")
def _on_postrun(
    task_id: str | None = None, task: Any = None, state: str | None = None, **_: Any
) -> None:
    metrics = _metrics(task)
    if metrics is None:
        return
    start = _started.pop((task_id or "", threading.get_ident()), None)
    if start is not None:
        metrics.runtime.observe(time.perf_counter() - start)
    # IGNORED: the task handed its operation on (imports.run after fanning the chunks out
    # raises Ignore so Flower keeps the operation in PROGRESS); its own work succeeded.
    if state in ("SUCCESS", "IGNORED"):
        metrics.succeeded.inc()


@signals.task_failure.connect(dispatch_uid="conveyor.metrics.failure")
def _on_failure(sender: Any = None, **_: Any) -> None:
    labels = _labels(sender)
    if labels is not None:
        TASKS.labels(*labels, "failed").inc()


@signals.task_retry.connect(dispatch_uid="conveyor.metrics.retry")
def _on_retry(sender: Any = None, request: Any = None, **_: Any) -> None:
    name = getattr(sender, "name", None)
    if name:
        TASKS.labels(name, queue_of(request, name), "retried").inc()


@signals.worker_ready.connect(dispatch_uid="conveyor.metrics.ready")
def _on_worker_ready(**_: Any) -> None:
    if multiprocess_mode():
        log.info("worker metrics: writing to %s", os.environ["PROMETHEUS_MULTIPROC_DIR"])
    else:
        log.warning(
            "worker metrics: PROMETHEUS_MULTIPROC_DIR is not set; pool processes' task metrics"
            " are not exported (start workers with `conveyor worker`)"
        )


@signals.worker_process_shutdown.connect(dispatch_uid="conveyor.metrics.process_shutdown")
def _on_process_shutdown(pid: int | None = None, **_: Any) -> None:
    # Counters and histograms of a dead process stay (they are totals); live gauges go.
    if multiprocess_mode():
        multiprocess.mark_process_dead(pid or os.getpid())
