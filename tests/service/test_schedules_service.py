"""Service level, real PostgreSQL: the leader lease, firing due slots once, missed runs, retries
of runs whose start failed, tenant isolation and the default schedules."""

from __future__ import annotations

import datetime as dt
import itertools
from typing import Any

import pytest
import sqlalchemy as sa

from app.db import EngineRegistry
from domains.platform import tables
from domains.platform.schedules.model import RunState
from domains.platform.schedules.service import (
    BuiltinSchedule,
    DefaultSchedule,
    SchedulePolicy,
    ScheduleService,
)
from domains.platform.unit_of_work import PlatformUnitOfWork
from domains.shared.clock import utcnow
from domains.shared.errors import InvalidArgument, NotFound


class FakeLauncher:
    """Stands in for the workflow registry: records starts, fails on demand."""

    def __init__(self) -> None:
        self.starts: list[tuple[str, str]] = []
        self.fail_next: list[Exception] = []
        self.ops: dict[str, str] = {}

    def validate(self, workflow: str, args: Any) -> dict[str, Any]:
        if workflow != "platform.ping":
            raise InvalidArgument(f"workflow {workflow!r} does not exist")
        return dict(args)

    async def start(self, workflow, args, *, tenant, request_id, correlation_id) -> str:
        if self.fail_next:
            raise self.fail_next.pop(0)
        self.starts.append((tenant, request_id))
        # Idempotent per request id, like AIP-155 in the target domain.
        return self.ops.setdefault(request_id, f"operations/platform.op{len(self.ops)}")

    def task_queue(self, task: str) -> str | None:
        return None if task.startswith("missing.") else task.split(".")[0]


@pytest.fixture
async def registry(settings):
    reg = EngineRegistry(settings)
    yield reg
    await reg.dispose()


@pytest.fixture
def launcher() -> FakeLauncher:
    return FakeLauncher()


@pytest.fixture
def service(registry, launcher, clean_db) -> ScheduleService:
    def uow() -> PlatformUnitOfWork:
        return PlatformUnitOfWork(tables.tables, registry.sessionmaker("platform", "primary"))

    return ScheduleService(
        uow,
        launcher,
        policy=SchedulePolicy(min_interval_seconds=0.1, max_catch_up=5, start_attempts=3),
    )


async def backdate(registry, schedule_id: str, seconds: float) -> None:
    async with registry.sessionmaker("platform", "primary")() as session, session.begin():
        await session.execute(
            sa.update(tables.schedules)
            .where(tables.schedules.c.id == schedule_id)
            .values(next_run_time=utcnow() - dt.timedelta(seconds=seconds))
        )


async def runs(registry, schedule_id: str) -> list[Any]:
    async with registry.sessionmaker("platform", "primary")() as session:
        t = tables.schedule_runs
        result = await session.execute(
            sa.select(t).where(t.c.schedule_id == schedule_id).order_by(t.c.fire_time)
        )
        return list(result.mappings().all())


async def test_only_the_lease_holder_fires_and_takes_over_after_expiry(service, registry):
    assert await service.acquire_leadership("a", "beat-a", 1.0)
    assert not await service.acquire_leadership("b", "beat-b", 1.0)
    assert (await service.fire_due("b")).leader is False
    assert (await service.fire_due("a")).leader is True
    assert await service.acquire_leadership("a", "beat-a", 1.0)  # renewal
    lease, nodes = await service.leader_status(60)
    assert lease is not None and lease.holder == "a" and lease.valid
    assert {(n.node, n.leader) for n in nodes} == {("beat-a", True), ("beat-b", False)}
    # "a" stops renewing (killed): "b" takes over once the lease lapses.
    import asyncio

    await asyncio.sleep(1.2)
    assert await service.acquire_leadership("b", "beat-b", 1.0)
    assert (await service.fire_due("a")).leader is False
    await service.release_leadership("b")
    lease, _ = await service.leader_status(60)
    assert lease is None
    assert await service.acquire_leadership("a", "beat-a", 1.0)


async def test_missed_slots_fire_once_and_catch_up_fires_each(service, registry, launcher):
    once = await service.create_schedule("t1", workflow="platform.ping", interval_seconds=10)
    each = await service.create_schedule(
        "t1", workflow="platform.ping", interval_seconds=10, catch_up=True
    )
    await backdate(registry, once.id, 35)
    await backdate(registry, each.id, 35)
    await service.acquire_leadership("a", "beat-a", 30)
    report = await service.fire_due("a")
    assert report.fired == 1 + 4
    assert report.started == 5
    assert len(await runs(registry, once.id)) == 1
    fired = await runs(registry, each.id)
    assert len(fired) == 4
    gaps = {(b["fire_time"] - a["fire_time"]).total_seconds() for a, b in itertools.pairwise(fired)}
    assert gaps == {10.0}
    schedule = await service.get_schedule("t1", once.id)
    assert schedule.next_run_time > utcnow()
    assert schedule.last_operation is not None
    assert schedule.last_run_time == (await runs(registry, once.id))[-1]["fire_time"]
    # Nothing more is due: a second pass fires nothing.
    assert (await service.fire_due("a")).fired == 0


async def test_a_slot_fires_once_even_when_two_leaders_race(service, registry, launcher):
    s = await service.create_schedule("t1", workflow="platform.ping", interval_seconds=5)
    await backdate(registry, s.id, 1)
    await service.acquire_leadership("a", "beat-a", 30)
    before = await service.get_schedule("t1", s.id)
    first = await service.fire_due("a")
    # A stale leader that read the schedule before the first pass records the same slot again:
    # the unique key (schedule_id, fire_time) refuses it.
    async with service._uow() as uow:
        again = await service._record(uow, before, before.next_run_time, fired_by="stale")
        await uow.commit()
    assert first.fired == 1 and again is None
    assert len(await runs(registry, s.id)) == 1
    assert len(launcher.starts) == 1


async def test_a_run_whose_start_failed_is_retried_with_the_same_request_id(
    service, registry, launcher
):
    s = await service.create_schedule("t1", workflow="platform.ping", interval_seconds=5)
    await backdate(registry, s.id, 1)
    await service.acquire_leadership("a", "beat-a", 30)
    launcher.fail_next.append(ConnectionError("imports database down"))
    report = await service.fire_due("a")
    assert report.fired == 1 and report.started == 0
    [pending] = await runs(registry, s.id)
    assert pending["state"] == RunState.PENDING and "database down" in pending["error"]
    assert await service.start_pending() == (1, 0)
    [started] = await runs(registry, s.id)
    assert started["state"] == RunState.STARTED and started["attempts"] == 1
    assert launcher.starts[-1][1] == f"schedule:{s.id}:{pending['fire_time'].isoformat()}"


async def test_a_permanent_start_error_fails_the_run(service, registry, launcher):
    s = await service.create_schedule("t1", workflow="platform.ping", interval_seconds=5)
    await backdate(registry, s.id, 1)
    await service.acquire_leadership("a", "beat-a", 30)
    launcher.fail_next.append(InvalidArgument("args.steps: no longer valid"))
    report = await service.fire_due("a")
    assert report.failed == 1
    [failed] = await runs(registry, s.id)
    assert failed["state"] == RunState.FAILED and "no longer valid" in failed["error"]


async def test_schedules_are_tenant_isolated_and_system_ones_shared(service):
    mine = await service.create_schedule("t1", workflow="platform.ping", interval_seconds=5)
    await service.ensure_builtin(
        [BuiltinSchedule("system.x", "x", "platform.sweep", 30)],
    )
    with pytest.raises(NotFound):
        await service.get_schedule("t2", mine.id)
    with pytest.raises(NotFound):
        await service.delete_schedule("t2", mine.id)
    with pytest.raises(NotFound):
        await service.run_schedule("t2", mine.id)
    t2 = [s.id for s in (await service.list_schedules("t2", page_size=50)).schedules]
    assert t2 == ["system.x"]
    t1 = [s.id for s in (await service.list_schedules("t1", page_size=50)).schedules]
    assert set(t1) == {mine.id, "system.x"}


async def test_system_schedule_of_an_uninstalled_task_records_a_failed_run(service, registry):
    await service.ensure_builtin([BuiltinSchedule("system.m", "m", "missing.task", 1)])
    await backdate(registry, "system.m", 1)
    await service.acquire_leadership("a", "beat-a", 30)
    await service.fire_due("a")
    [run] = await runs(registry, "system.m")
    assert run["state"] == RunState.FAILED and "not installed" in run["error"]


async def test_default_schedule_is_created_once_and_stays_deleted(service):
    digest = DefaultSchedule(
        id="daily-digest",
        tenant="default",
        display_name="Daily digest",
        workflow="platform.ping",
        args={"message": "digest"},
        cron="0 6 * * *",
    )
    assert await service.ensure_builtin([], [digest]) == 1
    assert await service.ensure_builtin([], [digest]) == 0
    schedule = await service.get_schedule("default", "daily-digest")
    assert schedule.cron == "0 6 * * *" and not schedule.system
    assert schedule.next_run_time is not None
    assert (schedule.next_run_time.hour, schedule.next_run_time.minute) == (6, 0)
    await service.delete_schedule("default", "daily-digest")
    assert await service.ensure_builtin([], [digest]) == 0
    with pytest.raises(NotFound):
        await service.get_schedule("default", "daily-digest")
