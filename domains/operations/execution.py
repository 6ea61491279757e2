"""Running an operation inside a task: claim, checkpoint (progress + heartbeat + cancel check),
finish with a fencing token, release for retry, fail.

Tasks are idempotent by operation id: a redelivered task for a done operation is skipped, and a
second concurrent delivery cannot run it twice (row lock on claim, attempt number as a fencing
token on every later write).
"""

from __future__ import annotations

import dataclasses
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Generic, TypeVar

import sqlalchemy as sa

from domains.operations.model import IllegalTransition, Operation, OperationError, Progress, State
from domains.operations.repository import InstantShape
from domains.operations.unit_of_work import UnitOfWork
from domains.shared.clock import utcnow
from domains.shared.errors import NotFound

log = logging.getLogger(__name__)

U = TypeVar("U", bound=UnitOfWork)
"""The unit of work type of a domain's runner (its ``finish`` callbacks receive one)."""

ProgressSink = Callable[[dict[str, Any]], None]
"""Mirrors progress elsewhere (Celery ``PROGRESS`` state, so Flower shows the same figure)."""


class Skip(Exception):
    """The operation needs no work from this delivery (done, cancelled, or owned elsewhere)."""

    def __init__(self, reason: str, operation: Operation | None = None) -> None:
        """Creates the signal.

        Args:
            reason: Why the delivery is skipped.
            operation: The operation as found.
        """
        super().__init__(reason)
        self.reason = reason
        self.operation = operation


class Busy(Exception):
    """Another attempt holds a live lease; try again after ``retry_after`` seconds."""

    def __init__(self, retry_after: float) -> None:
        """Creates the signal.

        Args:
            retry_after: Seconds until the lease may have expired.
        """
        super().__init__(f"operation is running elsewhere; retry in {retry_after:.1f}s")
        self.retry_after = retry_after


class Cancelled(Exception):
    """The operation was asked to stop; raised at a checkpoint."""


class LeaseLost(Exception):
    """Another attempt took the operation over; this one must stop without writing."""


@dataclasses.dataclass
class Execution:
    """One attempt at an operation, owned by the task that claimed it.

    Attributes:
        operation: The operation as claimed.
        attempt: Fencing token.
        target_row: The target's row, read with the claim (``claim(target=...)``), if asked
            for and read on the fused path.
    """

    operation: Operation
    attempt: int
    _runner: OperationRunner[Any]
    target_row: dict[str, Any] | None = None
    _sink: ProgressSink | None = None
    _last_write: float = dataclasses.field(default_factory=time.monotonic)
    _progress: Progress = dataclasses.field(default_factory=Progress)

    @property
    def id(self) -> uuid.UUID:
        """The operation id."""
        return self.operation.id

    async def checkpoint(self, done: int, total: int | None = None, message: str = "") -> None:
        """Reports progress between units of work; writes are throttled.

        Each write is also the heartbeat and the cancellation check.

        Args:
            done: Units done.
            total: Units in all.
            message: Short status.

        Raises:
            Cancelled: If cancellation was requested.
            LeaseLost: If another attempt took over.
        """
        self._progress = Progress(done=done, total=total, message=message)
        now = time.monotonic()
        final = total is not None and done >= total
        if not final and now - self._last_write < self._runner.progress_interval:
            return
        self._last_write = now
        progress, now_ = self._progress, utcnow()
        # One fenced UPDATE in autocommit: one round trip (heartbeat, progress, cancel check).
        state = await self._runner.uow_factory().autocommit(
            lambda uow: uow.operations.heartbeat(self.id, self.attempt, progress, now_),
            by_key=True,
        )
        if self._sink is not None:
            try:
                self._sink({**self._progress.to_dict(), "operation": self.operation.name})
            except Exception:
                log.debug("progress mirror failed", exc_info=True)
        if state is None:
            raise LeaseLost(f"{self.operation.name}: attempt {self.attempt} no longer owns it")
        if state == State.CANCELLING:
            raise Cancelled(self.operation.name)


def attempts_exhausted_error(op: Operation, max_attempts: int) -> OperationError:
    """The error of an operation stopped by the attempt cap, saying what happened.

    Args:
        op: The operation, as found by the refused claim.
        max_attempts: The cap.

    Returns:
        An ABORTED error with reason ``ATTEMPTS_EXHAUSTED``.
    """
    tries = op.attempt - op.attempt_base
    last = op.progress.message
    if op.state == State.RUNNING or "worker lost" in last:
        what = (
            f"the worker died running this operation ({tries} attempts started, none finished:"
            " it was killed, ran out of memory, crashed or hit its hard time limit)"
        )
    else:
        what = f"{tries} attempts started and none finished (last: {last or 'no message'})"
    return OperationError(
        status="ABORTED",
        message=(
            f"{op.type} stopped: {what}; the cap is CONVEYOR_MAX_ATTEMPTS={max_attempts}."
            " Fix the cause, then :retry it"
        ),
        details=[
            {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": "ATTEMPTS_EXHAUSTED",
                "domain": "conveyor",
                "metadata": {"attempts": str(tries), "max_attempts": str(max_attempts)},
            }
        ],
    )


class OperationRunner(Generic[U]):
    """Claims and settles operations of one domain."""

    def __init__(self, uow_factory: Callable[[], U], *, progress_interval: float = 1.0) -> None:
        """Creates the runner.

        Args:
            uow_factory: The domain's unit of work factory.
            progress_interval: Minimum seconds between progress writes.
        """
        self.uow_factory = uow_factory
        self.progress_interval = progress_interval

    async def claim(
        self,
        operation_id: uuid.UUID,
        *,
        sink: ProgressSink | None = None,
        target: sa.Table | None = None,
    ) -> Execution:
        """Starts an attempt: PENDING (or RUNNING with an expired lease) -> RUNNING.

        Args:
            operation_id: The operation.
            sink: Progress mirror.
            target: The table of the operation's target: its row comes back with the fused
                claim as ``Execution.target_row`` (``None`` on the slow path, or if missing).

        Returns:
            The execution, with its fencing token.

        Raises:
            NotFound: If the operation does not exist (deleted).
            Skip: If it is done, or cancelled now.
            Busy: If another attempt holds a live lease.
        """
        # The fused claim: one UPDATE ... RETURNING in autocommit (one round trip). Only when it
        # does not match (done, CANCELLING, running elsewhere, capped, missing) does the slow
        # path below lock the row and decide what to do with it.
        factory = self.uow_factory()
        target_row: dict[str, Any] | None = None
        if target is None:
            claimed = await factory.autocommit(
                lambda uow: uow.operations.claim(operation_id, utcnow(), uow.max_attempts),
                by_key=True,
            )
        else:
            fused = await factory.autocommit(
                lambda uow: uow.operations.claim_with_target(
                    operation_id, utcnow(), uow.max_attempts, target
                ),
                by_key=True,
            )
            claimed, target_row = fused if fused is not None else (None, None)
        if claimed is not None:
            return Execution(
                operation=claimed,
                attempt=claimed.attempt,
                _runner=self,
                target_row=target_row,
                _sink=sink,
                _progress=claimed.progress,
            )
        async with self.uow_factory() as uow:
            op = await uow.operations.get(operation_id, for_update=True)
            if op is None:
                raise NotFound(
                    f"operation {operation_id} does not exist", reason="OPERATION_NOT_FOUND"
                )
            now = utcnow()
            if op.done:
                raise Skip(f"{op.name} is already {op.state}", op)
            if op.state == State.CANCELLING:
                op.mark_cancelled(now)
                await uow.operations.save(op)
                await uow.commit()
                raise Skip(f"{op.name} cancelled before it started", op)
            startable = op.state == State.PENDING or op.is_lease_expired(now)
            if startable and op.attempts_exhausted(uow.max_attempts):
                # A poison pill (kills its worker, or keeps failing): stop, and say why.
                op.fail(now, attempts_exhausted_error(op, int(uow.max_attempts or 0)))
                await uow.operations.save(op)
                await uow.commit()
                log.error("%s: %s", op.name, op.error.message if op.error else "")
                raise Skip(f"{op.name} failed: attempt cap reached", op)
            try:
                attempt = op.start(now)
            except IllegalTransition:
                last = op.heartbeat_time or op.update_time
                raise Busy(max(0.5, op.lease_seconds - (now - last).total_seconds())) from None
            await uow.operations.save(op)
            await uow.commit()
        # The claim is the first heartbeat: the first checkpoint writes after progress_interval.
        return Execution(
            operation=op, attempt=attempt, _runner=self, _sink=sink, _progress=op.progress
        )

    async def _settle(self, execution: Execution, change: Callable[[Operation], None]) -> Operation:
        async with self.uow_factory() as uow:
            op = await uow.operations.get(execution.id, for_update=True)
            if op is None or op.attempt != execution.attempt or op.done:
                raise LeaseLost(
                    f"operation {execution.id}: attempt {execution.attempt} no longer owns it"
                )
            change(op)
            await uow.operations.save(op)
            await uow.commit()
        return op

    async def finish(
        self,
        execution: Execution,
        apply: Callable[[U, Operation], Awaitable[dict[str, Any]]],
    ) -> Operation:
        """Applies the work's effects and marks the operation SUCCEEDED in one transaction.

        Effects happen exactly once: the transaction locks the row and checks the fencing token.

        Args:
            execution: The attempt.
            apply: Writes the domain effects; returns the operation's response.

        Returns:
            The SUCCEEDED operation.

        Raises:
            LeaseLost: If another attempt owns the operation (nothing is written).
        """
        async with self.uow_factory() as uow:
            op = await uow.operations.get(execution.id, for_update=True)
            if op is None or op.attempt != execution.attempt or op.done:
                raise LeaseLost(
                    f"operation {execution.id}: attempt {execution.attempt} no longer owns it"
                )
            response = await apply(uow, op)
            now = utcnow()
            if op.progress.total is not None or execution._progress.total is not None:
                op.progress = dataclasses.replace(
                    execution._progress, done=execution._progress.total or 0
                )
            op.succeed(now, response)
            await uow.operations.save(op)
            await uow.commit()
        return op

    async def finish_fused(
        self,
        execution: Execution,
        response: dict[str, Any],
        effects: Sequence[Callable[[sa.ColumnElement[bool]], Any]] = (),
        requires: sa.ColumnElement[bool] | None = None,
        shape: str | None = None,
        params: dict[str, Any] | None = None,
    ) -> Operation | None:
        """The hot path's finish: effects, SUCCEEDED and outbox rows in one statement.

        One CTE in autocommit (one round trip) that checks the fencing token and writes the
        operation and every effect (see :meth:`SqlOperationRepository.finish`).

        Args:
            execution: The attempt.
            response: The operation's response.
            effects: ``owned -> DML statement`` builders for the effect rows.
            requires: A condition the effects need (their target exists).
            shape: Names a statement built from bind parameters only, built once and reused
                (see :meth:`SqlOperationRepository.finish`).
            params: Values of the effects' bind parameters.

        Returns:
            The SUCCEEDED operation, or ``None`` if nothing was written: then call
            :meth:`finish`, which locks the row and raises the precise error (or applies the
            effects if the fused statement only missed a precondition it re-checks itself).
        """
        progress = None
        if execution.operation.progress.total is not None or execution._progress.total is not None:
            progress = dataclasses.replace(execution._progress, done=execution._progress.total or 0)
        now = utcnow()
        return await self.uow_factory().autocommit(
            lambda uow: uow.operations.finish(
                execution.id,
                execution.attempt,
                now,
                response,
                progress,
                effects,
                requires,
                shape=shape,
                params=params,
            ),
            # The operation by key; the effects find their rows through it (by key too).
            by_key=True,
        )

    async def run_instant(
        self,
        operation_id: uuid.UUID,
        shape: InstantShape,
        *,
        progress: Progress,
        params: Mapping[str, Any],
    ) -> dict[str, Any] | None:
        """Runs instant work as one statement: claim, effects and SUCCEEDED together.

        The hot path of work with nothing to wait for (see :class:`InstantShape`): one round
        trip instead of a claim and a finish, with the same fencing (the attempt counter moves
        on, concurrent runs serialize on the row lock) and the same atomicity.

        Args:
            operation_id: The operation.
            shape: The work's statement parts.
            progress: The operation's final progress.
            params: Values of the shape's own bind parameters.

        Returns:
            The SUCCEEDED operation's response, or ``None`` if nothing was written (not
            claimable as is, not instant, target missing): then run it the ordinary way,
            starting with :meth:`claim`, which finds out why.
        """
        now = utcnow()
        return await self.uow_factory().autocommit(
            lambda uow: uow.operations.run_instant(
                operation_id, now, uow.max_attempts, shape, progress, params
            ),
            by_key=True,
        )

    async def cancelled(self, execution: Execution) -> Operation:
        """Records that the task stopped after a cancel request.

        Args:
            execution: The attempt.

        Returns:
            The CANCELLED operation.
        """
        return await self._settle(execution, lambda op: op.mark_cancelled(utcnow()))

    async def release(self, execution: Execution, reason: str) -> Operation:
        """Gives the operation back to PENDING after a transient failure (a retry follows).

        Args:
            execution: The attempt.
            reason: The transient error.

        Returns:
            The PENDING operation.
        """

        def change(op: Operation) -> None:
            if op.state == State.CANCELLING:
                op.mark_cancelled(utcnow())
            else:
                op.release(utcnow(), f"attempt {execution.attempt} failed: {reason}; retrying")

        return await self._settle(execution, change)

    async def fail(self, operation_id: uuid.UUID, error: OperationError) -> Operation | None:
        """Ends an operation with an error, unless it is already done.

        Args:
            operation_id: The operation.
            error: What went wrong.

        Returns:
            The operation, or ``None`` if it does not exist.
        """
        async with self.uow_factory() as uow:
            op = await uow.operations.get(operation_id, for_update=True)
            if op is None:
                return None
            if not op.done:
                op.fail(utcnow(), error)
                await uow.operations.save(op)
                await uow.commit()
        return op
