"""Every query on the schedules, schedule runs and beat leader tables lives here."""

from __future__ import annotations

import builtins
import dataclasses
import datetime as dt
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.ext.asyncio import AsyncSession

from domains.platform import tables
from domains.platform.schedules.model import (
    BeatNode,
    LeaderLease,
    RunState,
    Schedule,
    ScheduleRun,
)


def _visible(tenant: str) -> sa.ColumnElement[bool]:
    # A tenant sees its own schedules and the system ones.
    t = tables.schedules
    return sa.or_(t.c.tenant == tenant, t.c.system.is_(True))


class ScheduleRepository(Protocol):
    """Storage of schedules (and of the default schedules already seeded)."""

    async def add(self, schedule: Schedule) -> bool:
        """Inserts ``schedule`` unless its tenant already used its request id."""

    async def get_by_request_id(self, tenant: str, request_id: str) -> Schedule | None:
        """Loads the schedule a create with ``request_id`` made for ``tenant``."""

    async def add_if_absent(self, schedule: Schedule) -> bool:
        """Inserts ``schedule`` unless its id exists (built-in schedules keep their edits)."""

    async def get(
        self, schedule_id: str, tenant: str | None, *, for_update: bool = False
    ) -> Schedule | None:
        """Loads a schedule visible to ``tenant`` (any, when ``None``)."""

    async def list(
        self, tenant: str, *, after_id: str | None, limit: int
    ) -> builtins.list[Schedule]:
        """Lists the schedules ``tenant`` sees, by id."""

    async def save(self, schedule: Schedule) -> None:
        """Writes back ``schedule``."""

    async def delete(self, schedule_id: str) -> None:
        """Deletes a schedule and its runs."""

    async def due(self, now: dt.datetime, limit: int) -> builtins.list[Schedule]:
        """Locks enabled schedules due at ``now`` (rows another beat holds are skipped)."""

    async def next_due(self) -> dt.datetime | None:
        """Returns the earliest ``next_run_time`` of enabled schedules."""

    async def set_last_operation(
        self, schedule_id: str, fire_time: dt.datetime, operation: str
    ) -> None:
        """Records the operation of a fire, unless a later slot already fired."""

    async def seed_once(self, key: str, now: dt.datetime) -> bool:
        """Records that default ``key`` was created; False if it was before."""


class ScheduleRunRepository(Protocol):
    """Storage of fired slots (``schedule_runs``)."""

    async def add(self, run: ScheduleRun) -> bool:
        """Records a fired slot unless it already is."""

    async def pending(self, limit: int) -> builtins.list[ScheduleRun]:
        """Returns runs whose workflow is not started yet, oldest first."""

    async def update(self, schedule_id: str, fire_time: dt.datetime, **values: Any) -> None:
        """Changes a run."""

    async def list(self, schedule_id: str, limit: int) -> builtins.list[ScheduleRun]:
        """Returns a schedule's latest runs, newest first."""

    async def purge(self, older_than: dt.datetime, limit: int) -> int:
        """Deletes settled runs fired before ``older_than``; returns how many."""


class BeatRepository(Protocol):
    """The beat leader lease and the beat nodes seen."""

    async def acquire(self, name: str, holder: str, node: str, lease_seconds: float) -> bool:
        """Takes or renews the lease: succeeds if free, expired, or already ours."""

    async def holds(self, name: str, holder: str) -> bool:
        """Whether ``holder`` holds an unexpired lease (the fence checked before firing)."""

    async def release(self, name: str, holder: str) -> None:
        """Gives the lease up (clean shutdown) and forgets the node."""

    async def lease(self, name: str) -> LeaderLease | None:
        """Reads the lease."""

    async def nodes(self, seen_within: float) -> builtins.list[BeatNode]:
        """Returns beat nodes seen within ``seen_within`` seconds."""

    async def forget_nodes(self, older_than_seconds: float) -> None:
        """Deletes nodes not seen for a while (killed beats)."""


class SqlScheduleRepository:
    """Schedules in the ``platform`` schema."""

    def __init__(self, session: AsyncSession) -> None:
        """Binds the repository.

        Args:
            session: The unit of work's session.
        """
        self._session = session

    async def add(self, schedule: Schedule) -> bool:
        """Inserts ``schedule`` unless its tenant already used its request id.

        Args:
            schedule: A new schedule.

        Returns:
            False if a schedule of the tenant holds the same ``request_id`` (nothing written);
            a concurrent insert of that id is waited for, so its winner is then readable.
        """
        t = tables.schedules
        query = (
            pg.insert(t)
            .values(dataclasses.asdict(schedule))
            .on_conflict_do_nothing(
                index_elements=["tenant", "request_id"], index_where=t.c.request_id.is_not(None)
            )
            .returning(t.c.id)
        )
        return (await self._session.execute(query)).first() is not None

    async def get_by_request_id(self, tenant: str, request_id: str) -> Schedule | None:
        """Loads the schedule a create with ``request_id`` made for ``tenant``.

        Args:
            tenant: Caller's tenant.
            request_id: AIP-155 request id of the create.

        Returns:
            The schedule or ``None``.
        """
        t = tables.schedules
        query = sa.select(t).where(t.c.tenant == tenant, t.c.request_id == request_id)
        row = (await self._session.execute(query)).mappings().first()
        return Schedule(**dict(row)) if row else None

    async def add_if_absent(self, schedule: Schedule) -> bool:
        """Inserts ``schedule`` unless its id exists (built-in schedules keep their edits).

        Args:
            schedule: The schedule.

        Returns:
            True if inserted.
        """
        query = (
            pg.insert(tables.schedules)
            .values(dataclasses.asdict(schedule))
            .on_conflict_do_nothing(index_elements=["id"])
            .returning(tables.schedules.c.id)
        )
        return (await self._session.execute(query)).first() is not None

    async def get(
        self, schedule_id: str, tenant: str | None, *, for_update: bool = False
    ) -> Schedule | None:
        """Loads a schedule visible to ``tenant``.

        Args:
            schedule_id: Its id.
            tenant: Caller's tenant; ``None`` for any (the beat).
            for_update: Lock the row.

        Returns:
            The schedule or ``None``.
        """
        t = tables.schedules
        query = sa.select(t).where(t.c.id == schedule_id)
        if tenant is not None:
            query = query.where(_visible(tenant))
        if for_update:
            query = query.with_for_update()
        row = (await self._session.execute(query)).mappings().first()
        return Schedule(**dict(row)) if row else None

    async def list(
        self, tenant: str, *, after_id: str | None, limit: int
    ) -> builtins.list[Schedule]:
        """Lists the schedules ``tenant`` sees, by id.

        Args:
            tenant: Caller's tenant.
            after_id: Keyset position.
            limit: Maximum rows.

        Returns:
            Schedules.
        """
        t = tables.schedules
        query = sa.select(t).where(_visible(tenant)).order_by(t.c.id).limit(limit)
        if after_id is not None:
            query = query.where(t.c.id > after_id)
        rows = (await self._session.execute(query)).mappings().all()
        return [Schedule(**dict(row)) for row in rows]

    async def save(self, schedule: Schedule) -> None:
        """Writes back ``schedule``.

        Args:
            schedule: A loaded, changed schedule.
        """
        values = dataclasses.asdict(schedule)
        values.pop("id")
        t = tables.schedules
        await self._session.execute(sa.update(t).where(t.c.id == schedule.id).values(**values))

    async def delete(self, schedule_id: str) -> None:
        """Deletes a schedule and its runs.

        Args:
            schedule_id: Its id.
        """
        await self._session.execute(
            sa.delete(tables.schedule_runs).where(tables.schedule_runs.c.schedule_id == schedule_id)
        )
        await self._session.execute(
            sa.delete(tables.schedules).where(tables.schedules.c.id == schedule_id)
        )

    async def due(self, now: dt.datetime, limit: int) -> builtins.list[Schedule]:
        """Locks enabled schedules due at ``now`` (rows another beat holds are skipped).

        Args:
            now: Current time.
            limit: Maximum rows.

        Returns:
            Due schedules, earliest first.
        """
        t = tables.schedules
        query = (
            sa.select(t)
            .where(t.c.enabled, t.c.next_run_time <= now)
            .order_by(t.c.next_run_time)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        rows = (await self._session.execute(query)).mappings().all()
        return [Schedule(**dict(row)) for row in rows]

    async def next_due(self) -> dt.datetime | None:
        """Returns the earliest ``next_run_time`` of enabled schedules.

        Returns:
            The time, or ``None`` when nothing is scheduled.
        """
        t = tables.schedules
        query = sa.select(sa.func.min(t.c.next_run_time)).where(t.c.enabled)
        value: dt.datetime | None = (await self._session.execute(query)).scalar()
        return value

    async def set_last_operation(
        self, schedule_id: str, fire_time: dt.datetime, operation: str
    ) -> None:
        """Records the operation of a fire, unless a later slot already fired.

        Args:
            schedule_id: The schedule.
            fire_time: The slot.
            operation: Its operation name.
        """
        t = tables.schedules
        await self._session.execute(
            sa.update(t)
            .where(
                t.c.id == schedule_id,
                sa.or_(t.c.last_run_time.is_(None), t.c.last_run_time <= fire_time),
            )
            .values(last_operation=operation)
        )

    async def seed_once(self, key: str, now: dt.datetime) -> bool:
        """Records that default ``key`` was created; False if it was before.

        Args:
            key: Seed key.
            now: Current time.

        Returns:
            True the first time.
        """
        query = (
            pg.insert(tables.schedule_seeds)
            .values(key=key, create_time=now)
            .on_conflict_do_nothing(index_elements=["key"])
            .returning(tables.schedule_seeds.c.key)
        )
        return (await self._session.execute(query)).first() is not None


class SqlScheduleRunRepository:
    """Fired slots; the primary key (schedule_id, fire_time) makes a slot fire once."""

    def __init__(self, session: AsyncSession) -> None:
        """Binds the repository.

        Args:
            session: The unit of work's session.
        """
        self._session = session

    async def add(self, run: ScheduleRun) -> bool:
        """Records a fired slot unless it already is.

        Args:
            run: The run.

        Returns:
            True if recorded, False if that slot had already fired.
        """
        query = (
            pg.insert(tables.schedule_runs)
            .values(dataclasses.asdict(run))
            .on_conflict_do_nothing(index_elements=["schedule_id", "fire_time"])
            .returning(tables.schedule_runs.c.schedule_id)
        )
        return (await self._session.execute(query)).first() is not None

    async def pending(self, limit: int) -> builtins.list[ScheduleRun]:
        """Returns runs whose workflow is not started yet, oldest first.

        Args:
            limit: Maximum rows.

        Returns:
            Runs.
        """
        t = tables.schedule_runs
        query = (
            sa.select(t).where(t.c.state == RunState.PENDING).order_by(t.c.create_time).limit(limit)
        )
        rows = (await self._session.execute(query)).mappings().all()
        return [ScheduleRun(**dict(row)) for row in rows]

    async def update(self, schedule_id: str, fire_time: dt.datetime, **values: Any) -> None:
        """Changes a run.

        Args:
            schedule_id: The schedule.
            fire_time: The slot.
            **values: Columns to set.
        """
        t = tables.schedule_runs
        await self._session.execute(
            sa.update(t)
            .where(t.c.schedule_id == schedule_id, t.c.fire_time == fire_time)
            .values(**values)
        )

    async def list(self, schedule_id: str, limit: int) -> builtins.list[ScheduleRun]:
        """Returns a schedule's latest runs, newest first.

        Args:
            schedule_id: The schedule.
            limit: Maximum rows.

        Returns:
            Runs.
        """
        t = tables.schedule_runs
        query = (
            sa.select(t)
            .where(t.c.schedule_id == schedule_id)
            .order_by(t.c.fire_time.desc())
            .limit(limit)
        )
        rows = (await self._session.execute(query)).mappings().all()
        return [ScheduleRun(**dict(row)) for row in rows]

    async def purge(self, older_than: dt.datetime, limit: int) -> int:
        """Deletes settled runs fired before ``older_than``.

        Args:
            older_than: Cut-off.
            limit: Maximum rows.

        Returns:
            Rows deleted.
        """
        t = tables.schedule_runs
        victims = (
            sa.select(t.c.schedule_id, t.c.fire_time)
            .where(t.c.fire_time < older_than, t.c.state != RunState.PENDING)
            .limit(limit)
        )
        result = await self._session.execute(
            sa.delete(t).where(sa.tuple_(t.c.schedule_id, t.c.fire_time).in_(victims))
        )
        return int(getattr(result, "rowcount", 0) or 0)


class SqlBeatRepository:
    """The beat leader lease and the beat nodes seen; times come from the database clock, so
    beats on hosts with skewed clocks agree on expiry.
    """

    def __init__(self, session: AsyncSession) -> None:
        """Binds the repository.

        Args:
            session: The unit of work's session.
        """
        self._session = session

    async def acquire(self, name: str, holder: str, node: str, lease_seconds: float) -> bool:
        """Takes or renews the lease: succeeds if free, expired, or already ours.

        Args:
            name: Lease name.
            holder: This process's unique id.
            node: Its display name.
            lease_seconds: Lease length.

        Returns:
            True if this process holds the lease now.
        """
        t = tables.beat_leader
        expires = sa.func.now() + sa.func.make_interval(0, 0, 0, 0, 0, 0, lease_seconds)
        insert = pg.insert(t).values(
            name=name, holder=holder, node=node, acquired_at=sa.func.now(), expires_at=expires
        )
        query = insert.on_conflict_do_update(
            index_elements=["name"],
            set_={
                "holder": insert.excluded.holder,
                "node": insert.excluded.node,
                "expires_at": insert.excluded.expires_at,
                "acquired_at": sa.case(
                    (t.c.holder == insert.excluded.holder, t.c.acquired_at),
                    else_=insert.excluded.acquired_at,
                ),
            },
            where=sa.or_(t.c.holder == insert.excluded.holder, t.c.expires_at < sa.func.now()),
        ).returning(t.c.holder)
        held = (await self._session.execute(query)).first() is not None
        nodes = tables.beat_nodes
        upsert = pg.insert(nodes).values(
            holder=holder, node=node, leader=held, started_at=sa.func.now(), last_seen=sa.func.now()
        )
        await self._session.execute(
            upsert.on_conflict_do_update(
                index_elements=["holder"],
                set_={"leader": upsert.excluded.leader, "last_seen": upsert.excluded.last_seen},
            )
        )
        return held

    async def holds(self, name: str, holder: str) -> bool:
        """Whether ``holder`` holds an unexpired lease (the fence checked before firing).

        Args:
            name: Lease name.
            holder: The process.

        Returns:
            True if it is the leader now.
        """
        t = tables.beat_leader
        query = sa.select(t.c.holder).where(
            t.c.name == name, t.c.holder == holder, t.c.expires_at > sa.func.now()
        )
        return (await self._session.execute(query)).first() is not None

    async def release(self, name: str, holder: str) -> None:
        """Gives the lease up (clean shutdown) and forgets the node.

        Args:
            name: Lease name.
            holder: The process.
        """
        t = tables.beat_leader
        await self._session.execute(sa.delete(t).where(t.c.name == name, t.c.holder == holder))
        await self._session.execute(
            sa.delete(tables.beat_nodes).where(tables.beat_nodes.c.holder == holder)
        )

    async def lease(self, name: str) -> LeaderLease | None:
        """Reads the lease.

        Args:
            name: Lease name.

        Returns:
            The lease (possibly expired), or ``None`` if none was ever taken.
        """
        t = tables.beat_leader
        query = sa.select(t, sa.func.now().label("now")).where(t.c.name == name)
        row = (await self._session.execute(query)).mappings().first()
        return LeaderLease(**dict(row)) if row else None

    async def nodes(self, seen_within: float) -> builtins.list[BeatNode]:
        """Returns beat nodes seen within ``seen_within`` seconds (older rows are deleted).

        Args:
            seen_within: Seconds.

        Returns:
            Nodes by name.
        """
        t = tables.beat_nodes
        cutoff = sa.func.now() - sa.func.make_interval(0, 0, 0, 0, 0, 0, seen_within)
        query = sa.select(t.c.node, t.c.holder, t.c.last_seen, t.c.leader).where(
            t.c.last_seen >= cutoff
        )
        rows = (await self._session.execute(query.order_by(t.c.node))).mappings().all()
        return [BeatNode(**dict(row)) for row in rows]

    async def forget_nodes(self, older_than_seconds: float) -> None:
        """Deletes nodes not seen for a while (killed beats).

        Args:
            older_than_seconds: Seconds.
        """
        t = tables.beat_nodes
        cutoff = sa.func.now() - sa.func.make_interval(0, 0, 0, 0, 0, 0, older_than_seconds)
        await self._session.execute(sa.delete(t).where(t.c.last_seen < cutoff))
