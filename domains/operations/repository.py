"""Every query on ``operations`` lives here."""

from __future__ import annotations

import builtins
import dataclasses
import datetime as dt
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from domains.operations.model import (
    DispatchSpec,
    Operation,
    OperationError,
    Progress,
    State,
)
from domains.shared import partitions
from domains.shared.errors import Conflict, InvalidArgument
from domains.shared.query import COMPARE, Condition, Keyset, after_keyset

FILTER_COLUMNS: dict[str, str] = {
    "done": "done",
    "metadata.state": "state",
    "metadata.domain": "domain",
    "metadata.type": "type",
    "metadata.target": "target",
    "create_time": "create_time",
    "metadata.create_time": "create_time",
    "update_time": "update_time",
    "metadata.update_time": "update_time",
}
"""API filter field -> column."""


_STATEMENTS: dict[tuple[Any, ...], Any] = {}
"""Hot-path statements built once per table (and shape) and reused: SQLAlchemy then finds
them in its compiled cache without rebuilding the tree or recomputing its cache key."""


class DuplicateRequestId(Conflict):
    """Another operation was created with the same request id at the same time."""

    default_reason = "DUPLICATE_REQUEST_ID"


def is_request_id_conflict(exc: IntegrityError) -> bool:
    """Whether ``exc`` is a taken request id (``operation_requests``' key, or a domain
    table's request id index).
    """
    text = str(exc.orig)
    return "request_id" in text or "operation_requests" in text


class OperationRepository(Protocol):
    """Storage of operations in one domain schema: what services and the runner need.

    The fused hot-path statements (:meth:`claim`, :meth:`claim_with_target`, :meth:`finish`)
    may answer ``None`` ("not matched"): callers then take the slow path (a locked
    :meth:`get` and :meth:`save`), so an in-memory fake can implement only the slow path.
    """

    async def add(self, operation: Operation) -> None:
        """Inserts a new operation."""

    async def get(
        self, operation_id: uuid.UUID, *, for_update: bool = False, tenant: str | None = None
    ) -> Operation | None:
        """Loads one operation (of ``tenant`` only, when given)."""

    async def save(self, operation: Operation) -> None:
        """Writes back a changed operation."""

    async def get_by_request_id(self, request_id: str, tenant: str = "default") -> Operation | None:
        """Loads the operation a tenant created with a request id."""

    @property
    def partitions(self) -> partitions.DayPartitions:
        """The table's day partitions (retention; PostgreSQL only)."""
        ...

    async def claim(
        self, operation_id: uuid.UUID, now: dt.datetime, max_attempts: int | None
    ) -> Operation | None:
        """Starts an attempt in one statement: the fused claim of the hot path."""
        ...

    async def claim_with_target(
        self,
        operation_id: uuid.UUID,
        now: dt.datetime,
        max_attempts: int | None,
        target: sa.Table,
    ) -> tuple[Operation, dict[str, Any] | None] | None:
        """The fused claim that also reads the operation's target row, in one statement."""
        ...

    async def finish(
        self,
        operation_id: uuid.UUID,
        attempt: int,
        now: dt.datetime,
        response: dict[str, Any],
        progress: Progress | None,
        effects: Sequence[Callable[[sa.ColumnElement[bool]], Any]] = (),
        requires: sa.ColumnElement[bool] | None = None,
        shape: str | None = None,
        params: Mapping[str, Any] | None = None,
    ) -> Operation | None:
        """Settles an attempt as SUCCEEDED and writes its effects in one statement (a CTE)."""
        ...

    async def run_instant(
        self,
        operation_id: uuid.UUID,
        now: dt.datetime,
        max_attempts: int | None,
        shape: InstantShape,
        progress: Progress,
        params: Mapping[str, Any],
    ) -> dict[str, Any] | None:
        """Claims, applies and settles instant work in one statement (see :class:`InstantShape`);
        returns the operation's response, or ``None`` if nothing was written.
        """
        ...

    async def heartbeat(
        self, operation_id: uuid.UUID, attempt: int, progress: Progress, now: dt.datetime
    ) -> State | None:
        """Writes progress and a heartbeat if ``attempt`` still owns the operation."""
        ...

    async def list(
        self,
        conditions: Sequence[Condition],
        *,
        after: Keyset | None,
        limit: int,
        tenant: str | None = None,
        newest_first: bool = False,
    ) -> builtins.list[Operation]:
        """Lists operations in creation order, ``(create_time, id)``."""
        ...

    async def delete(self, operation_id: uuid.UUID) -> None:
        """Deletes an operation."""
        ...

    async def find_stale(self, now: dt.datetime, limit: int) -> builtins.list[Operation]:
        """Locks operations that look lost: PENDING past their deadline, or RUNNING/CANCELLING past
        their lease without a heartbeat.
        """
        ...

    async def find_pending_dispatched_before(
        self, cutoff: dt.datetime, after_id: uuid.UUID | None, limit: int
    ) -> builtins.list[Operation]:
        """Locks PENDING operations last dispatched before ``cutoff`` (their message was in a
        broker that has since lost everything), in id order from ``after_id``.
        """
        ...

    async def purge_done(self, older_than: dt.datetime, limit: int) -> int:
        """Deletes done operations that ended before ``older_than``."""
        ...

    async def purge_requests(self, older_than: dt.datetime, limit: int) -> int:
        """Deletes request ids of operations that are gone (purged, or their partition dropped),
        written before ``older_than``.
        """
        ...


def _to_row(op: Operation) -> dict[str, Any]:
    return {
        "id": op.id,
        "domain": op.domain,
        "type": op.type,
        "target": op.target,
        "state": str(op.state),
        "done": op.done,
        "progress": op.progress.to_dict(),
        "attempt": op.attempt,
        "attempt_base": op.attempt_base,
        "dispatch_count": op.dispatch_count,
        "dispatch": op.dispatch.to_dict(),
        "create_time": op.create_time,
        "update_time": op.update_time,
        "start_time": op.start_time,
        "end_time": op.end_time,
        "heartbeat_time": op.heartbeat_time,
        "dispatch_time": op.dispatch_time,
        "error": op.error.to_dict() if op.error else None,
        "response": op.response,
        "request_id": op.request_id,
        "request_hash": op.request_hash,
        "lease_seconds": op.lease_seconds,
        "pending_deadline_seconds": op.pending_deadline_seconds,
        "correlation_id": op.correlation_id,
        "tenant": op.tenant,
    }


_TARGET_PREFIX = "target__"  # labels of the target's columns next to the operation's


@dataclasses.dataclass(frozen=True)
class InstantShape:
    """A job whose whole run is one statement: claim, effects and SUCCEEDED together.

    For work with no side effect outside the database and nothing to wait for (a ping that
    neither sleeps nor fails on purpose), claiming first and finishing later buys nothing: the
    statement claims the operation as a claim would (PENDING, or RUNNING with an expired lease,
    under the attempt cap), takes the next fencing token, writes the effects and settles it
    SUCCEEDED, atomically. A worker killed before it commits leaves the operation as it was.

    Attributes:
        name: Names the statement (built once per table and shape, then reused).
        target: The table of the operation's target (``<collection>/<id>``, primary key ``id``).
        condition: ``target -> condition``: the target row is instant work. If false (or the
            row is missing) nothing is written and the caller takes the ordinary path.
        response: ``(operations, target) -> jsonb expression``: the operation's response, from
            the rows as they were before the statement (the new attempt is ``attempt + 1``).
        effects: ``settled -> DML statement`` builders; ``settled`` is the CTE of the settled
            operation row (new values: ``attempt`` is this attempt's fencing token), so each
            effect writes only if the operation was settled.
    """

    name: str
    target: sa.Table
    condition: Callable[[sa.Table], sa.ColumnElement[bool]]
    response: Callable[[sa.Table, sa.Table], sa.ColumnElement[Any]]
    effects: tuple[Callable[[Any], Any], ...] = ()


def from_row(row: Any) -> Operation:
    """Builds an Operation from a table row.

    Args:
        row: A row mapping of the ``operations`` table.

    Returns:
        The aggregate.
    """
    return Operation(
        id=row["id"],
        domain=row["domain"],
        type=row["type"],
        target=row["target"],
        state=State(row["state"]),
        progress=Progress.from_dict(row["progress"]),
        attempt=row["attempt"],
        attempt_base=row["attempt_base"],
        dispatch_count=row["dispatch_count"],
        dispatch=DispatchSpec(**row["dispatch"]),
        create_time=row["create_time"],
        update_time=row["update_time"],
        start_time=row["start_time"],
        end_time=row["end_time"],
        heartbeat_time=row["heartbeat_time"],
        dispatch_time=row["dispatch_time"],
        error=OperationError.from_dict(row["error"]),
        response=row["response"],
        request_id=row["request_id"],
        request_hash=row["request_hash"],
        lease_seconds=row["lease_seconds"],
        pending_deadline_seconds=row["pending_deadline_seconds"],
        correlation_id=row["correlation_id"],
        tenant=row["tenant"],
    )


def _live(t: sa.Table) -> sa.ColumnElement[bool]:
    # RUNNING or CANCELLING as two comparisons, not an IN list: an IN list is an "expanding"
    # parameter that SQLAlchemy re-renders on every execution.
    return sa.or_(t.c.state == State.RUNNING.value, t.c.state == State.CANCELLING.value)


class SqlOperationRepository:
    """Operations in one domain schema, through SQLAlchemy Core."""

    def __init__(self, session: AsyncSession, table: sa.Table) -> None:
        """Binds the repository.

        Args:
            session: The unit of work's session.
            table: The domain's ``operations`` table.
        """
        self._session = session
        self._t = table
        self._requests = table.metadata.tables[f"{table.schema}.operation_requests"]
        # One statement per table, values as parameters: built and compiled once (a repository
        # is made per unit of work: building it here cost more than the statement's execution).
        update = _STATEMENTS.get((table, "update"))
        if update is None:
            update = _STATEMENTS[(table, "update")] = sa.update(table).where(
                table.c.id == sa.bindparam("_id")
            )
        self._update = update

    @property
    def partitions(self) -> partitions.DayPartitions:
        """The table's day partitions: retention drops a day once every operation in it is
        done and ended before the cut-off.
        """
        return partitions.DayPartitions(
            self._session, self._t, keep="NOT done OR end_time IS NULL OR end_time >= :cutoff"
        )

    async def add(self, operation: Operation) -> None:
        """Inserts ``operation``.

        Args:
            operation: A new operation.

        Raises:
            DuplicateRequestId: If its request id is taken (a concurrent retry of the request).
        """
        # No savepoint: a duplicate aborts the whole transaction, and the caller starts anew.
        try:
            await self._session.execute(sa.insert(self._t), _to_row(operation))
            if operation.request_id is not None:
                # The request id's uniqueness lives here (see operation_requests_table).
                await self._session.execute(
                    sa.insert(self._requests),
                    {
                        "tenant": operation.tenant,
                        "request_id": operation.request_id,
                        "operation_id": operation.id,
                        "create_time": operation.create_time,
                    },
                )
        except IntegrityError as exc:
            if is_request_id_conflict(exc):
                raise DuplicateRequestId(
                    f"request_id {operation.request_id!r} is being used"
                ) from None
            raise

    async def get(
        self, operation_id: uuid.UUID, *, for_update: bool = False, tenant: str | None = None
    ) -> Operation | None:
        """Loads an operation.

        Args:
            operation_id: Its id.
            for_update: Lock the row until the transaction ends.
            tenant: Only an operation of this tenant (``None``: any; workers and the sweeper).

        Returns:
            The operation or ``None``.
        """
        query = sa.select(self._t).where(self._t.c.id == operation_id)
        if tenant is not None:
            query = query.where(self._t.c.tenant == tenant)
        if for_update:
            query = query.with_for_update()
        row = (await self._session.execute(query)).mappings().first()
        return from_row(row) if row else None

    async def get_by_request_id(self, request_id: str, tenant: str = "default") -> Operation | None:
        """Loads the operation ``tenant`` created with ``request_id``.

        Args:
            request_id: AIP-155 request id.
            tenant: Request ids are unique per tenant.

        Returns:
            The operation or ``None``.
        """
        r = self._requests
        query = sa.select(self._t).where(
            self._t.c.id
            == sa.select(r.c.operation_id)
            .where(r.c.tenant == tenant, r.c.request_id == request_id)
            .scalar_subquery(),
            self._t.c.tenant == tenant,
        )
        row = (await self._session.execute(query)).mappings().first()
        return from_row(row) if row else None

    async def save(self, operation: Operation) -> None:
        """Writes back every field of ``operation``.

        Args:
            operation: A loaded, changed operation.
        """
        values = _to_row(operation)
        values["_id"] = values.pop("id")
        await self._session.execute(self._update, values)

    async def claim(
        self, operation_id: uuid.UUID, now: dt.datetime, max_attempts: int | None
    ) -> Operation | None:
        """Starts an attempt in one statement: the fused claim of the hot path.

        ``UPDATE ... RETURNING`` checks the state (PENDING, or RUNNING with an expired lease)
        and the attempt cap, and takes the next fencing token (``attempt + 1``); the row lock
        it takes makes concurrent claims of one operation serialize, and only one matches.

        Args:
            operation_id: The operation.
            now: Current time.
            max_attempts: Attempt cap (``None``: none); a capped operation is not claimed.

        Returns:
            The RUNNING operation with its new attempt, or ``None`` if it is not claimable as is
            (done, CANCELLING, running elsewhere, capped, missing): the caller then looks closer.
        """
        query = _STATEMENTS.get((self._t, "claim"))
        if query is None:
            query = _STATEMENTS[(self._t, "claim")] = self._claim_statement()
        row = await self._claimed_row(query, operation_id, now, max_attempts)
        return from_row(row) if row else None

    async def claim_with_target(
        self,
        operation_id: uuid.UUID,
        now: dt.datetime,
        max_attempts: int | None,
        target: sa.Table,
    ) -> tuple[Operation, dict[str, Any] | None] | None:
        """The fused claim that also reads the operation's target row, in one statement.

        The target is ``<collection>/<id>``; ``target`` is the table whose primary key ``id``
        holds it. The claim (``UPDATE ... RETURNING``) runs in a CTE that the read joins, so a
        worker starts an attempt and loads what it works on in one round trip instead of two.

        Args:
            operation_id: The operation.
            now: Current time.
            max_attempts: Attempt cap (``None``: none).
            target: The target's table.

        Returns:
            The RUNNING operation and its target row (``None`` if the row is gone), or ``None``
            if the operation is not claimable as is (see :meth:`claim`).
        """
        key = (self._t, "claim", target)
        query = _STATEMENTS.get(key)
        if query is None:
            claimed = self._claim_statement().cte("claimed")
            target_id = sa.cast(sa.func.split_part(claimed.c.target, "/", 2), target.c.id.type)
            query = _STATEMENTS[key] = sa.select(
                claimed, *[c.label(_TARGET_PREFIX + c.name) for c in target.c]
            ).select_from(claimed.outerjoin(target, target.c.id == target_id))
        row = await self._claimed_row(query, operation_id, now, max_attempts)
        if row is None:
            return None
        found = row[_TARGET_PREFIX + "id"] is not None
        values = {c.name: row[_TARGET_PREFIX + c.name] for c in target.c} if found else None
        return from_row(row), values

    async def _claimed_row(
        self, query: Any, operation_id: uuid.UUID, now: dt.datetime, max_attempts: int | None
    ) -> Any:
        # Runs a claim statement (plain or joined with its target); the row, or None.
        params = {"op_id": operation_id, "now": now, "cap": max_attempts}
        return (await self._session.execute(query, params)).mappings().first()

    def _claimable(self) -> tuple[sa.ColumnElement[bool], ...]:
        # What a claim matches: the operation (bind "op_id"), PENDING or RUNNING with an
        # expired lease (as of bind "now"), under the attempt cap (bind "cap"; NULL: none).
        t = self._t
        seconds = sa.func.make_interval(0, 0, 0, 0, 0, 0, 1)
        last_sign = sa.func.coalesce(t.c.heartbeat_time, t.c.start_time, t.c.update_time)
        now_param = sa.bindparam("now", type_=t.c.update_time.type)
        return (
            t.c.id == sa.bindparam("op_id", type_=t.c.id.type),
            sa.or_(
                t.c.state == State.PENDING.value,
                sa.and_(
                    t.c.state == State.RUNNING.value,
                    last_sign < now_param - seconds * t.c.lease_seconds,
                ),
            ),
            # NULL cap: no cap (one statement for both, cached once).
            sa.or_(
                sa.bindparam("cap", type_=sa.Integer).is_(None),
                t.c.attempt - t.c.attempt_base < sa.bindparam("cap", type_=sa.Integer),
            ),
        )

    def _claim_statement(self) -> Any:
        t = self._t
        now_param = sa.bindparam("now", type_=t.c.update_time.type)
        return (
            sa.update(t)
            .where(*self._claimable())
            .values(
                state=State.RUNNING.value,
                done=False,
                attempt=t.c.attempt + 1,
                start_time=sa.func.coalesce(t.c.start_time, now_param),
                heartbeat_time=now_param,
                update_time=now_param,
            )
            .returning(*t.c)
        )

    async def run_instant(
        self,
        operation_id: uuid.UUID,
        now: dt.datetime,
        max_attempts: int | None,
        shape: InstantShape,
        progress: Progress,
        params: Mapping[str, Any],
    ) -> dict[str, Any] | None:
        """Claims, applies and settles instant work in one statement (see :class:`InstantShape`).

        ``WITH settled AS (UPDATE operations ... FROM target WHERE <claimable> AND <instant>
        RETURNING ...), effect_0 AS (...) SELECT * FROM settled``: the claim's conditions, the
        next fencing token, the effects and SUCCEEDED in one round trip - what a plain task
        writing one row costs. Concurrent runs of one operation serialize on its row lock and
        only one matches; a redelivery after it finds the operation done.

        Args:
            operation_id: The operation.
            now: Current time (start, heartbeat and end time).
            max_attempts: Attempt cap (``None``: none).
            shape: The work's statement parts.
            progress: The operation's final progress.
            params: Values of the shape's own bind parameters.

        Returns:
            The SUCCEEDED operation's response, or ``None`` if nothing was written (not
            claimable as is, not instant work, target missing): the caller then takes the
            ordinary path. Only the response comes back: the row's other columns (three of
            them jsonb) would be sent, decoded and built into an ``Operation`` on every job for
            a caller that reads none of them.
        """
        key = (self._t, "instant", shape.name)
        query = _STATEMENTS.get(key)
        if query is None:
            query = _STATEMENTS[key] = self._instant_statement(shape)
        values = {
            "op_id": operation_id,
            "now": now,
            "cap": max_attempts,
            "i_progress": progress.to_dict(),
            **params,
        }
        row = (await self._session.execute(query, values)).first()
        return None if row is None else (row[0] or {})

    def _instant_statement(self, shape: InstantShape) -> Any:
        t, target = self._t, shape.target
        now_param = sa.bindparam("now", type_=t.c.update_time.type)
        target_id = sa.cast(sa.func.split_part(t.c.target, "/", 2), target.c.id.type)
        settle = (
            sa.update(t)
            .where(*self._claimable(), target.c.id == target_id, shape.condition(target))
            .values(
                state=State.SUCCEEDED.value,
                done=True,
                attempt=t.c.attempt + 1,
                start_time=sa.func.coalesce(t.c.start_time, now_param),
                heartbeat_time=now_param,
                end_time=now_param,
                update_time=now_param,
                response=shape.response(t, target),
                error=None,
                progress=sa.bindparam("i_progress", type_=t.c.progress.type),
            )
            .returning(*t.c)
        )
        settled = settle.cte("settled")
        query = sa.select(settled.c.response)
        for index, effect in enumerate(shape.effects):
            query = query.add_cte(effect(settled).cte(f"effect_{index}"))
        return query

    async def finish(
        self,
        operation_id: uuid.UUID,
        attempt: int,
        now: dt.datetime,
        response: dict[str, Any],
        progress: Progress | None,
        effects: Sequence[Callable[[sa.ColumnElement[bool]], Any]] = (),
        requires: sa.ColumnElement[bool] | None = None,
        shape: str | None = None,
        params: Mapping[str, Any] | None = None,
    ) -> Operation | None:
        """Settles an attempt as SUCCEEDED and writes its effects in one statement (a CTE).

        The operation's ``UPDATE`` checks the fencing token (``attempt``, still RUNNING or
        CANCELLING); every effect statement is guarded by ``owned`` (the update matched), so
        effect, operation and outbox rows commit together or not at all, in one round trip.

        Args:
            operation_id: The operation.
            attempt: Fencing token of the attempt.
            now: Current time.
            response: The operation's response.
            progress: Final progress (``None``: unchanged).
            effects: ``owned -> DML statement`` builders for the effect rows (updates with
                ``.where(owned)``, inserts ``from_select(...).where(owned)``).
            requires: A condition the effect needs (its target row exists): if false, nothing is
                written.
            shape: Names a statement whose effects and condition take every value from bind
                parameters (``params``): it is built once per table and shape and reused, so
                SQLAlchemy neither rebuilds nor re-keys it on the hot path.
            params: Values of the effects' bind parameters.

        Returns:
            The SUCCEEDED operation, or ``None`` if nothing was written (the token no longer
            owns it, it is done, or ``requires`` failed): the caller then looks closer.
        """
        key = (self._t, "finish", shape, progress is None)
        query = _STATEMENTS.get(key) if shape is not None else None
        if query is None:
            query = self._finish_statement(progress is None, effects, requires)
            if shape is not None:
                _STATEMENTS[key] = query
        values = {
            "f_op_id": operation_id,
            "f_attempt": attempt,
            "f_now": now,
            "f_response": response,
            **({} if progress is None else {"f_progress": progress.to_dict()}),
            **(params or {}),
        }
        row = (await self._session.execute(query, values)).mappings().first()
        return from_row(row) if row else None

    def _finish_statement(
        self,
        keep_progress: bool,
        effects: Sequence[Callable[[sa.ColumnElement[bool]], Any]],
        requires: sa.ColumnElement[bool] | None,
    ) -> Any:
        t = self._t
        now = sa.bindparam("f_now", type_=t.c.update_time.type)
        values: dict[str, Any] = {
            "state": State.SUCCEEDED.value,
            "done": True,
            "response": sa.bindparam("f_response", type_=t.c.response.type),
            "error": None,
            "end_time": now,
            "update_time": now,
        }
        if not keep_progress:
            values["progress"] = sa.bindparam("f_progress", type_=t.c.progress.type)
        settle = (
            sa.update(t)
            .where(
                t.c.id == sa.bindparam("f_op_id", type_=t.c.id.type),
                t.c.attempt == sa.bindparam("f_attempt", type_=sa.Integer),
                _live(t),
            )
            .values(**values)
            .returning(*t.c)
        )
        if requires is not None:
            settle = settle.where(requires)
        op_cte = settle.cte("settled")
        owned = sa.exists(sa.select(op_cte.c.id))
        query = sa.select(op_cte)
        for index, effect in enumerate(effects):
            query = query.add_cte(effect(owned).cte(f"effect_{index}"))
        return query

    async def heartbeat(
        self, operation_id: uuid.UUID, attempt: int, progress: Progress, now: dt.datetime
    ) -> State | None:
        """Writes progress and a heartbeat if ``attempt`` still owns the operation.

        One statement, no read first: the hot path of a running task.

        Args:
            operation_id: The operation.
            attempt: Fencing token from :meth:`Operation.start`.
            progress: New progress.
            now: Current time.

        Returns:
            The state after the write, or ``None`` if the attempt no longer owns the operation.
        """
        t = self._t
        query = _STATEMENTS.get((t, "heartbeat"))
        if query is None:
            at = sa.bindparam("hb_now", type_=t.c.update_time.type)
            query = _STATEMENTS[(t, "heartbeat")] = (
                sa.update(t)
                .where(
                    t.c.id == sa.bindparam("hb_op_id", type_=t.c.id.type),
                    t.c.attempt == sa.bindparam("hb_attempt", type_=sa.Integer),
                    _live(t),
                )
                .values(
                    progress=sa.bindparam("hb_progress", type_=t.c.progress.type),
                    heartbeat_time=at,
                    update_time=at,
                )
                .returning(t.c.state)
            )
        params = {
            "hb_op_id": operation_id,
            "hb_attempt": attempt,
            "hb_progress": progress.to_dict(),
            "hb_now": now,
        }
        row = (await self._session.execute(query, params)).first()
        return State(row[0]) if row else None

    async def list(
        self,
        conditions: Sequence[Condition],
        *,
        after: Keyset | None,
        limit: int,
        tenant: str | None = None,
        newest_first: bool = False,
    ) -> builtins.list[Operation]:
        """Lists operations in creation order, ``(create_time, id)``.

        The indexes ``(tenant, [state|done|type|target,] create_time, id)`` serve every filter
        the API accepts without walking the table (see ``api/v1/operations.py``).

        Args:
            conditions: Parsed filter (a conjunction).
            after: Keyset position: only rows after this ``(create_time, id)`` (in the
                listing's order).
            limit: Maximum rows.
            tenant: Only this tenant's operations (``None``: every tenant).
            newest_first: Descending order (AIP-132 ``order_by=create_time desc``).

        Returns:
            Matching operations.

        Raises:
            InvalidArgument: If a condition names an unknown field.
        """
        query = self.list_query(
            conditions, after=after, limit=limit, tenant=tenant, newest_first=newest_first
        )
        rows = (await self._session.execute(query)).mappings().all()
        return [from_row(row) for row in rows]

    def list_query(
        self,
        conditions: Sequence[Condition],
        *,
        after: Keyset | None,
        limit: int,
        tenant: str | None = None,
        newest_first: bool = False,
    ) -> sa.Select[Any]:
        """The statement :meth:`list` runs (the EXPLAIN test inspects its plan).

        Args:
            conditions: Parsed filter (a conjunction).
            after: Keyset position.
            limit: Maximum rows.
            tenant: Only this tenant's operations (``None``: every tenant).
            newest_first: Descending order.

        Returns:
            The SELECT.

        Raises:
            InvalidArgument: If a condition names an unknown field.
        """
        t = self._t
        query = sa.select(t)
        if tenant is not None:
            query = query.where(t.c.tenant == tenant)
        for cond in conditions:
            column_name = FILTER_COLUMNS.get(cond.field)
            if column_name is None:
                raise InvalidArgument(
                    f"filter: field {cond.field!r} is not filterable", reason="INVALID_FILTER"
                )
            value = cond.value.value if isinstance(cond.value, State) else cond.value
            query = query.where(COMPARE[cond.op](t.c[column_name], value))
        query = query.where(after_keyset(t, after, descending=newest_first))
        if newest_first:  # the same indexes, scanned backwards
            return query.order_by(t.c.create_time.desc(), t.c.id.desc()).limit(limit)
        return query.order_by(t.c.create_time, t.c.id).limit(limit)

    async def delete(self, operation_id: uuid.UUID) -> None:
        """Deletes an operation.

        Args:
            operation_id: The operation.
        """
        await self._session.execute(sa.delete(self._t).where(self._t.c.id == operation_id))

    async def find_stale(self, now: dt.datetime, limit: int) -> builtins.list[Operation]:
        """Locks operations that look lost: PENDING past their deadline, or RUNNING/CANCELLING
        past their lease without a heartbeat.

        Re-dispatch waits grow with each dispatch (deadline * dispatch_count), so a long queue
        is not flooded with copies.

        Args:
            now: Current time.
            limit: Maximum rows.

        Returns:
            The locked operations (``FOR UPDATE SKIP LOCKED``).
        """
        t = self._t
        seconds = sa.func.make_interval(0, 0, 0, 0, 0, 0, 1)
        pending_since = sa.func.coalesce(t.c.dispatch_time, t.c.create_time)
        last_sign = sa.func.coalesce(t.c.heartbeat_time, t.c.start_time, t.c.update_time)
        pending_stale = sa.and_(
            t.c.state == State.PENDING.value,
            pending_since
            < sa.literal(now)
            - seconds * t.c.pending_deadline_seconds * sa.func.greatest(t.c.dispatch_count, 1),
        )
        running_stale = sa.and_(
            _live(t),
            last_sign < sa.literal(now) - seconds * t.c.lease_seconds,
        )
        query = (
            sa.select(t)
            .where(sa.not_(t.c.done), sa.or_(pending_stale, running_stale))
            .order_by(t.c.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        rows = (await self._session.execute(query)).mappings().all()
        return [from_row(row) for row in rows]

    async def find_pending_dispatched_before(
        self, cutoff: dt.datetime, after_id: uuid.UUID | None, limit: int
    ) -> builtins.list[Operation]:
        """Locks PENDING operations last dispatched before ``cutoff`` (their message was in a
        broker that has since lost everything), in id order from ``after_id``.

        Args:
            cutoff: When the broker was found wiped.
            after_id: Keyset position.
            limit: Maximum rows.

        Returns:
            The locked operations (``FOR UPDATE SKIP LOCKED``).
        """
        t = self._t
        query = sa.select(t).where(
            t.c.state == State.PENDING.value,
            sa.not_(t.c.done),
            sa.func.coalesce(t.c.dispatch_time, t.c.create_time) < cutoff,
        )
        if after_id is not None:
            query = query.where(t.c.id > after_id)
        query = query.order_by(t.c.id).limit(limit).with_for_update(skip_locked=True)
        rows = (await self._session.execute(query)).mappings().all()
        return [from_row(row) for row in rows]

    async def purge_done(self, older_than: dt.datetime, limit: int) -> int:
        """Deletes done operations that ended before ``older_than``.

        Args:
            older_than: Cut-off time.
            limit: Maximum rows per call.

        Returns:
            Rows deleted.
        """
        t = self._t
        ids = (
            sa.select(t.c.id)
            .where(t.c.done, t.c.end_time < older_than)
            .limit(limit)
            .scalar_subquery()
        )
        result = await self._session.execute(sa.delete(t).where(t.c.id.in_(ids)))
        deleted = int(result.rowcount or 0)  # type: ignore[attr-defined]
        return max(deleted, await self.purge_requests(older_than, limit))

    async def purge_requests(self, older_than: dt.datetime, limit: int) -> int:
        """Deletes request ids of operations that are gone (purged, or their partition
        dropped), written before ``older_than``.

        Args:
            older_than: Cut-off on the request's ``create_time``.
            limit: Maximum rows per call.

        Returns:
            Rows deleted.
        """
        r, t = self._requests, self._t
        orphans = (
            sa.select(r.c.tenant, r.c.request_id)
            .where(
                r.c.create_time < older_than,
                ~sa.exists().where(t.c.id == r.c.operation_id),
            )
            .limit(limit)
        )
        result = await self._session.execute(
            sa.delete(r).where(sa.tuple_(r.c.tenant, r.c.request_id).in_(orphans))
        )
        return int(result.rowcount or 0)  # type: ignore[attr-defined]
