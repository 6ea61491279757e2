"""Task adapters of the platform domain (queue ``platform``)."""

from __future__ import annotations

import uuid
from typing import Any

from celery import Task, shared_task

from domains.operations.execution import ProgressSink
from domains.operations.model import OperationError
from tasks.base import run_operation_task
from tasks.runtime import runtime


@shared_task(name="platform.ping", bind=True, acks_late=True, reject_on_worker_lost=True)
def ping(self: Task, operation_id: str) -> dict[str, Any]:
    """Carries out a ping operation.

    Args:
        self: The bound task.
        operation_id: The operation (also this task's id).

    Returns:
        The operation's response.
    """
    service = runtime.container.pings
    hostname = self.request.hostname or "worker"

    def work(op_id: uuid.UUID, sink: ProgressSink) -> Any:
        return service.run_ping(op_id, worker=hostname, sink=sink)

    def fail(op_id: uuid.UUID, error: OperationError) -> Any:
        return service.fail_operation(op_id, error)

    return run_operation_task(self, operation_id, work, fail)
