"""Task adapters of the webhooks domain (queue ``webhooks``).

Task arguments are ids only (never secrets): the service loads endpoints and their secrets.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from typing import Any

from celery import Task, shared_task

from domains.operations.execution import ProgressSink
from domains.operations.model import OperationError
from domains.webhooks.service import WebhooksService
from monitoring import logging as log_context
from tasks.base import retry_with_backoff, run_operation_task
from tasks.runtime import runtime

log = logging.getLogger(__name__)


def _service() -> WebhooksService:
    service: WebhooksService = runtime.container.webhooks
    return service


def _correlation(task: Task) -> str | None:
    # The HTTP request id, bound into the task's context by monitoring.logging.
    return log_context.current().get("correlation_id")


def _retry(task: Task, exc: Exception) -> dict[str, Any]:
    # Infrastructure trouble (database down...): the deliveries stay PENDING/SENDING in
    # PostgreSQL, so giving up here loses nothing: probe_breakers recovers them.
    retries = retry_with_backoff(task)
    log.error("%s gave up after %d retries: %s", task.name, retries, exc)
    return {"failed": f"{type(exc).__name__}: {exc}"}


@shared_task(name="webhooks.deliver", bind=True, acks_late=True, reject_on_worker_lost=True)
def deliver(self: Task, delivery_ids: list[str]) -> dict[str, Any]:
    """Makes one attempt of each due delivery (concurrently on the process's HTTP client).

    Args:
        self: The bound task.
        delivery_ids: Delivery ids.

    Returns:
        Counts by outcome.
    """
    ids = [uuid.UUID(i) for i in delivery_ids]
    try:
        return runtime.run(_service().deliver(ids, correlation_id=_correlation(self)))
    except Exception as exc:
        log.exception("webhooks.deliver failed")
        return _retry(self, exc)


# reject_on_worker_lost=False: an event whose handling kills the worker is not redelivered
# at once (forever); its inbox row stays PENDING and the sweeper re-dispatches it, at most
# CONVEYOR_MAX_DISPATCHES times, then it ends FAILED in the inbox.
@shared_task(name="webhooks.handle_event", bind=True, acks_late=True, reject_on_worker_lost=False)
def handle_event(self: Task, event: dict[str, Any]) -> dict[str, Any]:
    """Fans an integration event out to the matching endpoints (once per event id).

    Args:
        self: The bound task.
        event: The event envelope.

    Returns:
        ``{"deliveries": n}``.
    """
    try:
        count = runtime.run(_service().handle_event(event, correlation_id=_correlation(self)))
    except Exception as exc:
        log.exception("webhooks.handle_event failed")
        return _retry(self, exc)
    return {"deliveries": count}


@shared_task(name="webhooks.replay", bind=True, acks_late=True, reject_on_worker_lost=True)
def replay(self: Task, operation_id: str, since: str) -> dict[str, Any]:
    """Carries out a replay operation.

    Args:
        self: The bound task.
        operation_id: The operation (also this task's id).
        since: Earliest delivery creation time (ISO 8601).

    Returns:
        The operation's response.
    """
    service = _service()
    start = dt.datetime.fromisoformat(since)

    def work(op_id: uuid.UUID, sink: ProgressSink) -> Any:
        return service.run_replay(op_id, start, sink=sink)

    def fail(op_id: uuid.UUID, error: OperationError) -> Any:
        return service.fail_operation(op_id, error)

    return run_operation_task(self, operation_id, work, fail)


@shared_task(name="webhooks.probe_endpoint", bind=True, acks_late=True)
def probe_endpoint(self: Task, endpoint_id: str) -> dict[str, Any]:
    """Sends a probe delivery to an endpoint whose breaker cool-down has passed.

    Args:
        self: The bound task.
        endpoint_id: The endpoint.

    Returns:
        ``{"probed": bool}``.
    """
    try:
        return {"probed": runtime.run(_service().probe_endpoint(uuid.UUID(endpoint_id)))}
    except Exception as exc:
        return _retry(self, exc)


# Housekeeping every few seconds: no task events (kept out of Flower), quiet logs.
@shared_task(name="webhooks.probe_breakers", acks_late=True, send_events=False)
def probe_breakers() -> dict[str, int]:
    """Periodic upkeep: breaker probes, deliveries whose worker vanished, lost messages.

    Returns:
        Counts of what was done.
    """
    return runtime.run(_service().probe_breakers())
