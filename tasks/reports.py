"""Task adapters of the reports domain (queue ``reports``): event tally and report generation."""

from __future__ import annotations

import logging
import uuid
from typing import Any

from celery import Task, shared_task
from celery.exceptions import Retry

from domains.operations.execution import ProgressSink
from domains.operations.model import OperationError
from domains.reports.events import MalformedEvent
from domains.reports.service import ReportsService
from tasks.base import retry_with_backoff, run_operation_task
from tasks.runtime import runtime

log = logging.getLogger(__name__)


def _service() -> ReportsService:
    service: ReportsService = runtime.container.reports
    return service


# reject_on_worker_lost=False: a poison event is not redelivered forever; the inbox sweeper
# re-dispatches it at most CONVEYOR_MAX_DISPATCHES times (see tasks/webhooks.py).
@shared_task(name="reports.handle_event", bind=True, acks_late=True, reject_on_worker_lost=False)
def handle_event(self: Task, event: dict[str, Any]) -> dict[str, Any]:
    """Applies an integration event to the reports projections, once per event id.

    A malformed event is logged and dropped (retrying cannot fix it); a failure to apply
    (database down) is retried with backoff up to ``CONVEYOR_REPORTS__EVENT_MAX_RETRIES``.

    Args:
        self: The bound task.
        event: The event envelope (``IntegrationEvent.to_dict()``).

    Returns:
        ``{"outcome": "applied" | "duplicate" | "ignored" | "malformed", ...}``.
    """
    try:
        result = runtime.run(_service().handle_event(event))
    except Retry:
        raise
    except MalformedEvent as exc:
        event_id = event.get("id") if isinstance(event, dict) else None
        log.error("reports: dropped malformed event %s: %s", event_id, exc.message)
        return {"outcome": "malformed", "error": exc.message}
    except Exception:
        max_retries = runtime.container.settings.reports.event_max_retries
        if self.request.retries < max_retries:
            log.warning("reports: event %s not applied; retrying", event.get("id"), exc_info=True)
        retries = retry_with_backoff(self, max_retries)
        log.exception("reports: event %s not applied after %d tries", event.get("id"), retries)
        raise
    return {"outcome": result.outcome, "event": str(result.event_id), "type": result.type}


@shared_task(name="reports.generate", bind=True, acks_late=True, reject_on_worker_lost=True)
def generate(self: Task, operation_id: str) -> dict[str, Any]:
    """Generates and stores a report file (the operation of ``POST /v1/reports``).

    Args:
        self: The bound task.
        operation_id: The operation (also this task's id).

    Returns:
        The operation's response.
    """
    service = _service()

    def work(op_id: uuid.UUID, sink: ProgressSink) -> Any:
        return service.run_generate(op_id, sink=sink)

    def fail(op_id: uuid.UUID, error: OperationError) -> Any:
        return service.fail_operation(op_id, error)

    return run_operation_task(self, operation_id, work, fail)
