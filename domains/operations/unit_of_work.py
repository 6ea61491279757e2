"""Unit of work over one domain schema: one transaction for domain rows, operations and outbox."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import weakref
from collections.abc import Awaitable, Callable, Mapping, Sequence
from types import TracebackType
from typing import Any, Protocol, Self, TypeVar, cast

import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from domains.operations.repository import (
    DuplicateRequestId,
    OperationRepository,
    SqlOperationRepository,
    is_request_id_conflict,
)
from domains.shared import bulk
from domains.shared.driver import autocommit_connection
from domains.shared.inbox import InboxRepository, SqlInboxRepository
from domains.shared.outbox import OutboxMessage, OutboxRepository, SqlOutboxRepository

log = logging.getLogger(__name__)

T = TypeVar("T")


class AfterCommit(Protocol):
    """Called after a commit that wrote outbox rows (the fast path publishes them from memory).

    ``urgent`` says the commit was a lone submit's, with no other
    submit committing alongside: the publish may start at once instead of waiting for rows that
    concurrent requests commit to join its batch.
    """

    def __call__(  # noqa: D102
        self, domain: str, messages: list[OutboxMessage], /, *, urgent: bool = False
    ) -> Awaitable[None]: ...


@dataclasses.dataclass(frozen=True)
class DomainTables:
    """The tables every domain schema has.

    Attributes:
        schema: Schema (= domain) name.
        metadata: The schema's metadata.
        operations: Its ``operations`` table.
        outbox: Its ``outbox`` table.
        inbox: Its integration-event ``inbox`` table (consuming domains only).
    """

    schema: str
    metadata: sa.MetaData
    operations: sa.Table
    outbox: sa.Table
    inbox: sa.Table | None = None


class UnitOfWork(Protocol):
    """What services and the operation runner need of a domain's unit of work.

    ``async with uow:`` opens a transaction; it rolls back unless ``await uow.commit()``.
    :class:`SqlUnitOfWork` is the PostgreSQL implementation; tests use in-memory fakes
    (``tests/fakes/``). Each domain extends it with its own repositories
    (e.g. ``domains.imports.unit_of_work.ImportsUoW``).
    """

    @property
    def domain(self) -> str:
        """The domain (= schema) name."""
        ...

    @property
    def max_attempts(self) -> int | None:
        """Attempt cap of the domain's operations (``None``: no cap)."""
        ...

    @property
    def operations(self) -> OperationRepository:
        """The domain's operations."""
        ...

    @property
    def outbox(self) -> OutboxRepository:
        """The domain's outbox (tasks and events published after commit)."""
        ...

    @property
    def inbox(self) -> InboxRepository | None:
        """The domain's integration-event inbox (consuming domains only)."""
        ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    async def commit(self) -> None:
        """Commits the transaction."""
        ...

    async def autocommit(self, work: Callable[[Self], Awaitable[T]], *, by_key: bool = False) -> T:
        """Runs ``work`` with each statement its own transaction (atomic statements only);
        ``by_key``: its statements find their rows by primary key (they may use generic plans).
        """
        ...

    async def insert_fused(self, work: Callable[[Self], Awaitable[T]]) -> T:
        """Runs ``work`` writing its INSERTs as one statement.

        Raises:
            NotFusable: If ``work`` cannot be fused (callers then open a transaction).
        """
        ...


class SessionSource(Protocol):
    """Opens the sessions of a unit of work whose database is chosen per transaction.

    Read replica routing uses it: the replica, or its primary when the replica is down or behind.
    """

    async def open_session(self) -> AsyncSession:
        """Opens a session for one transaction.

        Returns:
            A session whose transaction has begun on a connection already checked out, so a
            database that cannot be reached fails here, before any result is produced.
        """
        ...

    def session_failed(self, session: AsyncSession, exc: BaseException) -> None:
        """Told when a unit of work on ``session`` ended with ``exc`` (health bookkeeping).

        Args:
            session: A session from :meth:`open_session`.
            exc: The error.
        """
        ...


class NotFusable(Exception):
    """The work did something else than plain INSERTs: it needs an ordinary transaction."""


class _InsertRecorder:
    """Stands in for the session while a submit is built: collects plain INSERTs so that they
    go to the database as one statement (see :meth:`SqlUnitOfWork.insert_fused`).

    ``insert(table)`` with a row of parameters (what the repositories send) is kept as the
    table, the row's columns and the values, so the fused statement is built once per shape
    with bind parameters and reused; SQLAlchemy then neither rebuilds nor re-keys it per
    request. Any other INSERT is kept as a statement.
    """

    def __init__(self) -> None:
        self.inserts: list[tuple[sa.Table, tuple[str, ...], dict[str, Any]] | sa.Insert] = []

    async def execute(self, statement: Any, params: Any = None) -> None:
        if (
            isinstance(statement, sa.Insert)
            and not statement._returning
            and (params is None or isinstance(params, dict))
        ):
            table = statement.table
            if (
                params
                and statement._values is None
                and not statement._multi_values
                and statement.select is None
                and isinstance(table, sa.Table)
            ):
                self.inserts.append((table, tuple(params), params))
            else:
                self.inserts.append(statement.values(**params) if params else statement)
            return
        raise NotFusable(type(statement).__name__)

    @property
    def shape(self) -> tuple[Any, ...] | None:
        """The statement's shape (tables and columns) when it can be cached and grouped with
        other submits of the same shape, else ``None``.
        """
        if not all(isinstance(part, tuple) for part in self.inserts):
            return None
        return tuple((part[0], part[1]) for part in self.inserts)  # type: ignore[index]

    def statement(self) -> tuple[Any, dict[str, Any]]:
        """The fused statement and its parameters.

        Returns:
            ``(statement, params)``: ``WITH w0 AS (INSERT ...), ... INSERT ...``.
        """
        shape = self.shape
        if shape is not None:
            return fused_statement(shape, 1), fused_params(shape, [self.rows()])
        *first, last = [
            part if not isinstance(part, tuple) else sa.insert(part[0]).values(part[2])
            for part in self.inserts
        ]
        return last.add_cte(*(ins.cte(f"w{i}") for i, ins in enumerate(first))), {}

    def rows(self) -> tuple[dict[str, Any], ...]:
        """This submit's row of each table, in :attr:`shape`'s order (a shape is known)."""
        return tuple(part[2] for part in self.inserts)  # type: ignore[index]


def fused_statement(shape: tuple[Any, ...], submits: int) -> Any:
    """``WITH w0 AS (INSERT ...), ... INSERT ...`` writing ``submits`` submits of one shape.

    One submit: a ``VALUES`` row per table. A group: each table's rows travel as one array per
    column, ``unnest``ed back into rows in order (:mod:`domains.shared.bulk`), so the text is
    the same for any group size: two statements per shape, each built, compiled and prepared
    once per connection. (A multi-row ``VALUES`` per group size was prepared again on every
    connection for every new size: about one submit in ten paid a prepare round trip in a
    2,000-submit run. ``unnest`` for a lone submit cost it more CPU than ``VALUES``: about
    0.1 ms to bind 1-element arrays.)

    Args:
        shape: ``((table, columns), ...)`` in the order the submit wrote them.
        submits: How many submits it writes.

    Returns:
        The statement; its parameters come from :func:`fused_params`.
    """
    key = (shape, submits > 1)
    statement = _FUSED_INSERTS.get(key)
    if statement is None:
        inserts: list[sa.Insert]
        if submits > 1:
            inserts = [
                bulk.insert_statement(table, columns, name=f"p{i}")
                for i, (table, columns) in enumerate(shape)
            ]
        else:
            inserts = [
                sa.insert(table).values(
                    {c: sa.bindparam(f"p{i}_{c}", type_=table.c[c].type) for c in columns}
                )
                for i, (table, columns) in enumerate(shape)
            ]
        *first, last = inserts
        statement = last.add_cte(*(ins.cte(f"w{i}") for i, ins in enumerate(first)))
        if len(_FUSED_INSERTS) < 1024:
            _FUSED_INSERTS[key] = statement
    return statement


def fused_params(
    shape: tuple[Any, ...], submits: Sequence[Sequence[Mapping[str, Any]]]
) -> dict[str, Any]:
    """The parameters of :func:`fused_statement` for ``submits``.

    Args:
        shape: The statement's shape.
        submits: Per submit, its row of each table (:meth:`_InsertRecorder.rows`).

    Returns:
        A value per table and column (one submit), or an array of them (a group).
    """
    if len(submits) == 1:
        (rows,) = submits
        return {
            f"p{i}_{column}": rows[i][column]
            for i, (_, columns) in enumerate(shape)
            for column in columns
        }
    params: dict[str, Any] = {}
    for i, (table, columns) in enumerate(shape):
        rows_of_table = [rows_of_submit[i] for rows_of_submit in submits]
        params.update(bulk.row_params(table, columns, rows_of_table, name=f"p{i}"))
    return params


_Waiting = tuple[tuple[Any, ...], Sequence[Mapping[str, Any]], "asyncio.Future[None]"]
"""A submit waiting for its group: its shape, its row of each table, its outcome."""


class GroupCommit:
    """Group commit of concurrent submits: one statement, one round trip, for many.

    A submit that finds no statement under way (fewer than ``max_inflight``) runs at once, alone:
    an idle API pays nothing for this. Submits that arrive while one is in flight wait, and when
    it is done the next statement writes all of the same shape (up to ``max_rows``): one
    transaction, so they all commit or none does. Measured with 16 submits in flight, one
    statement at a time gave groups of about 7 and 12% less API CPU per submit; two at a time
    gave groups of 1.6 and no clear gain. A group that fails is written again submit by
    submit, so each request gets its own answer (a taken request id, a value the column
    refuses) and no submit fails for another's bad row.

    One per engine and event loop (:func:`group_commit`).
    """

    def __init__(self, engine: AsyncEngine, *, max_rows: int = 32, max_inflight: int = 1) -> None:
        self._engine = engine
        self._max_rows = max_rows
        self._max_inflight = max_inflight
        self._inflight = 0
        self._waiting: list[_Waiting] = []
        self._groups: set[asyncio.Task[None]] = set()  # the loop keeps only weak references
        self.statements = 0
        """Statements written (tests and benchmarks read it)."""
        self.grouped = 0
        """Submits committed by a statement that wrote more than one."""
        self.regrouped = 0
        """Submits written again one by one after their group failed."""

    async def write(self, shape: tuple[Any, ...], rows: Sequence[Mapping[str, Any]]) -> bool:
        """Writes one submit's rows, alone or with others.

        Args:
            shape: The fused statement's shape.
            rows: The submit's row of each table of the shape.

        Returns:
            Whether the submit was written at once, alone (no statement was in flight): its
            commit is nobody else's, so its publish need not wait for a batch.

        Raises:
            DuplicateRequestId: If the operation's request id is taken (nothing was written).
        """
        if self._inflight < self._max_inflight and not self._waiting:
            self._inflight += 1
            try:
                await self._execute(fused_statement(shape, 1), fused_params(shape, [rows]))
            finally:
                self._inflight -= 1
                self._next()
            return True
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append((shape, rows, future))
        await future
        return False

    def _next(self) -> None:
        while self._waiting and self._inflight < self._max_inflight:
            shape = self._waiting[0][0]
            group = [entry for entry in self._waiting if entry[0] == shape][: self._max_rows]
            taken = {id(entry) for entry in group}
            self._waiting = [entry for entry in self._waiting if id(entry) not in taken]
            self._inflight += 1
            task = asyncio.get_running_loop().create_task(self._write_group(shape, group))
            self._groups.add(task)
            task.add_done_callback(self._groups.discard)

    async def _write_group(
        self,
        shape: tuple[Any, ...],
        group: list[_Waiting],
    ) -> None:
        try:
            live = [entry for entry in group if not entry[2].done()]  # a caller may be gone
            alone = fused_statement(shape, 1)
            if len(live) == 1:
                one = fused_params(shape, [live[0][1]])
                await self._settle(live[0][2], self._execute(alone, one))
                return
            try:
                await self._execute(
                    fused_statement(shape, len(live)),
                    fused_params(shape, [rows for _, rows, _ in live]),
                )
            except Exception:
                # Nothing of the group was written: each submit on its own, for its own answer.
                log.debug("group of %d submits failed; writing them one by one", len(live))
                self.regrouped += len(live)
                for _, rows, future in live:
                    await self._settle(future, self._execute(alone, fused_params(shape, [rows])))
                return
            self.grouped += len(live)
            for _, _, future in live:
                if not future.done():
                    future.set_result(None)
        except BaseException as exc:  # cancelled: no submit of the group may hang
            for _, _, future in group:
                if not future.done():
                    future.set_exception(exc)
            raise
        finally:
            self._inflight -= 1
            self._next()

    @staticmethod
    async def _settle(future: asyncio.Future[None], work: Awaitable[None]) -> None:
        try:
            await work
        except Exception as exc:
            if not future.done():
                future.set_exception(exc)
            return
        if not future.done():
            future.set_result(None)

    async def _execute(self, statement: Any, params: dict[str, Any]) -> None:
        self.statements += 1
        await execute_fused(self._engine, statement, params)


async def execute_fused(engine: AsyncEngine, statement: Any, params: dict[str, Any]) -> None:
    """Runs a fused submit statement in autocommit (one round trip, one transaction).

    Args:
        engine: The domain's primary engine.
        statement: The statement.
        params: Its parameters.

    Raises:
        DuplicateRequestId: If the operation's request id is taken (nothing was written).
    """
    for attempt in (1, 2):
        try:
            # INSERTs of rows given by value: no plan depends on the values.
            async with autocommit_connection(engine, generic_plans=True) as conn:
                await conn.execute(statement, params)
            return
        except IntegrityError as exc:
            if is_request_id_conflict(exc):
                raise DuplicateRequestId("request_id is being used") from None
            raise
        except DBAPIError as exc:
            # Retried only when the connection was found dropped before the statement ran to
            # completion; a duplicate of the same rows would hit the primary keys.
            if attempt == 2 or not exc.connection_invalidated:
                raise
            log.warning("database connection dropped; retrying once on a new one")


_GROUPS: weakref.WeakKeyDictionary[Any, weakref.WeakKeyDictionary[Any, GroupCommit]] = (
    weakref.WeakKeyDictionary()
)


def group_commit(engine: AsyncEngine) -> GroupCommit:
    """The group committer of ``engine`` on the running event loop.

    Args:
        engine: The domain's primary engine.

    Returns:
        Its :class:`GroupCommit` (futures belong to one loop, so one per engine and loop).
    """
    per_loop = _GROUPS.get(engine.sync_engine)
    if per_loop is None:
        per_loop = _GROUPS.setdefault(engine.sync_engine, weakref.WeakKeyDictionary())
    loop = asyncio.get_running_loop()
    committer = per_loop.get(loop)
    if committer is None:
        committer = per_loop[loop] = GroupCommit(engine)
    return committer


_FUSED_INSERTS: dict[tuple[Any, ...], Any] = {}
"""Fused submit statements by shape (tables and columns), for one submit and for groups,
built once per process."""


class _TrackingOutbox(SqlOutboxRepository):
    """Outbox repository that remembers what this unit of work wrote, for the fast path."""

    def __init__(self, session: AsyncSession, table: sa.Table) -> None:
        super().__init__(session, table)
        self.added: list[OutboxMessage] = []

    async def add(self, message: OutboxMessage) -> None:
        await super().add(message)
        self.added.append(message)


class SqlUnitOfWork:
    """A transaction on one domain's primary database.

    Subclasses add the domain's repositories in :meth:`_bind`.
    """

    session: AsyncSession
    operations: SqlOperationRepository
    outbox: SqlOutboxRepository
    inbox: SqlInboxRepository | None

    def __init__(
        self,
        tables: DomainTables,
        sessionmaker: async_sessionmaker[AsyncSession] | SessionSource,
        *,
        after_commit: AfterCommit | None = None,
        max_attempts: int | None = None,
    ) -> None:
        """Creates the unit of work (the transaction opens on ``async with``).

        Args:
            tables: The domain's common tables.
            sessionmaker: Session factory of the domain's primary engine, or a
                :class:`SessionSource` choosing the database per transaction (replica reads).
            after_commit: Fast-path publisher called with the outbox rows this commit wrote.
            max_attempts: Attempt cap of the domain's operations (``None``: no cap); a claim
                past it ends the operation FAILED instead of starting it.
        """
        self.max_attempts = max_attempts
        self.tables = tables
        self.domain = tables.schema
        self._sessionmaker = sessionmaker
        self._after_commit = after_commit
        self._committed = False

    def _bind(self, session: AsyncSession) -> None:
        """Creates the repositories on ``session``; subclasses extend it.

        Args:
            session: The open session.
        """
        self.operations = SqlOperationRepository(session, self.tables.operations)
        self.outbox = _TrackingOutbox(session, self.tables.outbox)
        inbox = self.tables.inbox
        self.inbox = SqlInboxRepository(session, inbox) if inbox is not None else None

    async def __aenter__(self) -> Self:
        if isinstance(self._sessionmaker, async_sessionmaker):
            self.session = self._sessionmaker()
            await self.session.begin()
        else:
            self.session = await self._sessionmaker.open_session()
        self._committed = False
        self._bind(self.session)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is not None and not isinstance(self._sessionmaker, async_sessionmaker):
            self._sessionmaker.session_failed(self.session, exc)
        try:
            if not self._committed:
                await self.session.rollback()
        finally:
            await self.session.close()

    async def autocommit(self, work: Callable[[Self], Awaitable[T]], *, by_key: bool = False) -> T:
        """Runs ``work`` with the repositories on an autocommit connection.

        The hot path's way to the database: each statement is its own transaction, so a fused
        statement (claim, checkpoint, finish CTE, a read) costs one round trip - no BEGIN, no
        COMMIT, no ROLLBACK. Only for work whose every statement is atomic on its own. A
        connection found dropped (PostgreSQL restarted; pools do not pre-ping) is retried once
        on a fresh one: the fused statements are fenced, so a repeat after a lost reply is
        harmless (it finds the operation already moved on).

        Args:
            work: ``(uow) -> result``, run once (twice after a dropped connection).
            by_key: Every statement of ``work`` finds its rows by primary key (claim, finish,
                heartbeat): they run with generic plans (see
                :func:`domains.shared.driver.register_generic_plans`), which PostgreSQL would
                otherwise re-plan on every execution.

        Returns:
            What ``work`` returned.
        """
        if not isinstance(self._sessionmaker, async_sessionmaker):
            async with self:  # a routed source (replica reads): an ordinary transaction
                result = await work(self)
                await self.commit()
            return result
        engine = cast(AsyncEngine, self._sessionmaker.kw["bind"])
        for attempt in (1, 2):
            try:
                async with autocommit_connection(engine, generic_plans=by_key) as conn:
                    # Connection and session share execute(): the repositories work on either.
                    self._bind(cast(Any, conn))
                    result = await work(self)
                break
            except DBAPIError as exc:
                if attempt == 2 or not exc.connection_invalidated:
                    raise
                log.warning("database connection dropped; retrying once on a new one")
        await self._publish_added()
        return result

    async def insert_fused(self, work: Callable[[Self], Awaitable[T]]) -> T:
        """Runs ``work`` collecting its INSERTs, then writes them all in one statement.

        The submit path's budget: the domain row, the operation and the outbox row go to
        PostgreSQL as one ``WITH a AS (INSERT ...), b AS (INSERT ...) INSERT ...`` in
        autocommit - one round trip, atomic (one statement is one transaction) - and the outbox
        rows are handed to the fast-path publisher afterwards, as :meth:`commit` does.

        Args:
            work: ``(uow) -> result``; its repositories only record INSERTs.

        Returns:
            What ``work`` returned, once its rows are committed.

        Raises:
            NotFusable: If ``work`` ran anything but a plain INSERT (nothing was written:
                run it in an ordinary transaction instead).
            DuplicateRequestId: If the operation's request id is taken (nothing was written).
        """
        if not isinstance(self._sessionmaker, async_sessionmaker):
            raise NotFusable("a routed session source")
        recorder = _InsertRecorder()
        self._bind(cast(Any, recorder))
        result = await work(self)
        if not recorder.inserts:
            raise NotFusable("nothing to insert")
        engine = cast(AsyncEngine, self._sessionmaker.kw["bind"])
        shape = recorder.shape
        if shape is not None:
            alone = await group_commit(engine).write(shape, recorder.rows())
        else:
            await execute_fused(engine, *recorder.statement())
            alone = False  # a shape that does not group: concurrent ones may batch their publish
        await self._publish_added(urgent=alone)
        return result

    async def _publish_added(self, *, urgent: bool = False) -> None:
        # Hands the outbox rows this unit of work committed to the fast-path publisher. A
        # failing publisher is logged, not raised: the rows are committed and the relay
        # publishes them later.
        added = list(getattr(self.outbox, "added", []))
        if added and self._after_commit is not None:
            try:
                await self._after_commit(self.domain, added, urgent=urgent)
            except Exception:
                log.warning(
                    "fast-path publish failed; the outbox relay will publish", exc_info=True
                )

    async def commit(self) -> None:
        """Commits, then hands the outbox rows written to the fast-path publisher.

        A failing publisher is logged, not raised: the rows are committed and the relay
        publishes them later.
        """
        await self.session.commit()
        self._committed = True
        await self._publish_added()


_: type[UnitOfWork] = SqlUnitOfWork  # mypy proves the SQL class satisfies the protocol
