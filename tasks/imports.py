"""Task adapters of the imports domain (queue ``imports``): run, process_chunk, finalize.

``imports.run`` splits the file and fans the chunks out as a Celery chord on the ``imports``
queue whose callback is ``imports.finalize``. The database stays the truth: a chunk's effect is
applied once under its row lock, and finalize merges only when every chunk is DONE in the
database, so a chord that fires early or never (worker killed) cannot lose or double rows; the
sweeper re-dispatches ``imports.run``, which resumes with the chunks not DONE.
"""

from __future__ import annotations

import json
import logging
import uuid
from typing import Any

from celery import Task, chord, shared_task
from celery.backends.base import DisabledBackend
from celery.exceptions import Ignore

from domains.imports.service import ImportsService
from domains.operations.execution import LeaseLost, ProgressSink
from domains.operations.model import OperationError
from domains.shared.errors import DomainError, TransientError
from tasks.base import permanent_error, progress_sink, retry_with_backoff, run_operation_task
from tasks.runtime import runtime

log = logging.getLogger(__name__)


def _service() -> ImportsService:
    service: ImportsService = runtime.container.imports
    return service


def operation_sink(task: Task, operation_id: str) -> ProgressSink:
    """Mirrors import progress into Celery under the operation id (the run task's id), so
    Flower and ``AsyncResult(<operation id>)`` show one figure for the whole fan-out.

    Args:
        task: The bound task (a chunk).
        operation_id: The operation.

    Returns:
        The sink.
    """
    return progress_sink(task, task_id=operation_id)


def launch_chunks(task: Task, operation_id: str, attempt: int, chunk_nos: list[int]) -> None:
    """Sends the chord: one ``imports.process_chunk`` per chunk, then ``imports.finalize``.

    Args:
        task: The run task (its app sends the chord).
        operation_id: The operation.
        attempt: The run's attempt (fences the callback).
        chunk_nos: Chunks not DONE.
    """
    app = task.app
    header = [
        app.signature("imports.process_chunk", args=(operation_id, attempt, n), immutable=True)
        for n in chunk_nos
    ]
    body = app.signature("imports.finalize", args=(operation_id, attempt))
    if isinstance(app.backend, DisabledBackend):
        # No result backend (e.g. RabbitMQ without CONVEYOR_RESULT_BACKEND): a chord cannot
        # count its header, so every chunk links the callback instead. Finalize acts only once
        # the database shows every chunk DONE, so the early calls are no-ops.
        for signature in header:
            signature.link(body.clone())
            signature.apply_async()
        return
    chord(header, app=app)(body)


@shared_task(name="imports.run", bind=True, acks_late=True, reject_on_worker_lost=True)
def run(self: Task, operation_id: str) -> dict[str, Any]:
    """Starts (or resumes) an import: split, then fan the chunks out.

    Args:
        self: The bound task.
        operation_id: The operation (also this task's id).

    Returns:
        What was launched, or the final response when nothing was left to do.
    """
    service = _service()

    def work(op_id: uuid.UUID, sink: ProgressSink) -> Any:
        return service.run_import(op_id, sink=sink)

    def fail(op_id: uuid.UUID, error: OperationError) -> Any:
        return service.fail_import(op_id, error)

    result = run_operation_task(self, operation_id, work, fail)
    if "launch" in result:
        launch_chunks(self, operation_id, int(result["attempt"]), list(result["launch"]))
        # The operation goes on in the chunks: end without a result or a task-succeeded event,
        # so Flower and the result backend keep showing its PROGRESS under the operation id
        # until finalize announces the outcome.
        raise Ignore()
    return result


def announce_outcome(task: Task, operation_id: str, response: dict[str, Any]) -> None:
    """Stores and announces the import's outcome under the operation id (the run task's id),
    where Flower and ``AsyncResult(<operation id>)`` look; ``imports.run`` left it in PROGRESS.

    Args:
        task: The task that ended the import (finalize, or a chunk that failed it).
        operation_id: The operation.
        response: The operation's response, or ``{"failed": msg}`` / ``{"cancelled": True}``.
    """
    from monitoring.redaction import redact

    if "rows_total" in response:
        state, event = "SUCCESS", "task-succeeded"
        value: Any = response
        fields: dict[str, Any] = {"result": json.dumps(redact(response), default=str)}
    elif response.get("cancelled"):
        state, event = "REVOKED", "task-revoked"
        value, fields = RuntimeError("cancelled"), {"terminated": False, "expired": False}
    elif "failed" in response:
        message = str(response["failed"])
        state, event = "FAILURE", "task-failed"
        value, fields = RuntimeError(message), {"exception": message, "traceback": ""}
    else:
        return  # not the end yet (an early or stale callback)
    try:
        task.app.backend.store_result(operation_id, value, state)
    except Exception:
        log.debug("outcome of %s not stored", operation_id, exc_info=True)
    if not task.app.conf.worker_send_task_events:
        return
    try:
        with task.app.events.default_dispatcher(hostname=task.request.hostname) as dispatcher:
            dispatcher.send(event, uuid=operation_id, retry=False, **fields)
    except Exception:
        log.debug("outcome event of %s not sent", operation_id, exc_info=True)


def _fail_permanent_or_retry(task: Task, operation_id: str, exc: Exception) -> dict[str, Any]:
    # Programming/input errors and the soft time limit fail the import at once; the rest retry.
    permanent = permanent_error(exc, task)
    if permanent is None:
        return _retry_or_fail(task, operation_id, f"{type(exc).__name__}: {exc}")
    runtime.run(_service().fail_import(uuid.UUID(operation_id), permanent))
    announce_outcome(task, operation_id, {"failed": permanent.message})
    return {"failed": permanent.message}


def _retry_or_fail(task: Task, operation_id: str, error: str) -> dict[str, Any]:
    # Retries while any are left (raises Retry); once exhausted, the import fails.
    retries = retry_with_backoff(task)
    runtime.run(
        _service().fail_import(
            uuid.UUID(operation_id),
            OperationError(
                status="UNAVAILABLE",
                message=f"{task.name} gave up after {retries + 1} attempts; last error: {error}",
            ),
        )
    )
    announce_outcome(task, operation_id, {"failed": error})
    return {"failed": error}


@shared_task(name="imports.process_chunk", bind=True, acks_late=True, reject_on_worker_lost=True)
def process_chunk(self: Task, operation_id: str, attempt: int, chunk_no: int) -> dict[str, Any]:
    """Validates and stages one chunk (applied once per chunk whatever the deliveries).

    Never raises once retries are exhausted (the chord must not break): the import fails
    instead.

    Args:
        self: The bound task.
        operation_id: The import's operation.
        attempt: Attempt of the run that launched it.
        chunk_no: The chunk.

    Returns:
        Counts, or a note.
    """
    service = _service()
    try:
        return runtime.run(
            service.process_chunk(
                uuid.UUID(operation_id),
                attempt,
                chunk_no,
                sink=operation_sink(self, operation_id),
            )
        )
    except DomainError as exc:
        if isinstance(exc, TransientError):
            return _retry_or_fail(self, operation_id, exc.message)
        runtime.run(
            service.fail_import(
                uuid.UUID(operation_id), OperationError(status=exc.code, message=exc.message)
            )
        )
        announce_outcome(self, operation_id, {"failed": exc.message})
        return {"failed": exc.message}
    except Exception as exc:
        log.exception("chunk %s of %s raised", chunk_no, operation_id)
        return _fail_permanent_or_retry(self, operation_id, exc)


@shared_task(name="imports.finalize", bind=True, acks_late=True, reject_on_worker_lost=True)
def finalize(self: Task, results: Any, operation_id: str, attempt: int) -> dict[str, Any]:
    """Chord callback: merges staged rows into records once every chunk is DONE.

    Args:
        self: The bound task.
        results: The chunks' results (unused: the database is the truth).
        operation_id: The operation.
        attempt: Attempt of the run that launched the chord.

    Returns:
        The operation's response, or a note.
    """
    service = _service()
    try:
        response = runtime.run(service.finalize(uuid.UUID(operation_id), attempt))
    except LeaseLost as exc:
        return {"skipped": str(exc)}
    except DomainError as exc:
        if isinstance(exc, TransientError):
            return _retry_or_fail(self, operation_id, exc.message)
        runtime.run(
            service.fail_import(
                uuid.UUID(operation_id), OperationError(status=exc.code, message=exc.message)
            )
        )
        announce_outcome(self, operation_id, {"failed": exc.message})
        return {"failed": exc.message}
    except Exception as exc:
        log.exception("finalize of %s raised", operation_id)
        return _fail_permanent_or_retry(self, operation_id, exc)
    announce_outcome(self, operation_id, response)
    return response
