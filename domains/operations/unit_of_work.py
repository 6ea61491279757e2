"""Unit of work over one domain schema: one transaction for domain rows, operations and outbox."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable, Callable
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
from domains.shared.driver import autocommit_connection
from domains.shared.inbox import InboxRepository, SqlInboxRepository
from domains.shared.outbox import OutboxMessage, OutboxRepository, SqlOutboxRepository

log = logging.getLogger(__name__)

T = TypeVar("T")

AfterCommit = Callable[[str, list[OutboxMessage]], Awaitable[None]]
"""Called after a commit that wrote outbox rows: ``(domain, messages)`` (the fast path publishes
them from memory)."""


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

    async def autocommit(self, work: Callable[[Self], Awaitable[T]]) -> T:
        """Runs ``work`` with each statement its own transaction (atomic statements only)."""
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

    def statement(self) -> tuple[Any, dict[str, Any]]:
        """The fused statement and its parameters.

        Returns:
            ``(statement, params)``: ``WITH w0 AS (INSERT ...), ... INSERT ...``.
        """
        shape = tuple(
            (part[0], part[1]) if isinstance(part, tuple) else part for part in self.inserts
        )
        cacheable = all(isinstance(part, tuple) for part in self.inserts)
        statement = _FUSED_INSERTS.get(shape) if cacheable else None
        if statement is None:
            inserts = [
                sa.insert(part[0]).values(
                    {
                        column: sa.bindparam(f"p{i}_{column}", type_=part[0].c[column].type)
                        for column in part[1]
                    }
                )
                if isinstance(part, tuple)
                else part
                for i, part in enumerate(self.inserts)
            ]
            *first, last = inserts
            statement = last.add_cte(*(ins.cte(f"w{i}") for i, ins in enumerate(first)))
            if cacheable and len(_FUSED_INSERTS) < 256:
                _FUSED_INSERTS[shape] = statement
        params = {
            f"p{i}_{column}": value
            for i, part in enumerate(self.inserts)
            if isinstance(part, tuple)
            for column, value in part[2].items()
        }
        return statement, params


_FUSED_INSERTS: dict[tuple[Any, ...], Any] = {}
"""Fused submit statements by shape (tables and columns), built once per process."""


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

    async def autocommit(self, work: Callable[[Self], Awaitable[T]]) -> T:
        """Runs ``work`` with the repositories on an autocommit connection.

        The hot path's way to the database: each statement is its own transaction, so a fused
        statement (claim, checkpoint, finish CTE, a read) costs one round trip - no BEGIN, no
        COMMIT, no ROLLBACK. Only for work whose every statement is atomic on its own. A
        connection found dropped (PostgreSQL restarted; pools do not pre-ping) is retried once
        on a fresh one: the fused statements are fenced, so a repeat after a lost reply is
        harmless (it finds the operation already moved on).

        Args:
            work: ``(uow) -> result``, run once (twice after a dropped connection).

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
                async with autocommit_connection(engine) as conn:
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
        statement, params = recorder.statement()
        engine = cast(AsyncEngine, self._sessionmaker.kw["bind"])
        for attempt in (1, 2):
            try:
                async with autocommit_connection(engine) as conn:
                    await conn.execute(statement, params)
                break
            except IntegrityError as exc:
                if is_request_id_conflict(exc):
                    raise DuplicateRequestId("request_id is being used") from None
                raise
            except DBAPIError as exc:
                # Retried only when the connection was found dropped before the statement ran
                # to completion; a duplicate of the same rows would hit the primary keys.
                if attempt == 2 or not exc.connection_invalidated:
                    raise
                log.warning("database connection dropped; retrying once on a new one")
        await self._publish_added()
        return result

    async def _publish_added(self) -> None:
        # Hands the outbox rows this unit of work committed to the fast-path publisher. A
        # failing publisher is logged, not raised: the rows are committed and the relay
        # publishes them later.
        added = list(getattr(self.outbox, "added", []))
        if added and self._after_commit is not None:
            try:
                await self._after_commit(self.domain, added)
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
