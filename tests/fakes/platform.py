"""In-memory fake of the platform unit of work (see ``tests/fakes/operations.py`` for the
transaction semantics).

Faked: pings and their effect log, schedules (with the default-schedule seeds), schedule runs,
the beat leader lease and nodes, and API keys. The lease's times come from a clock given to
the unit of work (the SQL repository uses the database clock), so a test expires a lease by
moving that clock. Row locks (``for_update``, ``SKIP LOCKED`` in ``due``) mean nothing in
memory, where one service call runs at a time: the concurrent cases stay with
``tests/service/test_schedules_service.py`` on PostgreSQL.
"""

from __future__ import annotations

import builtins
import dataclasses
import datetime as dt
import uuid
from collections.abc import Callable
from typing import Any

from sqlalchemy.exc import IntegrityError

from domains.platform.keys.model import ApiKey
from domains.platform.keys.repository import ApiKeyRepository
from domains.platform.pings.model import Ping
from domains.platform.pings.repository import PingRepository
from domains.platform.schedules.model import (
    BeatNode,
    LeaderLease,
    RunState,
    Schedule,
    ScheduleRun,
)
from domains.platform.schedules.repository import (
    BeatRepository,
    ScheduleRepository,
    ScheduleRunRepository,
)
from domains.platform.unit_of_work import PlatformUoW
from domains.shared.clock import utcnow
from tests.fakes.operations import FakeDatabase, FakeUnitOfWork, _copy

TABLES: dict[str, Any] = {
    "pings": {},
    "ping_effects": [],
    "schedules": {},
    "schedule_runs": {},
    "schedule_seeds": {},
    "beat_leader": {},
    "beat_nodes": {},
    "api_keys": {},
}
"""The platform tables of a :class:`FakeDatabase`."""


def platform_database() -> FakeDatabase:
    """Returns an empty fake platform schema."""
    return FakeDatabase(TABLES)


class FakePingRepository:
    """Pings and their effect log in memory."""

    def __init__(self, state: dict[str, Any]) -> None:
        """Binds the repository to a transaction's working copy.

        Args:
            state: The unit of work's copy of the tables.
        """
        self._pings: dict[uuid.UUID, Ping] = state["pings"]
        self._effects: list[dict[str, Any]] = state["ping_effects"]

    async def add(self, ping: Ping) -> None:
        """Inserts a ping."""
        self._pings[ping.id] = _copy(ping)

    async def get(
        self, ping_id: uuid.UUID, *, for_update: bool = False, tenant: str | None = None
    ) -> Ping | None:
        """Loads a ping (of ``tenant`` only, when given)."""
        ping = self._pings.get(ping_id)
        if ping is None or (tenant is not None and ping.tenant != tenant):
            return None
        return _copy(ping)

    async def save(self, ping: Ping) -> None:
        """Writes back a ping."""
        if ping.id in self._pings:
            self._pings[ping.id] = _copy(ping)

    async def log_effect(
        self, operation_id: uuid.UUID, attempt: int, worker: str, now: dt.datetime
    ) -> None:
        """Appends one row to the effect log (the exactly-once oracle)."""
        self._effects.append(
            {"operation_id": operation_id, "attempt": attempt, "worker": worker, "time": now}
        )

    async def purge(self, completed_before: dt.datetime, limit: int) -> int:
        """Deletes pings answered before ``completed_before`` and older effect rows."""
        gone = [
            p.id
            for p in self._pings.values()
            if p.complete_time is not None and p.complete_time < completed_before
        ][:limit]
        for ping_id in gone:
            del self._pings[ping_id]
        old = [e for e in self._effects if e["time"] < completed_before][:limit]
        for effect in old:
            self._effects.remove(effect)
        return max(len(gone), len(old))


def _visible(schedule: Schedule, tenant: str | None) -> bool:
    # A tenant sees its own schedules and the system ones; ``None`` (the beat) sees all.
    return tenant is None or schedule.tenant == tenant or schedule.system


class FakeScheduleRepository:
    """Schedules and the default-schedule seeds in memory."""

    def __init__(self, state: dict[str, Any]) -> None:
        """Binds the repository to a transaction's working copy.

        Args:
            state: The unit of work's copy of the tables.
        """
        self._schedules: dict[str, Schedule] = state["schedules"]
        self._runs: dict[tuple[str, dt.datetime], ScheduleRun] = state["schedule_runs"]
        self._seeds: dict[str, dt.datetime] = state["schedule_seeds"]

    async def add(self, schedule: Schedule) -> bool:
        """Inserts a schedule unless its tenant already used its request id."""
        if schedule.request_id is not None and any(
            s.tenant == schedule.tenant and s.request_id == schedule.request_id
            for s in self._schedules.values()
        ):
            return False
        self._schedules[schedule.id] = _copy(schedule)
        return True

    async def get_by_request_id(self, tenant: str, request_id: str) -> Schedule | None:
        """Loads the schedule a create with ``request_id`` made for ``tenant``."""
        for s in self._schedules.values():
            if s.tenant == tenant and s.request_id == request_id:
                return _copy(s)
        return None

    async def add_if_absent(self, schedule: Schedule) -> bool:
        """Inserts a schedule unless its id exists."""
        if schedule.id in self._schedules:
            return False
        self._schedules[schedule.id] = _copy(schedule)
        return True

    async def get(
        self, schedule_id: str, tenant: str | None, *, for_update: bool = False
    ) -> Schedule | None:
        """Loads a schedule visible to ``tenant`` (any, when ``None``)."""
        schedule = self._schedules.get(schedule_id)
        return _copy(schedule) if schedule is not None and _visible(schedule, tenant) else None

    async def list(
        self, tenant: str, *, after_id: str | None, limit: int
    ) -> builtins.list[Schedule]:
        """Lists the schedules ``tenant`` sees, by id."""
        found = sorted(
            (
                s
                for s in self._schedules.values()
                if _visible(s, tenant) and (after_id is None or s.id > after_id)
            ),
            key=lambda s: s.id,
        )
        return [_copy(s) for s in found[:limit]]

    async def save(self, schedule: Schedule) -> None:
        """Writes back a schedule (an UPDATE: nothing happens if it is gone)."""
        if schedule.id in self._schedules:
            self._schedules[schedule.id] = _copy(schedule)

    async def delete(self, schedule_id: str) -> None:
        """Deletes a schedule and its runs."""
        for key in [k for k in self._runs if k[0] == schedule_id]:
            del self._runs[key]
        self._schedules.pop(schedule_id, None)

    async def due(self, now: dt.datetime, limit: int) -> builtins.list[Schedule]:
        """Enabled schedules due at ``now``, earliest first (nothing to skip: one beat at a
        time in memory)."""
        due = sorted(
            (
                s
                for s in self._schedules.values()
                if s.enabled and s.next_run_time is not None and s.next_run_time <= now
            ),
            key=lambda s: s.next_run_time or now,
        )
        return [_copy(s) for s in due[:limit]]

    async def next_due(self) -> dt.datetime | None:
        """The earliest ``next_run_time`` of enabled schedules."""
        times = [
            s.next_run_time
            for s in self._schedules.values()
            if s.enabled and s.next_run_time is not None
        ]
        return min(times, default=None)

    async def set_last_operation(
        self, schedule_id: str, fire_time: dt.datetime, operation: str
    ) -> None:
        """Records the operation of a fire, unless a later slot already fired."""
        schedule = self._schedules.get(schedule_id)
        if schedule is not None and (
            schedule.last_run_time is None or schedule.last_run_time <= fire_time
        ):
            schedule.last_operation = operation

    async def seed_once(self, key: str, now: dt.datetime) -> bool:
        """Records that default ``key`` was created; False if it was before."""
        if key in self._seeds:
            return False
        self._seeds[key] = now
        return True


class FakeScheduleRunRepository:
    """Fired slots in memory, keyed by ``(schedule_id, fire_time)`` like the SQL primary key."""

    def __init__(self, state: dict[str, Any]) -> None:
        """Binds the repository to a transaction's working copy.

        Args:
            state: The unit of work's copy of the tables.
        """
        self._runs: dict[tuple[str, dt.datetime], ScheduleRun] = state["schedule_runs"]

    async def add(self, run: ScheduleRun) -> bool:
        """Records a fired slot unless it already is."""
        key = (run.schedule_id, run.fire_time)
        if key in self._runs:
            return False
        self._runs[key] = _copy(run)
        return True

    async def pending(self, limit: int) -> builtins.list[ScheduleRun]:
        """Runs whose workflow is not started yet, oldest first."""
        found = sorted(
            (r for r in self._runs.values() if r.state == RunState.PENDING),
            key=lambda r: r.create_time,
        )
        return [_copy(r) for r in found[:limit]]

    async def update(self, schedule_id: str, fire_time: dt.datetime, **values: Any) -> None:
        """Changes a run (an unknown column raises, as it would in SQL)."""
        key = (schedule_id, fire_time)
        if key in self._runs:
            self._runs[key] = dataclasses.replace(self._runs[key], **_copy(values))

    async def list(self, schedule_id: str, limit: int) -> builtins.list[ScheduleRun]:
        """A schedule's latest runs, newest first."""
        found = sorted(
            (r for r in self._runs.values() if r.schedule_id == schedule_id),
            key=lambda r: r.fire_time,
            reverse=True,
        )
        return [_copy(r) for r in found[:limit]]

    async def purge(self, older_than: dt.datetime, limit: int) -> int:
        """Deletes settled runs fired before ``older_than``."""
        gone = [
            key
            for key, r in self._runs.items()
            if r.fire_time < older_than and r.state != RunState.PENDING
        ][:limit]
        for key in gone:
            del self._runs[key]
        return len(gone)


class FakeBeatRepository:
    """The beat leader lease and the beat nodes in memory.

    Times come from the unit of work's clock, which stands for the database clock the SQL
    repository uses (tests move it forward to expire a lease without sleeping).
    """

    def __init__(self, state: dict[str, Any], clock: Callable[[], dt.datetime]) -> None:
        """Binds the repository to a transaction's working copy.

        Args:
            state: The unit of work's copy of the tables.
            clock: The "database" clock.
        """
        self._leases: dict[str, dict[str, Any]] = state["beat_leader"]
        self._nodes: dict[str, dict[str, Any]] = state["beat_nodes"]
        self._clock = clock

    async def acquire(self, name: str, holder: str, node: str, lease_seconds: float) -> bool:
        """Takes or renews the lease: succeeds if free, expired, or already ours."""
        now = self._clock()
        row = self._leases.get(name)
        held = row is None or row["holder"] == holder or row["expires_at"] < now
        if held:
            renewing = row is not None and row["holder"] == holder
            self._leases[name] = {
                "name": name,
                "holder": holder,
                "node": node,
                "acquired_at": row["acquired_at"] if renewing and row else now,
                "expires_at": now + dt.timedelta(seconds=lease_seconds),
            }
        seen = self._nodes.get(holder)
        if seen is None:
            self._nodes[holder] = {
                "holder": holder,
                "node": node,
                "leader": held,
                "started_at": now,
                "last_seen": now,
            }
        else:
            seen["leader"], seen["last_seen"] = held, now
        return held

    async def holds(self, name: str, holder: str) -> bool:
        """Whether ``holder`` holds an unexpired lease."""
        row = self._leases.get(name)
        return row is not None and row["holder"] == holder and row["expires_at"] > self._clock()

    async def release(self, name: str, holder: str) -> None:
        """Gives the lease up and forgets the node."""
        row = self._leases.get(name)
        if row is not None and row["holder"] == holder:
            del self._leases[name]
        self._nodes.pop(holder, None)

    async def lease(self, name: str) -> LeaderLease | None:
        """Reads the lease (possibly expired)."""
        row = self._leases.get(name)
        return LeaderLease(**row, now=self._clock()) if row is not None else None

    async def nodes(self, seen_within: float) -> builtins.list[BeatNode]:
        """Beat nodes seen within ``seen_within`` seconds, by name."""
        cutoff = self._clock() - dt.timedelta(seconds=seen_within)
        found = sorted(
            (n for n in self._nodes.values() if n["last_seen"] >= cutoff), key=lambda n: n["node"]
        )
        return [BeatNode(n["node"], n["holder"], n["last_seen"], n["leader"]) for n in found]

    async def forget_nodes(self, older_than_seconds: float) -> None:
        """Deletes nodes not seen for ``older_than_seconds``."""
        cutoff = self._clock() - dt.timedelta(seconds=older_than_seconds)
        for holder in [h for h, n in self._nodes.items() if n["last_seen"] < cutoff]:
            del self._nodes[holder]


class FakeApiKeyRepository:
    """API keys in memory; the prefix is unique, as the SQL unique index makes it."""

    def __init__(self, state: dict[str, Any]) -> None:
        """Binds the repository to a transaction's working copy.

        Args:
            state: The unit of work's copy of the tables.
        """
        self._keys: dict[str, ApiKey] = state["api_keys"]

    async def add(self, key: ApiKey) -> None:
        """Inserts a key.

        Raises:
            IntegrityError: If its prefix is taken (what the unique index raises in SQL, and
                what the service retries on).
        """
        if key.prefix in self._keys:
            raise IntegrityError("INSERT INTO api_keys", None, ValueError("uq_api_keys_prefix"))
        self._keys[key.prefix] = _copy(key)

    async def by_prefix(self, prefix: str) -> ApiKey | None:
        """Loads the key with ``prefix``."""
        key = self._keys.get(prefix)
        return _copy(key) if key is not None else None

    async def list(self, tenant: str | None) -> builtins.list[ApiKey]:
        """Lists keys (of ``tenant`` only, when given), oldest first (ids are UUIDv7)."""
        found = sorted(
            (k for k in self._keys.values() if tenant is None or k.tenant == tenant),
            key=lambda k: k.id,
        )
        return [_copy(k) for k in found]

    async def revoke(self, prefix: str, now: dt.datetime) -> bool:
        """Marks a key revoked (keeps the first revocation time)."""
        key = self._keys.get(prefix)
        if key is None:
            return False
        key.revoke_time = key.revoke_time or now
        return True


class FakePlatformUnitOfWork(FakeUnitOfWork):
    """A fake transaction on the platform schema."""

    pings: FakePingRepository
    schedules: FakeScheduleRepository
    schedule_runs: FakeScheduleRunRepository
    beat: FakeBeatRepository
    keys: FakeApiKeyRepository

    def __init__(
        self,
        db: FakeDatabase,
        *,
        max_attempts: int | None = None,
        clock: Callable[[], dt.datetime] = utcnow,
    ) -> None:
        """Creates the unit of work.

        Args:
            db: A database from :func:`platform_database`.
            max_attempts: Attempt cap of ping operations.
            clock: The "database" clock of the beat lease.
        """
        super().__init__(db, domain="platform", max_attempts=max_attempts)
        self._clock = clock

    def _bind(self, state: dict[str, Any]) -> None:
        super()._bind(state)
        self.pings = FakePingRepository(state)
        self.schedules = FakeScheduleRepository(state)
        self.schedule_runs = FakeScheduleRunRepository(state)
        self.beat = FakeBeatRepository(state, self._clock)
        self.keys = FakeApiKeyRepository(state)


_pings: type[PingRepository] = FakePingRepository
_schedules: type[ScheduleRepository] = FakeScheduleRepository
_runs: type[ScheduleRunRepository] = FakeScheduleRunRepository
_beat: type[BeatRepository] = FakeBeatRepository
_keys: type[ApiKeyRepository] = FakeApiKeyRepository
_uow: type[PlatformUoW] = FakePlatformUnitOfWork
