"""The Operation aggregate (AIP-151). State changes only through its methods."""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import uuid
from typing import Any

from domains.shared.errors import FailedPrecondition

# google.rpc.Code numbers, so ``error.code`` follows google.rpc.Status.
RPC_CODES: dict[str, int] = {
    "OK": 0,
    "CANCELLED": 1,
    "UNKNOWN": 2,
    "INVALID_ARGUMENT": 3,
    "DEADLINE_EXCEEDED": 4,
    "NOT_FOUND": 5,
    "ALREADY_EXISTS": 6,
    "PERMISSION_DENIED": 7,
    "RESOURCE_EXHAUSTED": 8,
    "FAILED_PRECONDITION": 9,
    "ABORTED": 10,
    "OUT_OF_RANGE": 11,
    "UNIMPLEMENTED": 12,
    "INTERNAL": 13,
    "UNAVAILABLE": 14,
    "DATA_LOSS": 15,
    "UNAUTHENTICATED": 16,
}


class State(enum.StrEnum):
    """Operation states."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLING = "CANCELLING"
    CANCELLED = "CANCELLED"


TERMINAL_STATES = frozenset({State.SUCCEEDED, State.FAILED, State.CANCELLED})


class IllegalTransition(FailedPrecondition):
    """An operation was asked to move to a state it cannot reach from where it is."""

    default_reason = "ILLEGAL_STATE_TRANSITION"


@dataclasses.dataclass
class Progress:
    """How far the work is.

    Attributes:
        done: Units done.
        total: Units in all, when known.
        message: Short human-readable status.
    """

    done: int = 0
    total: int | None = None
    message: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Returns the JSON form.

        Returns:
            ``{"done", "total", "message"}``.
        """
        return {"done": self.done, "total": self.total, "message": self.message}

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Progress:
        """Builds progress from its JSON form.

        Args:
            data: The stored dict, or ``None``.

        Returns:
            The progress.
        """
        data = data or {}
        return cls(
            done=int(data.get("done", 0)),
            total=data.get("total"),
            message=str(data.get("message", "")),
        )


@dataclasses.dataclass
class OperationError:
    """A google.rpc.Status: canonical code name, its number, message and details.

    Attributes:
        status: Canonical code name, e.g. ``DEADLINE_EXCEEDED``.
        message: What happened, for humans.
        details: AIP-193 detail objects.
    """

    status: str
    message: str
    details: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    @property
    def code(self) -> int:
        """The google.rpc.Code number of :attr:`status`."""
        return RPC_CODES.get(self.status, 2)

    def to_dict(self) -> dict[str, Any]:
        """Returns the JSON form.

        Returns:
            ``{"code", "status", "message", "details"}``.
        """
        return {
            "code": self.code,
            "status": self.status,
            "message": self.message,
            "details": self.details,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> OperationError | None:
        """Builds the error from its JSON form.

        Args:
            data: The stored dict, or ``None``.

        Returns:
            The error or ``None``.
        """
        if not data:
            return None
        return cls(
            status=str(data["status"]),
            message=str(data["message"]),
            details=list(data.get("details", [])),
        )


@dataclasses.dataclass
class DispatchSpec:
    """The task that carries out an operation, kept so it can be re-dispatched or retried.

    Attributes:
        task_name: Celery task name.
        queue: Queue (the domain).
        args: JSON arguments.
        kwargs: JSON keyword arguments.
    """

    task_name: str
    queue: str
    args: list[Any] = dataclasses.field(default_factory=list)
    kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Returns the JSON form.

        Returns:
            The fields as a dict.
        """
        return dataclasses.asdict(self)


@dataclasses.dataclass
class Operation:
    """A long-running operation.

    Attributes:
        id: UUIDv7; also the Celery task id of the workflow's first task.
        domain: Owning domain (and schema).
        type: Workflow type within the domain, e.g. ``ping``.
        target: Resource name the operation works on, e.g. ``pings/<id>``.
        state: Current state.
        progress: Latest progress.
        attempt: How many times a worker has started it (the fencing token: never decreases).
        attempt_base: ``attempt`` when the current series of tries began (0, or the attempt at
            the last ``:retry``): the attempt cap counts ``attempt - attempt_base``.
        dispatch_count: How many times it was handed to the broker.
        create_time: Creation time.
        update_time: Last change.
        start_time: First start.
        end_time: When it became done.
        heartbeat_time: Last sign of life from the worker running it.
        dispatch_time: Last time it was handed to the outbox.
        error: Error when FAILED (or CANCELLED).
        response: Result when SUCCEEDED.
        request_id: AIP-155 request id of the create call.
        request_hash: Fingerprint of the create request body.
        dispatch: The task that carries it out.
        lease_seconds: A RUNNING operation silent this long is presumed lost.
        pending_deadline_seconds: A PENDING operation not started this long is re-dispatched.
        correlation_id: Request id of the HTTP call that created it (logs).
        tenant: The principal's tenant that created it (isolation: other tenants never see it).
        display: Labels for people (Flower, logs): sent with the first dispatch, not stored.
    """

    id: uuid.UUID
    domain: str
    type: str
    target: str
    create_time: dt.datetime
    update_time: dt.datetime
    dispatch: DispatchSpec
    state: State = State.PENDING
    progress: Progress = dataclasses.field(default_factory=Progress)
    attempt: int = 0
    attempt_base: int = 0
    dispatch_count: int = 0
    start_time: dt.datetime | None = None
    end_time: dt.datetime | None = None
    heartbeat_time: dt.datetime | None = None
    dispatch_time: dt.datetime | None = None
    error: OperationError | None = None
    response: dict[str, Any] | None = None
    request_id: str | None = None
    request_hash: str | None = None
    lease_seconds: float = 30.0
    pending_deadline_seconds: float = 300.0
    correlation_id: str | None = None
    tenant: str = "default"
    # What a person recognises the work by in Flower and logs (dataset name, source...): sent
    # with the first dispatch as a message header, never stored with the operation.
    display: dict[str, str] = dataclasses.field(default_factory=dict, compare=False)

    @property
    def name(self) -> str:
        """AIP-151 resource name: ``operations/{domain}.{id}``."""
        return f"operations/{self.domain}.{self.id}"

    @property
    def done(self) -> bool:
        """Whether the operation reached a terminal state."""
        return self.state in TERMINAL_STATES

    def _move(self, to: State, now: dt.datetime, allowed_from: frozenset[State]) -> None:
        if self.state not in allowed_from:
            raise IllegalTransition(
                f"{self.name} is {self.state}; it cannot become {to}",
                metadata={"state": str(self.state), "requested": str(to)},
            )
        self.state = to
        self.update_time = now
        if to in TERMINAL_STATES:
            self.end_time = now

    def mark_dispatched(self, now: dt.datetime) -> None:
        """Records a hand-off to the outbox.

        Args:
            now: Current time.
        """
        self.dispatch_count += 1
        self.dispatch_time = now
        self.update_time = now

    def is_lease_expired(self, now: dt.datetime) -> bool:
        """Tells whether a RUNNING operation stopped showing signs of life.

        Args:
            now: Current time.

        Returns:
            ``True`` if the last heartbeat is older than the lease.
        """
        last = self.heartbeat_time or self.start_time or self.update_time
        return (now - last).total_seconds() > self.lease_seconds

    def attempts_exhausted(self, max_attempts: int | None) -> bool:
        """Tells whether the attempt cap forbids another start.

        Args:
            max_attempts: Starts allowed per series of tries (``None``: no cap).

        Returns:
            ``True`` if ``max_attempts`` attempts already started since creation or ``:retry``.
        """
        return max_attempts is not None and self.attempt - self.attempt_base >= max_attempts

    def start(self, now: dt.datetime) -> int:
        """A worker starts (or takes over) the operation.

        Args:
            now: Current time.

        Returns:
            The new attempt number, the fencing token every later write must carry.

        Raises:
            IllegalTransition: If done, or RUNNING with a live lease held by another attempt.
        """
        if self.state == State.RUNNING and not self.is_lease_expired(now):
            raise IllegalTransition(
                f"{self.name} is already running (attempt {self.attempt})", reason="ALREADY_RUNNING"
            )
        self._move(State.RUNNING, now, frozenset({State.PENDING, State.RUNNING}))
        self.attempt += 1
        self.start_time = self.start_time or now
        self.heartbeat_time = now
        return self.attempt

    def heartbeat(self, now: dt.datetime, progress: Progress | None = None) -> None:
        """Records a sign of life, with progress.

        Args:
            now: Current time.
            progress: New progress, if any.

        Raises:
            IllegalTransition: If the operation is not running.
        """
        if self.state not in (State.RUNNING, State.CANCELLING):
            raise IllegalTransition(
                f"{self.name} is {self.state}; it is not running", reason="NOT_RUNNING"
            )
        self.heartbeat_time = now
        self.update_time = now
        if progress is not None:
            self.progress = progress

    def succeed(self, now: dt.datetime, response: dict[str, Any]) -> None:
        """Completes the operation with a result (cancellation is best effort: a run that finishes
        while CANCELLING still succeeds).

        Args:
            now: Current time.
            response: The result.
        """
        self._move(State.SUCCEEDED, now, frozenset({State.RUNNING, State.CANCELLING}))
        self.response = response
        self.error = None

    def fail(self, now: dt.datetime, error: OperationError) -> None:
        """Ends the operation with an error.

        Args:
            now: Current time.
            error: What went wrong.
        """
        self._move(State.FAILED, now, frozenset({State.PENDING, State.RUNNING, State.CANCELLING}))
        self.error = error

    def release(self, now: dt.datetime, note: str) -> None:
        """Gives a RUNNING operation back to PENDING (a transient failure, a lost worker) so the
        next attempt can start it.

        Args:
            now: Current time.
            note: Why, shown in progress.
        """
        self._move(State.PENDING, now, frozenset({State.RUNNING}))
        self.progress = dataclasses.replace(self.progress, message=note[:500])

    def request_cancel(self, now: dt.datetime) -> None:
        """Asks the operation to stop: PENDING stops at once, RUNNING becomes CANCELLING.

        Args:
            now: Current time.

        Raises:
            IllegalTransition: If already done.
        """
        if self.state == State.CANCELLING:
            return
        if self.state == State.PENDING:
            self.mark_cancelled(now, allowed=frozenset({State.PENDING}))
            return
        self._move(State.CANCELLING, now, frozenset({State.RUNNING}))

    def mark_cancelled(self, now: dt.datetime, allowed: frozenset[State] | None = None) -> None:
        """The worker stopped after a cancel request.

        Args:
            now: Current time.
            allowed: States it may come from (default CANCELLING).
        """
        self._move(State.CANCELLED, now, allowed or frozenset({State.CANCELLING}))
        self.error = OperationError(status="CANCELLED", message="cancelled by request")

    def retry(self, now: dt.datetime) -> None:
        """Starts a new attempt of a FAILED operation.

        Args:
            now: Current time.
        """
        self._move(State.PENDING, now, frozenset({State.FAILED}))
        self.end_time = None
        self.error = None
        self.dispatch_count = 0
        self.attempt_base = self.attempt  # a fresh budget of attempts; the token keeps growing
        self.progress = Progress(total=self.progress.total, message="retry requested")
