"""Ping use cases, called by the API (create, get) and by the ``platform.ping`` task (run)."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import uuid
from collections.abc import Callable
from typing import Any, cast

from domains.operations import service as operations_service
from domains.operations.execution import Cancelled, Execution, OperationRunner, ProgressSink
from domains.operations.model import DispatchSpec, Operation, OperationError
from domains.operations.unit_of_work import UnitOfWork
from domains.platform.pings.model import Ping
from domains.platform.pings.repository import (
    ANSWER_SHAPE,
    INSTANT_PROGRESS,
    answer_effects,
    answer_params,
    instant_params,
    instant_ping,
    ping_exists,
    ping_from_row,
    ping_target,
)
from domains.platform.unit_of_work import PlatformUoW
from domains.shared.clock import utcnow
from domains.shared.errors import NotFound, TransientError
from domains.shared.ids import new_id
from domains.shared.retention import purge_batches

DOMAIN = "platform"
PING_TASK = "platform.ping"


@dataclasses.dataclass(frozen=True)
class PingPolicy:
    """Per-type deadlines of ping operations.

    Attributes:
        lease_seconds: Heartbeat lease while running.
        pending_deadline_seconds: Re-dispatch deadline while pending.
    """

    lease_seconds: float = 30.0
    pending_deadline_seconds: float = 300.0


class PingService:
    """Creates, reads and runs pings."""

    def __init__(
        self,
        uow_factory: Callable[[], PlatformUoW],
        *,
        policy: PingPolicy | None = None,
        progress_interval: float = 1.0,
    ) -> None:
        """Creates the service.

        Args:
            uow_factory: Platform unit of work factory.
            policy: Deadlines.
            progress_interval: Minimum seconds between progress writes.
        """
        self._uow = uow_factory
        self._policy = policy or PingPolicy()
        self._runner = OperationRunner(uow_factory, progress_interval=progress_interval)

    async def create_ping(
        self,
        *,
        message: str = "",
        sleep_seconds: float = 0.0,
        steps: int = 1,
        fail_attempts: int = 0,
        request_id: str | None = None,
        correlation_id: str | None = None,
        tenant: str = "default",
    ) -> Operation:
        """Creates a ping and its operation, and dispatches it through the outbox.

        Args:
            message: Text to echo.
            sleep_seconds: Work duration.
            steps: Units of work.
            fail_attempts: First N attempts fail transiently.
            request_id: AIP-155 request id.
            correlation_id: HTTP request id for logs.
            tenant: Tenant of the caller; the ping and its operation belong to it.

        Returns:
            The PENDING operation (or the earlier one for a repeated request id).

        Raises:
            InvalidArgument: If an input is out of range.
            AlreadyExists: If the request id was used with another body.
        """
        Ping.validate(message, sleep_seconds, steps, fail_attempts)
        body = {
            "message": message,
            "sleep_seconds": sleep_seconds,
            "steps": steps,
            "fail_attempts": fail_attempts,
        }
        fingerprint = operations_service.request_fingerprint(body)  # once: it is a SHA-256

        async def build(uow: UnitOfWork) -> Operation:
            ping_id = new_id()
            op = operations_service.new_operation(
                domain=DOMAIN,
                type_="ping",
                target=f"pings/{ping_id}",
                dispatch=DispatchSpec(task_name=PING_TASK, queue=DOMAIN, args=[]),
                request_id=request_id,
                request_hash=fingerprint,
                lease_seconds=self._policy.lease_seconds,
                pending_deadline_seconds=self._policy.pending_deadline_seconds,
                correlation_id=correlation_id,
                tenant=tenant,
            )
            op.dispatch.args = [str(op.id)]
            op.display = {"message": message[:80], "steps": str(steps)}
            ping = Ping(
                id=ping_id,
                operation_id=op.id,
                create_time=op.create_time,
                message=message,
                sleep_seconds=sleep_seconds,
                steps=steps,
                fail_attempts=fail_attempts,
                tenant=tenant,
            )
            await cast(PlatformUoW, uow).pings.add(ping)
            return op

        return await operations_service.create_idempotently(
            self._uow,
            request_id=request_id,
            request_hash=fingerprint,
            build=build,
            tenant=tenant,
        )

    async def get_ping(self, ping_id: uuid.UUID, tenant: str = "default") -> Ping:
        """Returns a ping of ``tenant``.

        Args:
            ping_id: Its id.
            tenant: Caller's tenant; another tenant's ping is NOT_FOUND (existence is not
                revealed).

        Returns:
            The ping.

        Raises:
            NotFound: If it does not exist for this tenant.
        """
        return await self._load(ping_id, tenant)

    async def _load(self, ping_id: uuid.UUID, tenant: str | None) -> Ping:
        # One SELECT in autocommit: one round trip, no BEGIN/ROLLBACK around a read.
        ping = await self._uow().autocommit(lambda uow: uow.pings.get(ping_id, tenant=tenant))
        if ping is None:
            raise NotFound(f"pings/{ping_id} does not exist", reason="PING_NOT_FOUND")
        return ping

    async def run_ping(
        self, operation_id: uuid.UUID, *, worker: str, sink: ProgressSink | None = None
    ) -> dict[str, Any]:
        """Carries out a ping: works in steps (checkpoint between each), then answers.

        Args:
            operation_id: The operation (the task's only argument).
            worker: This worker's name.
            sink: Progress mirror.

        Returns:
            The operation's response.

        Raises:
            Skip: If no work is needed (done, cancelled, deleted).
            Busy: If another attempt runs it.
            TransientError: On a deliberate failure (``fail_attempts``), after releasing the
                operation for the retry.
        """
        # A ping with nothing to wait for is one statement: claim, answer and SUCCEEDED.
        instant = await self._runner.run_instant(
            operation_id, instant_ping(), progress=INSTANT_PROGRESS, params=instant_params(worker)
        )
        if instant is not None:
            return instant
        # Otherwise (sleeps, steps, deliberate failures; or not claimable as is: done,
        # cancelled, running elsewhere, missing) the ordinary path, whose claim finds out why.
        # The claim reads the ping too (one round trip); the slow path reads it after.
        execution = await self._runner.claim(operation_id, sink=sink, target=ping_target())
        ping_id = uuid.UUID(execution.operation.target.removeprefix("pings/"))
        if execution.target_row is not None:
            ping = ping_from_row(execution.target_row)
        else:
            ping = await self._load(ping_id, None)  # the worker acts for the ping's own tenant
        try:
            if execution.attempt <= ping.fail_attempts:
                raise TransientError(
                    f"deliberate failure of attempt {execution.attempt} of {ping.fail_attempts}"
                )
            await self._work(execution, ping)
        except Cancelled:
            await self._runner.cancelled(execution)
            return {"cancelled": True}
        except TransientError as exc:
            await self._runner.release(execution, exc.message)
            raise

        # The hot path: the effect (reply, completion count, effect log row) and SUCCEEDED in
        # one fenced statement. If it writes nothing, the locking path below finds out why.
        response = {
            "ping": ping.name,
            "reply": f"pong: {ping.message}",
            "worker": worker,
            "attempt": execution.attempt,
        }
        fused = await self._runner.finish_fused(
            execution,
            response,
            effects=answer_effects(),
            requires=ping_exists(),
            shape=ANSWER_SHAPE,
            params=answer_params(ping_id, worker),
        )
        if fused is not None:
            return fused.response or {}

        async def apply(uow: UnitOfWork, op: Operation) -> dict[str, Any]:
            pings = cast(PlatformUoW, uow).pings
            locked = await pings.get(ping_id, for_update=True)
            if locked is None:
                raise NotFound(f"pings/{ping_id} does not exist", reason="PING_NOT_FOUND")
            now = utcnow()
            locked.answer(now, worker)
            await pings.save(locked)
            await pings.log_effect(op.id, op.attempt, worker, now)
            return {
                "ping": locked.name,
                "reply": locked.reply,
                "worker": worker,
                "attempt": op.attempt,
            }

        op = await self._runner.finish(execution, apply)
        return op.response or {}

    async def _work(self, execution: Execution, ping: Ping) -> None:
        step = ping.sleep_seconds / ping.steps
        for done in range(ping.steps):
            await execution.checkpoint(done, ping.steps, f"step {done + 1} of {ping.steps}")
            if step:
                await asyncio.sleep(step)

    async def purge(self, completed_before: dt.datetime, *, limit: int = 1000) -> int:
        """Deletes answered pings older than ``completed_before``, in batches (retention).

        Args:
            completed_before: Cut-off.
            limit: Rows per batch.

        Returns:
            Rows deleted.
        """

        async def batch() -> int:
            async with self._uow() as uow:
                deleted = await uow.pings.purge(completed_before, limit)
                await uow.commit()
            return deleted

        return await purge_batches(batch, limit)

    async def fail_operation(self, operation_id: uuid.UUID, error: OperationError) -> None:
        """Ends a ping's operation as FAILED (retries exhausted or a permanent error).

        Args:
            operation_id: The operation.
            error: What happened, with its details.
        """
        await self._runner.fail(operation_id, error)
