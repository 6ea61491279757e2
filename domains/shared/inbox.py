"""Inbox of integration events, in each consuming domain's schema.

Events are work too: the outbox publisher writes one PENDING inbox row per (event, consumer)
in the consumer's database *before* it sends the ``<consumer>.handle_event`` task, and the
consumer marks the row HANDLED in the same transaction as the event's effect. A row still
PENDING past its deadline means the message was lost (broker flush) or the handler gave up
(database outage): the sweeper dispatches it again through the consumer's outbox, and after
``max_dispatches`` ends it FAILED with the reason, so nothing is lost silently and nothing loops.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import uuid
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.ext.asyncio import AsyncSession

from domains.shared.bulk import insert_statement, row_params
from domains.shared.retention import delete_batch

PENDING = "PENDING"
HANDLED = "HANDLED"
FAILED = "FAILED"


def inbox_table(metadata: sa.MetaData) -> sa.Table:
    """Defines the event inbox of one consuming domain's schema.

    Args:
        metadata: The domain's metadata.

    Returns:
        The ``inbox`` table.
    """
    return sa.Table(
        "inbox",
        metadata,
        sa.Column("event_id", pg.UUID(as_uuid=True), primary_key=True),
        sa.Column("consumer", sa.Text, primary_key=True),
        sa.Column("event_type", sa.Text, nullable=False),
        sa.Column("envelope", pg.JSONB, nullable=False),
        sa.Column("state", sa.Text, nullable=False),
        sa.Column("received_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("dispatch_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("dispatch_count", sa.Integer, nullable=False, server_default="1"),
        sa.Column("handled_time", sa.DateTime(timezone=True)),
        sa.Column("error", sa.Text),
        sa.CheckConstraint("state IN ('PENDING','HANDLED','FAILED')", name="state"),
        sa.Index(
            "ix_inbox_pending",
            "dispatch_time",
            postgresql_where=sa.text("state = 'PENDING'"),
        ),
        # Retention deletes handled rows by age without walking the table.
        sa.Index(
            "ix_inbox_handled_time",
            "handled_time",
            postgresql_where=sa.text("state = 'HANDLED'"),
        ),
    )


_RECEIVED = (
    "event_id",
    "consumer",
    "event_type",
    "envelope",
    "state",
    "received_time",
    "dispatch_time",
    "dispatch_count",
)


@functools.cache
def _receive_statement(table: sa.Table) -> Any:
    # Built once per inbox table: a batch of events in one statement, repeats skipped.
    return insert_statement(table, _RECEIVED).on_conflict_do_nothing()


@dataclasses.dataclass(frozen=True)
class InboxEntry:
    """One event a consumer owes handling.

    Attributes:
        event_id: The event.
        consumer: The consuming domain.
        event_type: E.g. ``imports.ImportCompleted``.
        envelope: The event's JSON envelope (dispatched again as is).
        dispatch_count: Dispatches so far.
        dispatch_time: Last dispatch.
    """

    event_id: uuid.UUID
    consumer: str
    event_type: str
    envelope: Mapping[str, Any]
    dispatch_count: int = 1
    dispatch_time: dt.datetime | None = None


class InboxRepository(Protocol):
    """What services need of a consuming domain's inbox (exactly-once event handling)."""

    async def receive(self, entries: Sequence[InboxEntry], now: dt.datetime) -> None:
        """Records events about to be dispatched (a row already there is left alone)."""
        ...

    async def mark_handled(
        self, event_id: uuid.UUID, consumer: str, envelope: Mapping[str, Any], now: dt.datetime
    ) -> None:
        """Records that ``consumer`` applied the event (call it in the effect's transaction)."""
        ...

    async def find_due(
        self, now: dt.datetime, deadline_seconds: float, limit: int
    ) -> list[InboxEntry]:
        """Locks PENDING rows not handled within their deadline (it grows with each dispatch)."""
        ...

    async def mark_dispatched(self, entry: InboxEntry, now: dt.datetime) -> None:
        """Counts one more dispatch of ``entry``."""
        ...

    async def mark_failed(self, entry: InboxEntry, error: str) -> None:
        """Ends ``entry`` FAILED (a dead letter: the sweeper stops dispatching it)."""
        ...

    async def counts(self) -> dict[str, int]:
        """Returns the number of rows by state."""
        ...

    async def purge_handled(self, older_than: dt.datetime, limit: int) -> int:
        """Deletes rows handled before ``older_than`` (one batch); PENDING and FAILED stay."""
        ...


class SqlInboxRepository:
    """The inbox rows of one consuming domain schema."""

    def __init__(self, session: AsyncSession, table: sa.Table) -> None:
        """Binds the repository.

        Args:
            session: The unit of work's session.
            table: The domain's ``inbox`` table.
        """
        self._session = session
        self._t = table

    async def receive(self, entries: Sequence[InboxEntry], now: dt.datetime) -> None:
        """Records events about to be dispatched (a row already there is left alone).

        Args:
            entries: Events for this consumer.
            now: Current time.
        """
        if not entries:
            return
        rows = [
            {
                "event_id": e.event_id,
                "consumer": e.consumer,
                "event_type": e.event_type,
                "envelope": dict(e.envelope),
                "state": PENDING,
                "received_time": now,
                "dispatch_time": now,
                "dispatch_count": 1,
            }
            for e in entries
        ]
        statement = _receive_statement(self._t)
        await self._session.execute(statement, row_params(self._t, _RECEIVED, rows))

    async def mark_handled(
        self, event_id: uuid.UUID, consumer: str, envelope: Mapping[str, Any], now: dt.datetime
    ) -> None:
        """Records that ``consumer`` applied the event (call it in the effect's transaction).

        Args:
            event_id: The event.
            consumer: The consuming domain.
            envelope: The event envelope (for a row the publisher did not write).
            now: Current time.
        """
        t = self._t
        query = (
            pg.insert(t)
            .values(
                event_id=event_id,
                consumer=consumer,
                event_type=str(envelope.get("type", "")),
                envelope=dict(envelope),
                state=HANDLED,
                received_time=now,
                dispatch_time=now,
                handled_time=now,
            )
            .on_conflict_do_update(
                index_elements=[t.c.event_id, t.c.consumer],
                set_={"state": HANDLED, "handled_time": now, "error": None},
            )
        )
        await self._session.execute(query)

    async def find_due(
        self, now: dt.datetime, deadline_seconds: float, limit: int
    ) -> list[InboxEntry]:
        """Locks PENDING rows not handled within their deadline (it grows with each dispatch).

        Args:
            now: Current time.
            deadline_seconds: Seconds a dispatch may take before it counts as lost.
            limit: Maximum rows.

        Returns:
            The locked rows (``FOR UPDATE SKIP LOCKED``), oldest dispatch first.
        """
        t = self._t
        cutoff = sa.literal(now) - sa.func.make_interval(
            0, 0, 0, 0, 0, 0, deadline_seconds * t.c.dispatch_count
        )
        query = (
            sa.select(t)
            .where(t.c.state == PENDING, t.c.dispatch_time < cutoff)
            .order_by(t.c.dispatch_time)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        rows = (await self._session.execute(query)).mappings().all()
        return [
            InboxEntry(
                event_id=r["event_id"],
                consumer=r["consumer"],
                event_type=r["event_type"],
                envelope=r["envelope"],
                dispatch_count=r["dispatch_count"],
                dispatch_time=r["dispatch_time"],
            )
            for r in rows
        ]

    async def mark_dispatched(self, entry: InboxEntry, now: dt.datetime) -> None:
        """Counts one more dispatch of ``entry``.

        Args:
            entry: A locked row.
            now: Current time.
        """
        t = self._t
        await self._session.execute(
            sa.update(t)
            .where(t.c.event_id == entry.event_id, t.c.consumer == entry.consumer)
            .values(dispatch_time=now, dispatch_count=t.c.dispatch_count + 1)
        )

    async def mark_failed(self, entry: InboxEntry, error: str) -> None:
        """Ends ``entry`` FAILED (a dead letter: the sweeper stops dispatching it).

        Args:
            entry: A locked row.
            error: Why.
        """
        t = self._t
        await self._session.execute(
            sa.update(t)
            .where(t.c.event_id == entry.event_id, t.c.consumer == entry.consumer)
            .values(state=FAILED, error=error[:2000])
        )

    async def counts(self) -> dict[str, int]:
        """Returns the number of rows by state.

        Returns:
            ``{state: count}``.
        """
        t = self._t
        rows = await self._session.execute(
            sa.select(t.c.state, sa.func.count()).group_by(t.c.state)
        )
        return {str(state): int(count) for state, count in rows.all()}

    async def purge_handled(self, older_than: dt.datetime, limit: int) -> int:
        """Deletes rows handled before ``older_than`` (one batch); PENDING and FAILED stay.

        Args:
            older_than: Cut-off on ``handled_time``.
            limit: Most rows deleted.

        Returns:
            Rows deleted.
        """
        t = self._t
        condition = sa.and_(t.c.state == HANDLED, t.c.handled_time < older_than)
        return await delete_batch(self._session, t, condition, limit)
