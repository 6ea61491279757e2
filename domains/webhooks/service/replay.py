"""Webhooks service, replay: re-send an endpoint's FAILED and DEAD deliveries as an operation."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from domains.operations import service as operations_service
from domains.operations.execution import Cancelled, ProgressSink
from domains.operations.model import DispatchSpec, Operation, OperationError
from domains.operations.unit_of_work import UnitOfWork
from domains.shared.clock import utcnow
from domains.shared.errors import InvalidArgument
from domains.webhooks.service.base import DOMAIN, REPLAY_TASK, ServiceBase


class ReplayPart(ServiceBase):
    """Replay operations of the webhooks service."""

    async def replay(
        self,
        tenant: str,
        endpoint_id: uuid.UUID,
        since: dt.datetime,
        *,
        request_id: str | None = None,
        correlation_id: str | None = None,
    ) -> Operation:
        """Starts a replay: every FAILED or DEAD delivery of the endpoint since ``since`` is
        sent again. Returns an Operation (type ``replay``) with progress.

        Args:
            tenant: Caller's tenant.
            endpoint_id: Endpoint id.
            since: Earliest delivery creation time.
            request_id: AIP-155 request id.
            correlation_id: Request id for logs.

        Returns:
            The PENDING operation.

        Raises:
            NotFound: If the endpoint does not exist for this tenant.
            InvalidArgument: If ``since`` is in the future.
        """
        if since.tzinfo is None:
            since = since.replace(tzinfo=dt.UTC)
        if since > utcnow():
            raise InvalidArgument("since is in the future", metadata={"field": "since"})
        await self.get_endpoint(tenant, endpoint_id)
        body = {"endpoint": str(endpoint_id), "since": since.isoformat()}
        fingerprint = operations_service.request_fingerprint(body)

        async def build(uow: UnitOfWork) -> Operation:
            op = operations_service.new_operation(
                domain=DOMAIN,
                type_="replay",
                target=f"endpoints/{endpoint_id}",
                dispatch=DispatchSpec(task_name=REPLAY_TASK, queue=DOMAIN, args=[]),
                request_id=request_id,
                request_hash=fingerprint,
                lease_seconds=self.config.lease_seconds,
                pending_deadline_seconds=self.config.pending_deadline_seconds,
                correlation_id=correlation_id,
                tenant=tenant,
            )
            op.dispatch.args = [str(op.id), since.isoformat()]
            return op

        return await operations_service.create_idempotently(
            self._uow,
            request_id=request_id,
            request_hash=fingerprint,
            build=build,
            tenant=tenant,
        )

    async def run_replay(
        self, operation_id: uuid.UUID, since: dt.datetime, *, sink: ProgressSink | None = None
    ) -> dict[str, Any]:
        """Carries out a replay operation (the ``webhooks.replay`` task).

        Args:
            operation_id: The operation.
            since: Earliest delivery creation time.
            sink: Progress mirror.

        Returns:
            The operation's response ``{"endpoint", "replayed"}``.
        """
        execution = await self._runner.claim(operation_id, sink=sink)
        endpoint_id = uuid.UUID(execution.operation.target.removeprefix("endpoints/"))
        async with self._uow() as uow:
            total = await uow.webhooks.count_replayable(endpoint_id, since)
        done = 0
        after: uuid.UUID | None = None
        try:
            await execution.checkpoint(0, total, f"0 of {total} deliveries")
            while True:
                async with self._uow() as uow:
                    batch = await uow.webhooks.replayable(
                        endpoint_id, since, after_id=after, limit=500
                    )
                    if not batch:
                        break
                    now = utcnow()
                    for delivery in batch:
                        delivery.restart(now)
                    await uow.webhooks.save_deliveries(batch)
                    await self._enqueue(
                        uow, [d.id for d in batch], execution.operation.correlation_id
                    )
                    await uow.commit()
                after = batch[-1].id
                done += len(batch)
                await execution.checkpoint(
                    min(done, max(total, done)), max(total, done), f"{done} deliveries re-queued"
                )
        except Cancelled:
            await self._runner.cancelled(execution)
            return {"cancelled": True, "replayed": done}

        async def apply(uow: UnitOfWork, op: Operation) -> dict[str, Any]:
            return {"endpoint": f"endpoints/{endpoint_id}", "replayed": done}

        op = await self._runner.finish(execution, apply)
        return op.response or {}

    async def fail_operation(self, operation_id: uuid.UUID, error: OperationError) -> None:
        """Ends a replay operation as FAILED.

        Args:
            operation_id: The operation.
            error: What happened.
        """
        await self._runner.fail(operation_id, error)
