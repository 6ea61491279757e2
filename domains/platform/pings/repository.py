"""Every query on the ``pings`` and ``ping_effects`` tables lives here."""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import uuid
from collections.abc import Callable
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from domains.operations.model import Progress
from domains.operations.repository import InstantShape
from domains.platform import tables
from domains.platform.pings.model import Ping
from domains.shared.ids import new_id
from domains.shared.retention import delete_batch


class PingRepository(Protocol):
    """Storage of pings."""

    async def add(self, ping: Ping) -> None:
        """Inserts a ping."""

    async def get(
        self, ping_id: uuid.UUID, *, for_update: bool = False, tenant: str | None = None
    ) -> Ping | None:
        """Loads a ping (of ``tenant`` only, when given)."""

    async def save(self, ping: Ping) -> None:
        """Writes back a ping."""

    async def log_effect(
        self, operation_id: uuid.UUID, attempt: int, worker: str, now: dt.datetime
    ) -> None:
        """Appends one row to the effect log (never deduplicated: it is the oracle)."""

    async def purge(self, completed_before: dt.datetime, limit: int) -> int:
        """Deletes pings answered before ``completed_before``, and the effect log's rows written
        before it (one batch of each).
        """


class SqlPingRepository:
    """Pings in the ``platform`` schema."""

    def __init__(self, session: AsyncSession) -> None:
        """Binds the repository.

        Args:
            session: The unit of work's session.
        """
        self._session = session

    async def add(self, ping: Ping) -> None:
        """Inserts ``ping``.

        Args:
            ping: A new ping.
        """
        row = {f.name: getattr(ping, f.name) for f in dataclasses.fields(ping)}
        await self._session.execute(sa.insert(tables.pings), row)

    async def get(
        self, ping_id: uuid.UUID, *, for_update: bool = False, tenant: str | None = None
    ) -> Ping | None:
        """Loads a ping.

        Args:
            ping_id: Its id.
            for_update: Lock the row.
            tenant: Only a ping of this tenant (``None``: any, for the worker).

        Returns:
            The ping or ``None``.
        """
        query = sa.select(tables.pings).where(tables.pings.c.id == ping_id)
        if tenant is not None:
            query = query.where(tables.pings.c.tenant == tenant)
        if for_update:
            query = query.with_for_update()
        row = (await self._session.execute(query)).mappings().first()
        return ping_from_row(dict(row)) if row else None

    async def save(self, ping: Ping) -> None:
        """Writes back ``ping``.

        Args:
            ping: A loaded, changed ping.
        """
        values = dataclasses.asdict(ping)
        values.pop("id")
        await self._session.execute(
            sa.update(tables.pings).where(tables.pings.c.id == ping.id).values(**values)
        )

    async def log_effect(
        self, operation_id: uuid.UUID, attempt: int, worker: str, now: dt.datetime
    ) -> None:
        """Appends one row to the effect log (never deduplicated: it is the oracle).

        Args:
            operation_id: The ping's operation.
            attempt: The attempt applying the effect.
            worker: The worker applying it.
            now: Current time.
        """
        await self._session.execute(
            sa.insert(tables.ping_effects).values(
                id=new_id(),
                operation_id=operation_id,
                attempt=attempt,
                worker=worker,
                applied_time=now,
            )
        )

    async def purge(self, completed_before: dt.datetime, limit: int) -> int:
        """Deletes pings answered before ``completed_before``, and the effect log's rows
        written before it (one batch of each).

        Args:
            completed_before: Cut-off on ``complete_time`` and ``applied_time``.
            limit: Most rows deleted per table.

        Returns:
            The larger of the two tables' deleted rows (a full batch means: run again).
        """
        t, effects = tables.pings, tables.ping_effects
        pings = await delete_batch(self._session, t, t.c.complete_time < completed_before, limit)
        logged = await delete_batch(
            self._session, effects, effects.c.applied_time < completed_before, limit
        )
        return max(pings, logged)


def ping_target() -> sa.Table:
    """The table a ping operation's target lives in (read with the claim)."""
    return tables.pings


def ping_from_row(row: dict[str, Any]) -> Ping:
    """Builds a ping from its row.

    Args:
        row: A ``pings`` row.

    Returns:
        The ping.
    """
    return Ping(**row)


@functools.cache
def ping_exists() -> sa.ColumnElement[bool]:
    """The fused finish's precondition: the ping row (bind parameter ``p_ping_id``) exists.

    Returns:
        An ``EXISTS`` condition.
    """
    pings = tables.pings
    return sa.exists(
        sa.select(pings.c.id).where(pings.c.id == sa.bindparam("p_ping_id", type_=pings.c.id.type))
    )


ANSWER_SHAPE = "platform.ping.answer"
"""Shape name of the ping's fused finish (its statement is built once and reused)."""


def _answer(worker: sa.BindParameter[str], now: sa.BindParameter[Any]) -> dict[str, Any]:
    # The reply's column values (``Ping.answer``), for both fused statements.
    pings = tables.pings
    return {
        "reply": sa.literal("pong: ") + pings.c.message,
        "worker": worker,
        "complete_time": now,
        "completions": pings.c.completions + 1,
    }


@functools.cache
def answer_effects() -> tuple[Callable[[sa.ColumnElement[bool]], Any], ...]:
    """A ping's answer as statements for the fused finish (see ``OperationRunner.finish_fused``).

    The same writes as ``Ping.answer`` + :meth:`SqlPingRepository.save` +
    :meth:`SqlPingRepository.log_effect`, each guarded by ``owned`` (the fencing-token check).
    Every value is a bind parameter (:func:`answer_params`, and the finish's own ``f_now``,
    ``f_op_id``, ``f_attempt``), so the statement is built once.

    Returns:
        ``owned -> statement`` builders: the ping's reply and the effect-log row (built once per
        process: SQLAlchemy expressions are immutable).
    """
    pings, effects = tables.pings, tables.ping_effects
    now = sa.bindparam("f_now", type_=effects.c.applied_time.type)
    worker = sa.bindparam("p_worker", type_=sa.Text)
    return (
        lambda owned: (
            sa.update(pings)
            .where(pings.c.id == sa.bindparam("p_ping_id", type_=pings.c.id.type), owned)
            .values(**_answer(worker, now))
        ),
        lambda owned: sa.insert(effects).from_select(
            ["id", "operation_id", "attempt", "worker", "applied_time"],
            sa.select(
                sa.bindparam("p_effect_id", type_=effects.c.id.type),
                sa.bindparam("f_op_id", type_=effects.c.operation_id.type),
                sa.bindparam("f_attempt", type_=sa.Integer),
                worker,
                now,
            ).where(owned),
        ),
    )


def answer_params(ping_id: uuid.UUID, worker: str) -> dict[str, Any]:
    """Values of :func:`answer_effects`' own bind parameters.

    Args:
        ping_id: The ping.
        worker: The answering worker.

    Returns:
        The parameters.
    """
    return {"p_ping_id": ping_id, "p_worker": worker, "p_effect_id": new_id()}


INSTANT_PROGRESS = Progress(done=1, total=1, message="step 1 of 1")
"""An instant ping's final progress: what the ordinary path leaves after its one step."""


@functools.cache
def instant_ping() -> InstantShape:
    """A ping with nothing to wait for, run as one statement (``OperationRunner.run_instant``).

    Instant: one step, no sleep, no deliberate failure (a ping with any of those takes the
    ordinary path, whose claim, checkpoints and attempt count they need). The writes are the
    ordinary path's: the reply (:func:`answer_effects`' update), the effect-log row under the
    new attempt, and the same response; bind parameters ``p_worker`` and ``p_effect_id``
    (:func:`instant_params`).

    Returns:
        The shape (built once per process).
    """
    pings, effects = tables.pings, tables.ping_effects
    worker = sa.bindparam("p_worker", type_=sa.Text)
    now = sa.bindparam("now", type_=effects.c.applied_time.type)

    def condition(target: sa.Table) -> sa.ColumnElement[bool]:
        return sa.and_(
            target.c.steps == 1, target.c.sleep_seconds == 0, target.c.fail_attempts == 0
        )

    def response(ops: sa.Table, target: sa.Table) -> sa.ColumnElement[Any]:
        # The ordinary path's response; the target is "pings/<id>", the ping's name.
        return sa.func.jsonb_build_object(
            sa.literal("ping"),
            ops.c.target,
            sa.literal("reply"),
            sa.literal("pong: ") + target.c.message,
            sa.literal("worker"),
            worker,
            sa.literal("attempt"),
            ops.c.attempt + 1,
        )

    def settled_ping(settled: Any) -> sa.ColumnElement[bool]:
        ping_id = sa.cast(sa.func.split_part(settled.c.target, "/", 2), pings.c.id.type)
        return pings.c.id == sa.select(ping_id).scalar_subquery()

    return InstantShape(
        name="platform.ping.instant",
        target=pings,
        condition=condition,
        response=response,
        effects=(
            lambda settled: (
                sa.update(pings).where(settled_ping(settled)).values(**_answer(worker, now))
            ),
            lambda settled: sa.insert(effects).from_select(
                ["id", "operation_id", "attempt", "worker", "applied_time"],
                sa.select(
                    sa.bindparam("p_effect_id", type_=effects.c.id.type),
                    settled.c.id,
                    settled.c.attempt,
                    worker,
                    now,
                ),
            ),
        ),
    )


def instant_params(worker: str) -> dict[str, Any]:
    """Values of :func:`instant_ping`'s own bind parameters.

    Args:
        worker: The answering worker.

    Returns:
        The parameters.
    """
    return {"p_worker": worker, "p_effect_id": new_id()}
