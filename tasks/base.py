"""How every operation task maps service outcomes onto Celery: skip, retry, fail."""

from __future__ import annotations

import logging
import random
import uuid
from collections.abc import Callable, Coroutine
from typing import Any

from celery import Task
from celery.exceptions import Retry, SoftTimeLimitExceeded

from domains.operations.execution import Busy, LeaseLost, ProgressSink, Skip
from domains.operations.model import OperationError
from domains.shared.errors import DomainError, NotFound, TransientError
from monitoring import logging as log_context
from tasks.runtime import runtime

log = logging.getLogger(__name__)
log_context.install_task_context()


def readable_progress(meta: dict[str, Any]) -> str:
    """``"120/400 (30%)"``, or ``"120"`` while the total is unknown.

    Args:
        meta: Progress meta with ``done`` and ``total``.

    Returns:
        The figure for people.
    """
    done, total = meta.get("done"), meta.get("total")
    if isinstance(done, int) and isinstance(total, int) and total > 0:
        return f"{done}/{total} ({100 * done // total}%)"
    return str(done if done is not None else "?")


def progress_sink(task: Task, task_id: str | None = None) -> ProgressSink:
    """Returns a sink mirroring progress into Celery: the result backend and Flower.

    Two best-effort mirrors (the operation row in PostgreSQL is the truth):

    - the result backend: ``update_state(state="PROGRESS", meta=...)`` (``AsyncResult.info``),
      for tasks that store results (imports; the others with ``CONVEYOR_RESULT_MIRROR``);
    - a ``task-progress`` event, because Flower builds its tasks from worker events only and
      ``update_state`` sends none. Celery's event state turns an unknown ``task-<x>`` event into
      the custom state ``X`` and copies the event's fields onto the task, so Flower shows state
      ``PROGRESS`` with the meta (as JSON) as the task's ``result`` until ``task-succeeded`` or
      ``task-failed`` replaces both.

    The sink runs on the runtime's event-loop thread, where ``task.request`` (thread-local) is
    empty: the task id and worker name are taken here, on the task's thread, and the event goes
    through a dispatcher rather than ``task.send_event`` (which reads ``task.request``).

    Args:
        task: The bound task.
        task_id: Task id to report under (default: the task's own; a fan-out's chunks report
            under the operation id).

    Returns:
        The sink.
    """
    import json

    from monitoring.redaction import redact

    task_id = task_id or task.request.id
    hostname = task.request.hostname
    send_events = bool(task.app.conf.worker_send_task_events)
    # A task that ignores its result (CONVEYOR_RESULT_MIRROR off) has no PROGRESS mirror either.
    store = not task.ignore_result and task.app.conf.result_backend is not None

    def sink(meta: dict[str, Any]) -> None:
        if not task_id:
            return
        meta = redact(meta)
        if "progress" not in meta:
            # First, so Flower's result column reads "120/400 (30%)" before the raw figures.
            meta = {"progress": readable_progress(meta), **meta}
        if store:
            try:
                task.update_state(task_id=task_id, state="PROGRESS", meta=meta)
            except Exception:
                log.debug("progress of %s not stored in the result backend", task_id, exc_info=True)
        if send_events:
            try:
                with task.app.events.default_dispatcher(hostname=hostname) as dispatcher:
                    dispatcher.send(
                        "task-progress",
                        uuid=task_id,
                        result=json.dumps(meta, default=str),
                        retry=False,
                    )
            except Exception:
                log.debug("progress event of %s not sent", task_id, exc_info=True)

    return sink


PERMANENT_EXCEPTIONS: tuple[type[BaseException], ...] = (
    RecursionError,
    TypeError,
    ValueError,
    LookupError,
    AttributeError,
    NameError,
    AssertionError,
    NotImplementedError,
    ArithmeticError,
    UnicodeError,
)
"""Programming and input errors: the same input fails the same way, so they are never retried.
(``ValueError`` includes ``UnicodeError``; driver and network errors are not in this list.)"""


def permanent_error(exc: BaseException, task: Task) -> OperationError | None:
    """Classifies an unexpected exception of a task: an error to fail with, or ``None`` when
    retrying may help (connection trouble, a database outage...).

    Args:
        exc: The exception.
        task: The task (its name and time limits go into the message).

    Returns:
        The operation's error for a permanent failure, else ``None``.
    """

    def info(reason: str) -> list[dict[str, Any]]:
        return [
            {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": reason,
                "domain": "conveyor",
                "metadata": {"task": task.name, "exception": type(exc).__name__},
            }
        ]

    if isinstance(exc, SoftTimeLimitExceeded):
        limit = task.soft_time_limit or task.app.conf.task_soft_time_limit
        return OperationError(
            status="DEADLINE_EXCEEDED",
            message=f"{task.name} ran past its soft time limit of {limit} s and was stopped;"
            " raise CONVEYOR_TASK_TIME_LIMITS for it if the work is legitimately this long",
            details=info("TIME_LIMIT_EXCEEDED"),
        )
    if isinstance(exc, RecursionError):
        return OperationError(
            status="INVALID_ARGUMENT",
            message=f"input nested too deeply for {task.name} (RecursionError: {exc});"
            " flatten the input",
            details=info("INPUT_TOO_DEEP"),
        )
    if isinstance(exc, PERMANENT_EXCEPTIONS):
        return OperationError(
            status="INTERNAL",
            message=f"{task.name} failed with {type(exc).__name__}: {exc}; this is a bug or"
            " an input the code does not handle, so it is not retried (see the worker log)",
            details=info("PERMANENT_ERROR"),
        )
    return None


def backoff(retries: int) -> float:
    """Exponential backoff with full jitter.

    Args:
        retries: Retries so far.

    Returns:
        Seconds to wait.
    """
    settings = runtime.container.settings
    cap = min(settings.retry_backoff_max_seconds, settings.retry_backoff_base_seconds * 2**retries)
    return random.uniform(0, cap)


def retry_with_backoff(task: Task, max_retries: int | None = None) -> int:
    """Retries ``task`` after :func:`backoff` while it has retries left.

    The one retry policy of the tasks: exponential backoff with full jitter, up to
    ``max_retries`` retries; what to do once they are exhausted (fail the operation, log and
    give up, re-raise) is the caller's.

    Args:
        task: The bound Celery task.
        max_retries: Retries allowed (default: ``task_max_retries``).

    Returns:
        The retries so far, once they are exhausted.

    Raises:
        celery.exceptions.Retry: While retries are left (``task.retry`` raises it).
    """
    retries: int = task.request.retries
    if max_retries is None:
        max_retries = runtime.container.settings.task_max_retries
    if retries >= max_retries:
        return retries
    raise task.retry(countdown=backoff(retries), max_retries=None)


def run_operation_task(
    task: Task,
    operation_id: str,
    work: Callable[[uuid.UUID, ProgressSink], Coroutine[Any, Any, dict[str, Any]]],
    fail: Callable[[uuid.UUID, OperationError], Coroutine[Any, Any, Any]],
) -> dict[str, Any]:
    """Runs an operation's work and settles every outcome.

    - done / cancelled / deleted / taken over: returns ``{"skipped": reason}`` (idempotent);
    - running elsewhere: retries after the lease;
    - transient failure (or an unexpected infrastructure exception): retries with backoff and
      jitter up to ``task_max_retries``, then FAILED with the error (``:retry`` starts again);
    - a domain error, a programming or input error (:data:`PERMANENT_EXCEPTIONS`) or the soft
      time limit: FAILED at once, with a message saying which.

    Args:
        task: The bound Celery task.
        operation_id: The operation (task argument).
        work: ``(operation_id, sink) -> response`` coroutine factory.
        fail: Ends the operation as FAILED.

    Returns:
        The response, or a skip note.
    """
    op_id = uuid.UUID(operation_id)
    try:
        return runtime.run(work(op_id, progress_sink(task)))
    except Retry:
        raise
    except Skip as exc:
        log.info("skip %s: %s", operation_id, exc.reason)
        return {"skipped": exc.reason}
    except (LeaseLost, NotFound) as exc:
        log.warning("skip %s: %s", operation_id, exc)
        return {"skipped": str(exc)}
    except Busy as exc:
        raise task.retry(countdown=exc.retry_after, max_retries=None) from None
    except DomainError as exc:
        if not isinstance(exc, TransientError):
            runtime.run(fail(op_id, OperationError(status=exc.code, message=exc.message)))
            return {"failed": exc.message}
        error = exc.message
    except Exception as exc:
        log.exception("task %s for %s raised", task.name, operation_id)
        permanent = permanent_error(exc, task)
        if permanent is not None:
            runtime.run(fail(op_id, permanent))
            return {"failed": permanent.message}
        error = f"{type(exc).__name__}: {exc}"
    retries = retry_with_backoff(task)
    runtime.run(
        fail(
            op_id,
            OperationError(
                status="UNAVAILABLE",
                message=f"gave up after {retries + 1} attempts; last error: {error}",
                details=[
                    {
                        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                        "reason": "RETRIES_EXHAUSTED",
                        "domain": "conveyor",
                        "metadata": {"task": task.name},
                    }
                ],
            ),
        )
    )
    return {"failed": error}
