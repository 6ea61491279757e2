"""In-memory fakes of the common repositories and of a domain's unit of work.

The service tests in ``tests/unit/services/`` run the real services on these, in
milliseconds and without PostgreSQL. The fakes keep the business-visible semantics of the SQL
classes, not their statements:

- A :class:`FakeDatabase` holds the committed state of one domain schema (``state``: table
  name -> rows). A unit of work works on a deep copy taken when it opens; ``commit`` makes that
  copy the committed state, and leaving without a commit (or ``rollback``) drops it, so changes
  are invisible after a rollback. Two units of work open at once: the last commit wins (the
  tests run one at a time, as a service call does).
- The fused hot-path statements answer "not matched" (``claim``, ``claim_with_target`` and
  ``finish`` return ``None``, ``insert_fused`` raises ``NotFusable``): the callers then take
  their slow path (a locked ``get`` and ``save`` in a transaction), exactly as they do in
  production on a miss. The fused SQL itself is proven by ``tests/service`` and
  ``tests/integration/test_driver_statements.py`` against PostgreSQL.
- Partition maintenance raises ``NotImplementedError`` (``tests/service/test_partitions.py``
  covers it against PostgreSQL).
"""

from __future__ import annotations

import builtins
import copy
import dataclasses
import datetime as dt
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from types import TracebackType
from typing import Any, Self, TypeVar

from domains.operations.model import Operation, Progress, State
from domains.operations.repository import FILTER_COLUMNS, DuplicateRequestId
from domains.operations.unit_of_work import NotFusable, UnitOfWork
from domains.shared.errors import InvalidArgument
from domains.shared.inbox import InboxEntry, InboxRepository
from domains.shared.outbox import OutboxMessage, OutboxRepository
from domains.shared.query import COMPARE, Condition, Keyset

T = TypeVar("T")

_LIVE = (State.RUNNING, State.CANCELLING)


def sql_only(what: str, covered_by: str) -> NotImplementedError:
    """The error of a fake method that only makes sense in SQL.

    Args:
        what: The method.
        covered_by: The PostgreSQL test that proves it.

    Returns:
        The error to raise.
    """
    return NotImplementedError(f"{what} is PostgreSQL-only in the fakes; see {covered_by}")


def not_faked(what: str, covered_by: str) -> NotImplementedError:
    """The error of a fake method nobody has needed in memory yet.

    Args:
        what: The method.
        covered_by: The PostgreSQL test that covers it.

    Returns:
        The error to raise.
    """
    return NotImplementedError(f"{what} is not faked yet; see {covered_by}")


class FakeDatabase:
    """The committed state of one domain schema, shared by the units of work of a test.

    Attributes:
        state: Table name -> rows (each domain fake keeps its own tables here).
        commits: Number of commits so far.
        published: Outbox messages committed so far, in order (what the fast path would send).
    """

    def __init__(self, tables: Mapping[str, Any] | None = None) -> None:
        """Creates an empty database.

        Args:
            tables: The domain's extra tables and their empty values (``{"pings": {}}``).
        """
        self.state: dict[str, Any] = {
            "operations": {},
            "requests": {},
            "outbox": [],
            "inbox": {},
            **copy.deepcopy(dict(tables or {})),
        }
        self.commits = 0
        self.published: list[OutboxMessage] = []

    @property
    def operations(self) -> dict[uuid.UUID, Operation]:
        """Committed operations by id."""
        return self.state["operations"]  # type: ignore[no-any-return]

    @property
    def outbox(self) -> list[OutboxMessage]:
        """Committed outbox messages, in insertion order."""
        return self.state["outbox"]  # type: ignore[no-any-return]


def _copy(value: T) -> T:
    # Rows handed out or stored are copies, as rows read from or written to a database are:
    # a caller changing a loaded object changes nothing until it saves it.
    return copy.deepcopy(value)


def _field_value(op: Operation, column: str) -> Any:
    value = getattr(op, column)
    return value.value if isinstance(value, State) else value


class FakeOperationRepository:
    """Operations of one fake domain schema."""

    def __init__(self, state: dict[str, Any]) -> None:
        """Binds the repository to a transaction's working copy.

        Args:
            state: The unit of work's copy of the tables.
        """
        self._ops: dict[uuid.UUID, Operation] = state["operations"]
        self._requests: dict[tuple[str, str], uuid.UUID] = state["requests"]

    @property
    def partitions(self) -> Any:
        """Not faked (PostgreSQL partitions)."""
        raise sql_only("operations.partitions", "tests/service/test_partitions.py")

    async def add(self, operation: Operation) -> None:
        """Inserts ``operation``.

        Args:
            operation: A new operation.

        Raises:
            DuplicateRequestId: If its request id is taken.
        """
        if operation.request_id is not None:
            key = (operation.tenant, operation.request_id)
            if key in self._requests:
                raise DuplicateRequestId(f"request_id {operation.request_id!r} is being used")
            self._requests[key] = operation.id
        self._ops[operation.id] = _copy(operation)

    async def get(
        self, operation_id: uuid.UUID, *, for_update: bool = False, tenant: str | None = None
    ) -> Operation | None:
        """Loads an operation (of ``tenant`` only, when given)."""
        op = self._ops.get(operation_id)
        if op is None or (tenant is not None and op.tenant != tenant):
            return None
        return _copy(op)

    async def get_by_request_id(self, request_id: str, tenant: str = "default") -> Operation | None:
        """Loads the operation ``tenant`` created with ``request_id``."""
        op_id = self._requests.get((tenant, request_id))
        return await self.get(op_id, tenant=tenant) if op_id is not None else None

    async def save(self, operation: Operation) -> None:
        """Writes back ``operation`` (an UPDATE: nothing happens if it is gone)."""
        if operation.id in self._ops:
            self._ops[operation.id] = _copy(operation)

    async def claim(
        self, operation_id: uuid.UUID, now: dt.datetime, max_attempts: int | None
    ) -> Operation | None:
        """Not matched: the runner takes its slow path (a locked get and save)."""
        return None

    async def claim_with_target(
        self, operation_id: uuid.UUID, now: dt.datetime, max_attempts: int | None, target: Any
    ) -> tuple[Operation, dict[str, Any] | None] | None:
        """Not matched: the runner takes its slow path."""
        return None

    async def finish(
        self,
        operation_id: uuid.UUID,
        attempt: int,
        now: dt.datetime,
        response: dict[str, Any],
        progress: Progress | None,
        effects: Sequence[Callable[[Any], Any]] = (),
        requires: Any = None,
        shape: str | None = None,
        params: Mapping[str, Any] | None = None,
    ) -> Operation | None:
        """Not matched: callers fall back to ``OperationRunner.finish`` (the slow path)."""
        return None

    async def run_instant(
        self,
        operation_id: uuid.UUID,
        now: dt.datetime,
        max_attempts: int | None,
        shape: Any,
        progress: Progress,
        params: Mapping[str, Any],
    ) -> Operation | None:
        """Not matched: the runner takes its ordinary path (claim, work, finish)."""
        return None

    async def heartbeat(
        self, operation_id: uuid.UUID, attempt: int, progress: Progress, now: dt.datetime
    ) -> State | None:
        """Writes progress and a heartbeat if ``attempt`` still owns the operation."""
        op = self._ops.get(operation_id)
        if op is None or op.attempt != attempt or op.state not in _LIVE:
            return None
        op.progress = dataclasses.replace(progress)
        op.heartbeat_time = op.update_time = now
        return op.state

    async def list(
        self,
        conditions: Sequence[Condition],
        *,
        after: Keyset | None,
        limit: int,
        tenant: str | None = None,
        newest_first: bool = False,
    ) -> builtins.list[Operation]:
        """Lists operations in ``(create_time, id)`` order (see the SQL repository)."""
        for cond in conditions:
            if cond.field not in FILTER_COLUMNS:
                raise InvalidArgument(
                    f"filter: field {cond.field!r} is not filterable", reason="INVALID_FILTER"
                )
        rows = sorted(self._ops.values(), key=lambda o: (o.create_time, o.id))
        if newest_first:
            rows.reverse()
        found = []
        for op in rows:
            if tenant is not None and op.tenant != tenant:
                continue
            key = (op.create_time, op.id)
            if after is not None and (key >= after if newest_first else key <= after):
                continue
            if all(
                COMPARE[c.op](
                    _field_value(op, FILTER_COLUMNS[c.field]),
                    c.value.value if isinstance(c.value, State) else c.value,
                )
                for c in conditions
            ):
                found.append(_copy(op))
            if len(found) >= limit:
                break
        return found

    async def delete(self, operation_id: uuid.UUID) -> None:
        """Deletes an operation."""
        self._ops.pop(operation_id, None)

    async def find_stale(self, now: dt.datetime, limit: int) -> builtins.list[Operation]:
        """Operations that look lost (see the SQL repository for the rule)."""
        stale = []
        for op in sorted(self._ops.values(), key=lambda o: o.id):
            if op.done:
                continue
            pending_since = op.dispatch_time or op.create_time
            wait = dt.timedelta(seconds=op.pending_deadline_seconds * max(op.dispatch_count, 1))
            last_sign = op.heartbeat_time or op.start_time or op.update_time
            lease = dt.timedelta(seconds=op.lease_seconds)
            if (op.state == State.PENDING and pending_since < now - wait) or (
                op.state in _LIVE and last_sign < now - lease
            ):
                stale.append(_copy(op))
        return stale[:limit]

    async def find_pending_dispatched_before(
        self, cutoff: dt.datetime, after_id: uuid.UUID | None, limit: int
    ) -> builtins.list[Operation]:
        """PENDING operations last dispatched before ``cutoff``, in id order."""
        found = [
            _copy(op)
            for op in sorted(self._ops.values(), key=lambda o: o.id)
            if op.state == State.PENDING
            and (op.dispatch_time or op.create_time) < cutoff
            and (after_id is None or op.id > after_id)
        ]
        return found[:limit]

    async def purge_done(self, older_than: dt.datetime, limit: int) -> int:
        """Deletes done operations that ended before ``older_than``."""
        gone = [
            op.id
            for op in self._ops.values()
            if op.done and op.end_time is not None and op.end_time < older_than
        ][:limit]
        for op_id in gone:
            del self._ops[op_id]
        return max(len(gone), await self.purge_requests(older_than, limit))

    async def purge_requests(self, older_than: dt.datetime, limit: int) -> int:
        """Deletes request ids whose operation is gone."""
        orphans = [key for key, op_id in self._requests.items() if op_id not in self._ops][:limit]
        for key in orphans:
            del self._requests[key]
        return len(orphans)


class FakeOutbox:
    """The outbox of one fake domain schema.

    Attributes:
        added: Messages this unit of work wrote.
    """

    def __init__(self, state: dict[str, Any]) -> None:
        """Binds the outbox to a transaction's working copy.

        Args:
            state: The unit of work's copy of the tables.
        """
        self._rows: list[OutboxMessage] = state["outbox"]
        self.added: list[OutboxMessage] = []

    @property
    def partitions(self) -> Any:
        """Not faked (PostgreSQL partitions)."""
        raise sql_only("outbox.partitions", "tests/service/test_partitions.py")

    async def add(self, message: OutboxMessage) -> None:
        """Stores ``message``."""
        self._rows.append(_copy(message))
        self.added.append(message)

    async def claim(
        self,
        *,
        ids: Sequence[uuid.UUID] | None = None,
        limit: int = 100,
        grace: dt.timedelta | None = None,
    ) -> list[OutboxMessage]:
        """Unsent messages (all of ``ids``, when given)."""
        rows = [m for m in self._rows if m.sent_time is None and (ids is None or m.id in ids)]
        return rows[:limit]

    async def mark_sent(self, ids: Sequence[uuid.UUID], when: dt.datetime) -> None:
        """Marks messages published."""
        for m in self._rows:
            if m.id in ids:
                m.sent_time = when

    async def mark_failed(self, message_id: uuid.UUID, error: str, retry_at: dt.datetime) -> None:
        """Records a failed publish."""
        for m in self._rows:
            if m.id == message_id:
                m.publish_attempts += 1
                m.last_error = error[:2000]
                m.available_time = retry_at

    async def backlog(self) -> tuple[int, dt.datetime | None]:
        """Unsent rows and the creation time of the oldest."""
        unsent = [m.created_time for m in self._rows if m.sent_time is None]
        return len(unsent), min(unsent, default=None)

    async def unsent_operations(self, operation_ids: Sequence[uuid.UUID]) -> set[uuid.UUID]:
        """Which of ``operation_ids`` still have an unsent row."""
        wanted = set(operation_ids)
        return {
            m.operation_id
            for m in self._rows
            if m.sent_time is None and m.operation_id is not None and m.operation_id in wanted
        }

    async def dispatch_status(self, operation_id: uuid.UUID) -> tuple[bool, dt.datetime | None]:
        """Whether an operation has an unsent row, and when it was last published."""
        rows = [m for m in self._rows if m.operation_id == operation_id]
        sent = [m.sent_time for m in rows if m.sent_time is not None]
        return any(m.sent_time is None for m in rows), max(sent, default=None)

    async def purge_sent(self, older_than: dt.datetime, limit: int) -> int:
        """Deletes rows published before ``older_than``."""
        gone = [m for m in self._rows if m.sent_time is not None and m.sent_time < older_than]
        gone = gone[:limit]
        for m in gone:
            self._rows.remove(m)
        return len(gone)


@dataclasses.dataclass
class _InboxRow:
    entry: InboxEntry
    state: str
    handled_time: dt.datetime | None = None
    error: str | None = None


class FakeInbox:
    """The integration-event inbox of one fake consuming domain."""

    def __init__(self, state: dict[str, Any]) -> None:
        """Binds the inbox to a transaction's working copy.

        Args:
            state: The unit of work's copy of the tables.
        """
        self._rows: dict[tuple[uuid.UUID, str], _InboxRow] = state["inbox"]

    async def receive(self, entries: Sequence[InboxEntry], now: dt.datetime) -> None:
        """Records events about to be dispatched (a row already there is left alone)."""
        for e in entries:
            key = (e.event_id, e.consumer)
            if key not in self._rows:
                row = dataclasses.replace(e, dispatch_count=1, dispatch_time=now)
                self._rows[key] = _InboxRow(row, "PENDING")

    async def mark_handled(
        self, event_id: uuid.UUID, consumer: str, envelope: Mapping[str, Any], now: dt.datetime
    ) -> None:
        """Records that ``consumer`` applied the event."""
        row = self._rows.get((event_id, consumer))
        if row is None:
            entry = InboxEntry(event_id, consumer, str(envelope.get("type", "")), dict(envelope))
            row = self._rows[(event_id, consumer)] = _InboxRow(
                dataclasses.replace(entry, dispatch_time=now), "HANDLED"
            )
        row.state, row.handled_time, row.error = "HANDLED", now, None

    async def find_due(
        self, now: dt.datetime, deadline_seconds: float, limit: int
    ) -> list[InboxEntry]:
        """PENDING rows not handled within their deadline, oldest dispatch first."""
        due = [
            row.entry
            for row in self._rows.values()
            if row.state == "PENDING"
            and row.entry.dispatch_time is not None
            and row.entry.dispatch_time
            < now - dt.timedelta(seconds=deadline_seconds * row.entry.dispatch_count)
        ]
        return sorted(due, key=lambda e: e.dispatch_time or now)[:limit]

    async def mark_dispatched(self, entry: InboxEntry, now: dt.datetime) -> None:
        """Counts one more dispatch of ``entry``."""
        row = self._rows[(entry.event_id, entry.consumer)]
        row.entry = dataclasses.replace(
            row.entry, dispatch_time=now, dispatch_count=row.entry.dispatch_count + 1
        )

    async def mark_failed(self, entry: InboxEntry, error: str) -> None:
        """Ends ``entry`` FAILED."""
        row = self._rows[(entry.event_id, entry.consumer)]
        row.state, row.error = "FAILED", error

    async def counts(self) -> dict[str, int]:
        """Rows by state."""
        counts: dict[str, int] = {}
        for row in self._rows.values():
            counts[row.state] = counts.get(row.state, 0) + 1
        return counts

    async def purge_handled(self, older_than: dt.datetime, limit: int) -> int:
        """Deletes rows handled before ``older_than``."""
        gone = [
            key
            for key, row in self._rows.items()
            if row.state == "HANDLED" and row.handled_time and row.handled_time < older_than
        ][:limit]
        for key in gone:
            del self._rows[key]
        return len(gone)


class FakeUnitOfWork:
    """A transaction on a :class:`FakeDatabase`; domain fakes add repositories in ``_bind``.

    Attributes:
        db: The database.
        domain: The domain name.
        max_attempts: Attempt cap of the domain's operations.
        committed: Whether the last transaction committed.
    """

    operations: FakeOperationRepository
    outbox: FakeOutbox
    inbox: FakeInbox | None

    def __init__(
        self,
        db: FakeDatabase,
        *,
        domain: str,
        max_attempts: int | None = None,
        consumer: bool = False,
    ) -> None:
        """Creates the unit of work (the transaction opens on ``async with``).

        Args:
            db: The committed state.
            domain: The domain (= schema) name.
            max_attempts: Attempt cap (``None``: none).
            consumer: Whether the domain consumes integration events (has an inbox).
        """
        self.db = db
        self.domain = domain
        self.max_attempts = max_attempts
        self.committed = False
        self._consumer = consumer
        self._state: dict[str, Any] | None = None

    def _bind(self, state: dict[str, Any]) -> None:
        """Creates the repositories on a working copy; domain fakes extend it.

        Args:
            state: The transaction's copy of the tables.
        """
        self.operations = FakeOperationRepository(state)
        self.outbox = FakeOutbox(state)
        self.inbox = FakeInbox(state) if self._consumer else None

    async def __aenter__(self) -> Self:
        self._state = copy.deepcopy(self.db.state)
        self.committed = False
        self._bind(self._state)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self.committed:
            await self.rollback()

    async def commit(self) -> None:
        """Makes the working copy the committed state; records the outbox rows written."""
        if self._state is None:
            raise RuntimeError("commit outside `async with uow`")
        self.db.state = self._state
        self.db.commits += 1
        self.db.published.extend(self.outbox.added)
        self.committed = True
        self._state = copy.deepcopy(self._state)  # later writes need another commit
        self._bind(self._state)

    async def rollback(self) -> None:
        """Drops the working copy: nothing written since the last commit stays."""
        self._state = None

    async def autocommit(self, work: Callable[[Self], Awaitable[T]], *, by_key: bool = False) -> T:
        """Runs ``work`` in a transaction of its own and commits it."""
        async with self:
            result = await work(self)
            await self.commit()
        return result

    async def insert_fused(self, work: Callable[[Self], Awaitable[T]]) -> T:
        """Not fusable in memory: callers take their ordinary transaction."""
        raise NotFusable("an in-memory fake")


# Static checks: the fakes satisfy the protocols the services are typed against.
_ops: type[UnitOfWork] = FakeUnitOfWork
_outbox: type[OutboxRepository] = FakeOutbox
_inbox: type[InboxRepository] = FakeInbox
