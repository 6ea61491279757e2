"""Operations use cases: create idempotently, get, list, cancel, wait, delete, retry, sweep."""

from __future__ import annotations

import asyncio
import builtins
import dataclasses
import datetime as dt
import heapq
import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

from domains.operations.model import DispatchSpec, Operation, OperationError, State
from domains.operations.repository import DuplicateRequestId
from domains.operations.unit_of_work import NotFusable, UnitOfWork
from domains.shared import idempotency
from domains.shared.clock import utcnow
from domains.shared.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from domains.shared.events import handler_task_name
from domains.shared.ids import new_id
from domains.shared.outbox import OutboxMessage
from domains.shared.query import Condition, Keyset
from domains.shared.retention import purge_batches

log = logging.getLogger(__name__)

UowFactory = Callable[[], UnitOfWork]
U = TypeVar("U", bound=UnitOfWork)
MAX_WAIT_SECONDS = 60.0


def request_fingerprint(body: Mapping[str, Any]) -> str:
    """Returns a stable hash of a create request's body (for AIP-155 request ids).

    Args:
        body: The request fields, without ``request_id``.

    Returns:
        A hex SHA-256 of the canonical JSON.
    """
    return idempotency.request_fingerprint(body)


def parse_operation_name(name: str) -> tuple[str, uuid.UUID]:
    """Splits ``operations/{domain}.{id}`` (or ``{domain}.{id}``).

    Args:
        name: The operation name or id part.

    Returns:
        ``(domain, id)``.

    Raises:
        InvalidArgument: If the name is malformed.
    """
    text = name.removeprefix("operations/")
    domain, sep, raw_id = text.partition(".")
    try:
        if not sep:
            raise ValueError
        return domain, uuid.UUID(raw_id)
    except ValueError:
        raise InvalidArgument(
            f"operation name {name!r} is malformed; expected operations/{{domain}}.{{uuid}}"
            " as returned by the create call",
            reason="INVALID_OPERATION_NAME",
        ) from None


def new_operation(
    *,
    domain: str,
    type_: str,
    target: str,
    dispatch: DispatchSpec,
    request_id: str | None = None,
    request_hash: str | None = None,
    lease_seconds: float = 30.0,
    pending_deadline_seconds: float = 300.0,
    correlation_id: str | None = None,
    operation_id: uuid.UUID | None = None,
    tenant: str = "default",
) -> Operation:
    """Creates a PENDING operation.

    Args:
        domain: Owning domain.
        type_: Workflow type.
        target: Resource name worked on.
        dispatch: The task that carries it out.
        request_id: AIP-155 request id.
        request_hash: Fingerprint of the request body.
        lease_seconds: Heartbeat lease while running.
        pending_deadline_seconds: Re-dispatch deadline while pending.
        correlation_id: Request id for logs.
        operation_id: Id to use (defaults to a new UUIDv7).
        tenant: Tenant of the principal that asked for it.

    Returns:
        The new operation.
    """
    now = utcnow()
    return Operation(
        id=operation_id or new_id(),
        domain=domain,
        type=type_,
        target=target,
        create_time=now,
        update_time=now,
        dispatch=dispatch,
        request_id=request_id,
        request_hash=request_hash,
        lease_seconds=lease_seconds,
        pending_deadline_seconds=pending_deadline_seconds,
        correlation_id=correlation_id,
        tenant=tenant,
    )


async def enqueue(uow: UnitOfWork, operation: Operation) -> OutboxMessage:
    """Writes the outbox row that dispatches ``operation`` (in the caller's transaction).

    The Celery task id is the operation id, so Flower, logs and the API name the same thing.

    Args:
        uow: The open unit of work.
        operation: The operation to dispatch (saved by the caller).

    Returns:
        The outbox message.
    """
    operation.mark_dispatched(utcnow())
    spec = operation.dispatch
    message = OutboxMessage(
        task_name=spec.task_name,
        queue=spec.queue,
        args=list(spec.args),
        kwargs=dict(spec.kwargs),
        task_id=str(operation.id),
        operation_id=operation.id,
        headers={
            "correlation_id": operation.correlation_id or "",
            "operation": operation.name,
            **({"display": dict(operation.display)} if operation.display else {}),
        },
    )
    await uow.outbox.add(message)
    return message


def _same_request(existing: Operation, request_hash: str | None) -> Operation:
    if existing.request_hash != request_hash:
        raise AlreadyExists(
            f"request_id {existing.request_id!r} was already used with a different request body"
            f" (it created {existing.name}); use a new request_id for a new request",
            reason="REQUEST_ID_REUSED",
            metadata={"operation": existing.name},
        )
    return existing


async def create_idempotently(
    uow_factory: Callable[[], U],
    *,
    request_id: str | None,
    request_hash: str,
    build: Callable[[U], Awaitable[Operation]],
    tenant: str = "default",
) -> Operation:
    """Runs a workflow-creating transaction once per AIP-155 request id.

    ``build`` writes the domain rows and returns the new operation; this writes the operation
    and its outbox row and commits. The same request id with the same body returns the first operation; with a
    different body, ALREADY_EXISTS. Concurrent duplicates are settled by the unique index.

    Args:
        uow_factory: The domain's unit of work factory.
        request_id: AIP-155 request id, or ``None``.
        request_hash: Fingerprint of the body.
        build: Writes domain rows, returns the (unsaved) operation (with ``tenant`` set).
        tenant: Caller's tenant: request ids are unique per tenant.

    Returns:
        The operation (new or the first one).

    Raises:
        AlreadyExists: If the request id was used with another body.
    """
    idempotency.check_request_id(request_id)

    async def write(uow: U) -> Operation:
        operation = await build(uow)
        await enqueue(uow, operation)
        await uow.operations.add(operation)
        return operation

    try:
        # The hot path: domain rows + operation + outbox row in one statement (one round trip).
        # A taken request id fails that statement on the unique index (nothing written), and
        # the duplicate branch below answers with the first operation.
        try:
            return await uow_factory().insert_fused(write)
        except NotFusable:
            pass  # build reads or updates: an ordinary transaction below
        async with uow_factory() as uow:
            if request_id is not None:
                existing = await uow.operations.get_by_request_id(request_id, tenant)
                if existing is not None:
                    return _same_request(existing, request_hash)
            operation = await build(uow)
            await enqueue(uow, operation)
            await uow.operations.add(operation)
            await uow.commit()
            return operation
    except DuplicateRequestId:
        async with uow_factory() as uow:
            existing = await uow.operations.get_by_request_id(str(request_id), tenant)
            if existing is None:  # pragma: no cover - the winner rolled back
                raise
            return _same_request(existing, request_hash)


@dataclasses.dataclass(frozen=True)
class OperationPage:
    """One page of a list.

    Attributes:
        operations: The operations, in creation order.
        last_id: Keyset position for the next page, ``None`` when there is none.
    """

    operations: list[Operation]
    last_id: uuid.UUID | None

    @property
    def last(self) -> Keyset | None:
        """Keyset ``(create_time, id)`` of the next page, ``None`` when there is none."""
        if self.last_id is None:
            return None
        return (self.operations[-1].create_time, self.operations[-1].id)


@dataclasses.dataclass(frozen=True)
class SweepReport:
    """What one sweep did.

    Attributes:
        redispatched: Operations handed to the outbox again.
        failed: Operations failed after too many dispatches.
        cancelled: CANCELLING operations whose worker vanished, now CANCELLED.
        events_redispatched: Integration events a consumer had not handled by their deadline,
            dispatched again.
        events_failed: Integration events out of dispatches, now FAILED in the inbox.
    """

    redispatched: int = 0
    failed: int = 0
    cancelled: int = 0
    events_redispatched: int = 0
    events_failed: int = 0


class OperationsService:
    """Operations across every domain schema."""

    def __init__(
        self,
        uow_factories: Mapping[str, UowFactory],
        *,
        read_uow_factories: Mapping[str, UowFactory] | None = None,
        max_dispatches: int = 5,
        event_deadline_seconds: float = 60.0,
    ) -> None:
        """Creates the service.

        Args:
            uow_factories: Domain -> unit of work on the primary.
            read_uow_factories: Domain -> unit of work on the replica (lists).
            max_dispatches: Dispatches after which a lost operation (or event) is failed.
            event_deadline_seconds: Seconds a consumer has to handle a dispatched event.
        """
        self._uows = dict(uow_factories)
        self._read_uows = dict(read_uow_factories or uow_factories)
        self._max_dispatches = max_dispatches
        self._event_deadline = event_deadline_seconds

    @property
    def domains(self) -> list[str]:
        """Domains served."""
        return list(self._uows)

    def _uow(self, domain: str, *, read: bool = False) -> UnitOfWork:
        factories = self._read_uows if read else self._uows
        if domain not in factories:
            raise NotFound(
                f"operation domain {domain!r} does not exist", reason="OPERATION_NOT_FOUND"
            )
        return factories[domain]()

    async def get(self, name: str, *, tenant: str = "default") -> Operation:
        """Returns an operation.

        Args:
            name: ``operations/{domain}.{id}`` or ``{domain}.{id}``.
            tenant: Caller's tenant; another tenant's operation is NOT_FOUND (routers pass the
                caller's, so existence is never revealed across tenants).

        Returns:
            The operation.

        Raises:
            NotFound: If it does not exist for this tenant.
        """
        domain, op_id = parse_operation_name(name)
        # One statement, so autocommit: one round trip instead of BEGIN, SELECT, ROLLBACK.
        # By key: planned once per connection (clients poll this).
        op = await self._uow(domain).autocommit(
            lambda uow: uow.operations.get(op_id, tenant=tenant), by_key=True
        )
        if op is None:
            raise NotFound(
                f"operations/{domain}.{op_id} does not exist", reason="OPERATION_NOT_FOUND"
            )
        return op

    async def list(
        self,
        conditions: Sequence[Condition],
        *,
        page_size: int,
        after: Keyset | None,
        tenant: str = "default",
        newest_first: bool = False,
    ) -> OperationPage:
        """Lists operations of every domain, merged in creation ``(create_time, id)`` order.

        ``metadata.domain`` conditions pick the domain schemas to read (every row of a schema
        has its domain), so they never reach SQL.

        Args:
            conditions: Parsed filter.
            page_size: Page size.
            after: Keyset position from the previous page.
            tenant: Only this tenant's operations.
            newest_first: Newest first instead of oldest first.

        Returns:
            The page.
        """
        domains = self.domains
        rest: builtins.list[Condition] = []
        for cond in conditions:
            if cond.field == "metadata.domain" and cond.op == "=":
                domains = [d for d in domains if d == cond.value]
            elif cond.field == "metadata.domain" and cond.op == "!=":
                domains = [d for d in domains if d != cond.value]
            else:
                rest.append(cond)
        per_domain: builtins.list[builtins.list[Operation]] = []
        for domain in domains:
            # One statement per domain, so autocommit: one round trip each, not three (a
            # replica-routed source still opens an ordinary transaction).
            per_domain.append(
                await self._uow(domain, read=True).autocommit(
                    lambda uow: uow.operations.list(
                        rest,
                        after=after,
                        limit=page_size + 1,
                        tenant=tenant,
                        newest_first=newest_first,
                    )
                )
            )
        merged = list(
            heapq.merge(*per_domain, key=lambda op: (op.create_time, op.id), reverse=newest_first)
        )
        page = merged[:page_size]
        last = page[-1].id if len(merged) > page_size else None
        return OperationPage(operations=page, last_id=last)

    async def cancel(self, name: str, *, tenant: str = "default") -> Operation:
        """Requests cancellation: PENDING ends CANCELLED at once, RUNNING becomes CANCELLING and
        the worker stops at its next checkpoint. Cancelling a CANCELLING operation is a no-op.

        Args:
            name: Operation name.
            tenant: Caller's tenant (another tenant's operation is NOT_FOUND).

        Returns:
            The operation after the request.

        Raises:
            NotFound: If it does not exist.
            FailedPrecondition: If it is already done.
        """
        domain, op_id = parse_operation_name(name)
        async with self._uow(domain) as uow:
            op = await uow.operations.get(op_id, for_update=True, tenant=tenant)
            if op is None:
                raise NotFound(f"{name} does not exist", reason="OPERATION_NOT_FOUND")
            if op.done:
                raise FailedPrecondition(
                    f"{op.name} is already done ({op.state}); only unfinished operations can be cancelled",
                    reason="OPERATION_DONE",
                )
            op.request_cancel(utcnow())
            await uow.operations.save(op)
            await uow.commit()
        return op

    async def wait(self, name: str, timeout: float, *, tenant: str = "default") -> Operation:
        """Long-polls until the operation is done or ``timeout`` passes.

        Args:
            name: Operation name.
            timeout: Seconds, 0 < timeout <= 60.
            tenant: Caller's tenant (another tenant's operation is NOT_FOUND).

        Returns:
            The operation, done or not.

        Raises:
            InvalidArgument: If the timeout is out of range.
        """
        if not 0 <= timeout <= MAX_WAIT_SECONDS:
            raise InvalidArgument(
                f"timeout must be between 0 and {MAX_WAIT_SECONDS:g} seconds (got {timeout:g})",
                reason="INVALID_TIMEOUT",
            )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        delay = 0.05
        while True:
            op = await self.get(name, tenant=tenant)
            remaining = deadline - loop.time()
            if op.done or remaining <= 0:
                return op
            await asyncio.sleep(min(delay, remaining))
            delay = min(delay * 2, 1.0)

    async def delete(self, name: str, *, tenant: str = "default") -> None:
        """Deletes a done operation.

        Args:
            name: Operation name.
            tenant: Caller's tenant (another tenant's operation is NOT_FOUND).

        Raises:
            NotFound: If it does not exist.
            FailedPrecondition: If it is not done.
        """
        domain, op_id = parse_operation_name(name)
        async with self._uow(domain) as uow:
            op = await uow.operations.get(op_id, for_update=True, tenant=tenant)
            if op is None:
                raise NotFound(f"{name} does not exist", reason="OPERATION_NOT_FOUND")
            if not op.done:
                raise FailedPrecondition(
                    f"{op.name} is {op.state}; cancel it or wait until it is done before deleting it",
                    reason="OPERATION_NOT_DONE",
                )
            await uow.operations.delete(op_id)
            await uow.commit()

    async def retry(self, name: str, *, tenant: str = "default") -> Operation:
        """Starts a new attempt of a FAILED operation (its task is dispatched again).

        Args:
            name: Operation name.
            tenant: Caller's tenant (another tenant's operation is NOT_FOUND).

        Returns:
            The operation, PENDING again.

        Raises:
            NotFound: If it does not exist.
            FailedPrecondition: If it is not FAILED.
        """
        domain, op_id = parse_operation_name(name)
        async with self._uow(domain) as uow:
            op = await uow.operations.get(op_id, for_update=True, tenant=tenant)
            if op is None:
                raise NotFound(f"{name} does not exist", reason="OPERATION_NOT_FOUND")
            if op.state != State.FAILED:
                raise FailedPrecondition(
                    f"{op.name} is {op.state}; only FAILED operations can be retried",
                    reason="OPERATION_NOT_FAILED",
                )
            op.retry(utcnow())
            await enqueue(uow, op)
            await uow.operations.save(op)
            await uow.commit()
        return op

    async def sweep(self, *, limit: int = 500) -> SweepReport:
        """Puts lost work back: re-dispatches stale PENDING/RUNNING operations, up to
        ``max_dispatches``, then fails them with DEADLINE_EXCEEDED.

        Recovers messages a broker lost (restart, flush) and tasks whose worker died.

        Args:
            limit: Maximum operations per domain per call.

        Returns:
            Counts of what was done.
        """
        redispatched = failed = cancelled = 0
        for domain in self.domains:
            async with self._uow(domain) as uow:
                now = utcnow()
                for op in await uow.operations.find_stale(now, limit):
                    if op.state == State.CANCELLING:
                        op.mark_cancelled(now)
                        cancelled += 1
                    elif await self._dispatch_in_flight(uow, op, now):
                        continue
                    elif op.dispatch_count >= self._max_dispatches:
                        tries = op.attempt - op.attempt_base
                        if op.state == State.RUNNING:
                            cause = f"the worker running attempt {op.attempt} died"
                        elif tries:
                            cause = f"{tries} attempts started and none finished"
                        else:
                            cause = "no worker ever started it"
                        op.fail(
                            now,
                            OperationError(
                                status="DEADLINE_EXCEEDED",
                                message=(
                                    f"{op.type} did not complete after {op.dispatch_count}"
                                    f" dispatches: {cause}; retry it with :retry once workers"
                                    f" for queue {op.dispatch.queue!r} are healthy"
                                ),
                            ),
                        )
                        failed += 1
                    else:
                        if op.state == State.RUNNING:
                            op.release(now, f"worker lost (attempt {op.attempt}); re-dispatched")
                        await enqueue(uow, op)
                        redispatched += 1
                    await uow.operations.save(op)
                await uow.commit()
        events_redispatched, events_failed = await self._sweep_events(limit)
        if redispatched or failed or cancelled or events_redispatched or events_failed:
            log.info(
                "sweep: redispatched=%d failed=%d cancelled=%d events_redispatched=%d"
                " events_failed=%d",
                redispatched,
                failed,
                cancelled,
                events_redispatched,
                events_failed,
            )
        return SweepReport(
            redispatched=redispatched,
            failed=failed,
            cancelled=cancelled,
            events_redispatched=events_redispatched,
            events_failed=events_failed,
        )

    async def _sweep_events(self, limit: int) -> tuple[int, int]:
        """Re-dispatches integration events a consumer has not handled by their deadline
        (broker lost the message, or the handler gave up during an outage) through the
        consumer's outbox; after ``max_dispatches`` the inbox row ends FAILED.
        """
        redispatched = failed = 0
        for domain in self.domains:
            async with self._uow(domain) as uow:
                if uow.inbox is None:
                    continue
                now = utcnow()
                for entry in await uow.inbox.find_due(now, self._event_deadline, limit):
                    if entry.dispatch_count >= self._max_dispatches:
                        reason = (
                            f"{domain} did not handle event {entry.event_type} {entry.event_id}"
                            f" after {entry.dispatch_count} dispatches; see the {domain} worker"
                            " logs for the error"
                        )
                        log.error("inbox: %s", reason)
                        await uow.inbox.mark_failed(entry, reason)
                        failed += 1
                        continue
                    await uow.outbox.add(
                        OutboxMessage(
                            task_name=handler_task_name(domain),
                            queue=domain,
                            args=[],
                            kwargs={"event": dict(entry.envelope)},
                            task_id=f"{entry.event_id}.{domain}",
                            headers={"correlation_id": ""},
                        )
                    )
                    await uow.inbox.mark_dispatched(entry, now)
                    redispatched += 1
                await uow.commit()
        return redispatched, failed

    async def redispatch_lost_in_broker(self, wiped_at: dt.datetime, *, batch: int = 500) -> int:
        """Re-dispatches at once every PENDING operation whose message was published before the
        broker lost its state (found wiped at ``wiped_at``), instead of waiting for each one's
        pending deadline. A healthy backlog is never touched: this runs only after a wipe.

        Args:
            wiped_at: When the wipe was detected (messages published before it are gone).
            batch: Operations per transaction.

        Returns:
            Operations re-dispatched.
        """
        total = 0
        for domain in self.domains:
            after: uuid.UUID | None = None
            while True:
                async with self._uow(domain) as uow:
                    ops = await uow.operations.find_pending_dispatched_before(
                        wiped_at, after, batch
                    )
                    if not ops:
                        break
                    after = ops[-1].id
                    owed = await uow.outbox.unsent_operations([op.id for op in ops])
                    for op in ops:
                        if op.id in owed:
                            continue  # not published yet: the relay sends it
                        await enqueue(uow, op)
                        await uow.operations.save(op)
                        total += 1
                    await uow.commit()
                if len(ops) < batch:
                    break
        if total:
            log.warning("broker lost its messages: re-dispatched %d pending operations", total)
        return total

    @staticmethod
    async def _dispatch_in_flight(uow: UnitOfWork, op: Operation, now: dt.datetime) -> bool:
        """A PENDING operation whose message the relay still owes (broker down?) or published
        less than its deadline ago is not lost yet: its deadline counts from the publish.
        """
        if op.state != State.PENDING:
            return False
        unsent, last_sent = await uow.outbox.dispatch_status(op.id)
        if unsent:
            return True
        wait = op.pending_deadline_seconds * max(op.dispatch_count, 1)
        return last_sent is not None and (now - last_sent).total_seconds() < wait

    async def purge_done(self, older_than: dt.datetime, *, limit: int = 1000) -> int:
        """Deletes done operations that ended before ``older_than`` in every domain, in
        batches of ``limit`` rows (one transaction each) until none is left.

        Args:
            older_than: Cut-off.
            limit: Rows per batch.

        Returns:
            Rows deleted.
        """
        total = 0
        for domain in self.domains:
            # Whole days first: a dropped partition leaves no dead rows (issue #22).
            async with self._uow(domain) as uow:
                await uow.operations.partitions.ensure(utcnow().date())
                _, dropped = await uow.operations.partitions.drop_expired(older_than)
                await uow.commit()
            total += dropped

            async def batch(domain: str = domain) -> int:
                async with self._uow(domain) as uow:
                    deleted = await uow.operations.purge_done(older_than, limit)
                    await uow.commit()
                return deleted

            total += await purge_batches(batch, limit)
        return total

    async def purge_messages(
        self, *, sent_before: dt.datetime, handled_before: dt.datetime, limit: int = 1000
    ) -> dict[str, int]:
        """Deletes published outbox rows and handled inbox rows older than the cut-offs, in
        every domain schema, in batches.

        Args:
            sent_before: Outbox rows published before this go (unsent rows never do).
            handled_before: Inbox rows handled before this go (PENDING/FAILED ones stay).
            limit: Rows per batch.

        Returns:
            ``{"outbox": n, "inbox": m}`` rows deleted.
        """
        counts = {"outbox": 0, "inbox": 0}
        for domain in self.domains:
            async with self._uow(domain) as uow:
                await uow.outbox.partitions.ensure(utcnow().date())
                _, dropped = await uow.outbox.partitions.drop_expired(sent_before)
                await uow.commit()
            counts["outbox"] += dropped

            async def outbox_batch(domain: str = domain) -> int:
                async with self._uow(domain) as uow:
                    deleted = await uow.outbox.purge_sent(sent_before, limit)
                    await uow.commit()
                return deleted

            async def inbox_batch(domain: str = domain) -> int:
                async with self._uow(domain) as uow:
                    if uow.inbox is None:
                        return 0
                    deleted = await uow.inbox.purge_handled(handled_before, limit)
                    await uow.commit()
                return deleted

            counts["outbox"] += await purge_batches(outbox_batch, limit)
            counts["inbox"] += await purge_batches(inbox_batch, limit)
        return counts
