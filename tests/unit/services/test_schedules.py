"""Schedule rules on the in-memory fakes: create and update validation, the operator-only system
schedules, pause and resume, due slots fired exactly once through the service (with a fake
launcher), start retries, the beat leader lease, tenancy, built-in and default schedules.

The service's clock and the fake's "database" clock are one hand-moved clock, so a slot falls
due, or a lease lapses, by moving it instead of sleeping.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from domains.platform.schedules import service as schedule_service
from domains.platform.schedules.model import RunState
from domains.platform.schedules.service import (
    MAX_ARGS_BYTES,
    BuiltinSchedule,
    DefaultSchedule,
    SchedulePolicy,
    ScheduleService,
)
from domains.shared.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    TransientError,
)
from tests.fakes.operations import FakeDatabase
from tests.fakes.platform import FakePlatformUnitOfWork, platform_database

NOW = dt.datetime(2026, 3, 10, 12, 0, 30, tzinfo=dt.UTC)
SWEEP = BuiltinSchedule("system.sweep", "Sweep lost operations", "platform.sweep", 30)


class Clock:
    """The wall clock of the service and of the fake database, moved by hand."""

    def __init__(self, now: dt.datetime = NOW) -> None:
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += dt.timedelta(seconds=seconds)


class FakeLauncher:
    """Stands in for the workflow registry: records starts, fails on demand."""

    def __init__(self) -> None:
        self.starts: list[tuple[str, str, str]] = []
        self.fail_next: list[Exception] = []
        self.ops: dict[str, str] = {}

    def validate(self, workflow: str, args: Any) -> dict[str, Any]:
        if workflow != "platform.ping":
            raise InvalidArgument(f"workflow {workflow!r} does not exist", reason="NO_WORKFLOW")
        if set(args) - {"message", "steps"}:
            raise InvalidArgument("unknown argument", reason="BAD_ARGS")
        return dict(args)

    async def start(self, workflow, args, *, tenant, request_id, correlation_id) -> str:
        if self.fail_next:
            raise self.fail_next.pop(0)
        self.starts.append((tenant, workflow, request_id))
        # Idempotent per request id, like AIP-155 in the target domain.
        return self.ops.setdefault(request_id, f"operations/platform.op{len(self.ops)}")

    def task_queue(self, task: str) -> str | None:
        return None if task.startswith("missing.") else task.split(".")[0]


@pytest.fixture
def clock(monkeypatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(schedule_service, "utcnow", clock)
    return clock


@pytest.fixture
def db() -> FakeDatabase:
    return platform_database()


@pytest.fixture
def launcher() -> FakeLauncher:
    return FakeLauncher()


@pytest.fixture
def svc(db, clock, launcher) -> ScheduleService:
    return make(db, clock, launcher)


def make(
    db: FakeDatabase,
    clock: Clock,
    launcher: FakeLauncher,
    *,
    builtin: tuple[BuiltinSchedule, ...] = (),
    defaults: tuple[DefaultSchedule, ...] = (),
) -> ScheduleService:
    return ScheduleService(
        lambda: FakePlatformUnitOfWork(db, clock=clock),
        launcher,
        policy=SchedulePolicy(min_interval_seconds=10, max_catch_up=5, start_attempts=3),
        builtin=builtin,
        defaults=defaults,
    )


def stored(db: FakeDatabase, schedule_id: str) -> Any:
    return db.state["schedules"][schedule_id]


def runs(db: FakeDatabase, schedule_id: str) -> list[Any]:
    found = [r for r in db.state["schedule_runs"].values() if r.schedule_id == schedule_id]
    return sorted(found, key=lambda r: r.fire_time)


async def ping_every(svc: ScheduleService, seconds: float, **kw: Any) -> Any:
    return await svc.create_schedule("t1", workflow="platform.ping", interval_seconds=seconds, **kw)


# ------------------------------------------------------------------ create and update


async def test_create_computes_the_first_slot(svc, db, clock):
    every = await ping_every(svc, 60, args={"message": "hi"}, display_name="hourly-ish")
    paris = await svc.create_schedule(
        "t1", workflow="platform.ping", cron="0  6 * * *", time_zone="Europe/Paris"
    )
    paused = await ping_every(svc, 60, enabled=False)

    assert stored(db, every.id).next_run_time == NOW + dt.timedelta(seconds=60)
    assert stored(db, every.id).args == {"message": "hi"}
    # 06:00 in Paris is 05:00 UTC in winter (CET).
    assert stored(db, paris.id).cron == "0 6 * * *"
    assert stored(db, paris.id).next_run_time == dt.datetime(2026, 3, 11, 5, 0, tzinfo=dt.UTC)
    assert stored(db, paused.id).next_run_time is None


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({}, "INVALID_TIMING"),
        ({"cron": "* * * * *", "interval_seconds": 60}, "INVALID_TIMING"),
        ({"cron": "* * * *"}, "INVALID_CRON"),
        ({"cron": "61 * * * *"}, "INVALID_CRON"),
        ({"interval_seconds": 9.9}, "INVALID_INTERVAL"),
        ({"interval_seconds": float("inf")}, "INVALID_INTERVAL"),
        ({"interval_seconds": 367 * 86400.0}, "INVALID_INTERVAL"),
        ({"interval_seconds": 60, "time_zone": "Mars/Olympus"}, "INVALID_TIME_ZONE"),
        ({"interval_seconds": 60, "display_name": "x" * 201}, "INVALID_DISPLAY_NAME"),
        ({"interval_seconds": 60, "args": {"message": "x" * MAX_ARGS_BYTES}}, "INVALID_ARGS"),
        ({"interval_seconds": 60, "args": {"nope": 1}}, "BAD_ARGS"),
        ({"interval_seconds": 60, "workflow": "no.such"}, "NO_WORKFLOW"),
    ],
)
async def test_create_refuses_invalid_input_and_stores_nothing(svc, db, kwargs, reason):
    kwargs = {"workflow": "platform.ping", **kwargs}
    with pytest.raises(InvalidArgument) as info:
        await svc.create_schedule("t1", **kwargs)
    assert info.value.reason == reason
    assert db.state["schedules"] == {} and db.commits == 0


async def test_create_is_idempotent_per_request_id(svc, db):
    first = await ping_every(svc, 60, request_id="r-1")
    again = await ping_every(svc, 60, request_id="r-1")
    other_tenant = await svc.create_schedule(
        "t2", workflow="platform.ping", interval_seconds=60, request_id="r-1"
    )

    assert again.id == first.id and other_tenant.id != first.id
    assert len(db.state["schedules"]) == 2
    with pytest.raises(AlreadyExists):
        await ping_every(svc, 120, request_id="r-1")


async def test_update_changes_only_the_given_fields_and_retimes_from_now(svc, db, clock):
    s = await ping_every(svc, 60, display_name="a", args={"message": "x"})
    clock.advance(15)

    await svc.update_schedule("t1", s.id, {"display_name": "b"})
    assert stored(db, s.id).next_run_time == NOW + dt.timedelta(seconds=60)  # timing untouched
    assert (stored(db, s.id).display_name, stored(db, s.id).args) == ("b", {"message": "x"})

    changed = await svc.update_schedule("t1", s.id, {"cron": "*/5 * * * *"})
    assert (changed.cron, changed.interval_seconds) == ("*/5 * * * *", None)
    assert changed.next_run_time == dt.datetime(2026, 3, 10, 12, 5, tzinfo=dt.UTC)
    assert stored(db, s.id).update_time == clock.now

    back = await svc.update_schedule("t1", s.id, {"interval_seconds": 30})
    assert (back.cron, back.interval_seconds) == (None, 30.0)
    assert back.next_run_time == clock.now + dt.timedelta(seconds=30)


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"tenant": "t2"}, "INVALID_UPDATE"),
        ({"next_run_time": None}, "INVALID_UPDATE"),
        ({"interval_seconds": 1}, "INVALID_INTERVAL"),
        ({"cron": "nope"}, "INVALID_CRON"),
        ({"cron": "* * * * *", "interval_seconds": 60}, "INVALID_TIMING"),
        ({"time_zone": "Nowhere/City"}, "INVALID_TIME_ZONE"),
        ({"display_name": "x" * 201}, "INVALID_DISPLAY_NAME"),
        ({"args": {"nope": 1}}, "BAD_ARGS"),
        ({"workflow": "no.such"}, "NO_WORKFLOW"),
    ],
)
async def test_an_invalid_update_changes_nothing(svc, db, changes, reason):
    s = await ping_every(svc, 60, display_name="keep")
    before = stored(db, s.id)

    with pytest.raises(InvalidArgument) as info:
        await svc.update_schedule("t1", s.id, changes)

    assert info.value.reason == reason
    assert stored(db, s.id) == before


async def test_pause_stops_firing_and_resume_restarts_from_now(svc, db, clock, launcher):
    s = await ping_every(svc, 60)
    await svc.acquire_leadership("a", "beat-a", 600)

    paused = await svc.update_schedule("t1", s.id, {"enabled": False})
    assert paused.next_run_time is None
    clock.advance(300)
    assert (await svc.fire_due("a")).fired == 0 and launcher.starts == []

    resumed = await svc.update_schedule("t1", s.id, {"enabled": True})
    assert resumed.next_run_time == clock.now + dt.timedelta(seconds=60)  # missed slots dropped
    clock.advance(60)
    assert (await svc.fire_due("a")).fired == 1
    [run] = runs(db, s.id)
    assert run.fire_time == resumed.next_run_time


async def test_a_paused_schedule_that_was_due_does_not_fire(svc, db, clock):
    s = await ping_every(svc, 60)
    await svc.acquire_leadership("a", "beat-a", 600)
    clock.advance(120)  # due now, but paused before the beat's pass
    await svc.update_schedule("t1", s.id, {"enabled": False})
    assert (await svc.fire_due("a")).fired == 0
    assert runs(db, s.id) == []


# ------------------------------------------------------------------ system schedules


async def test_system_schedules_are_operator_only(db, clock, launcher):
    svc = make(db, clock, launcher, builtin=(SWEEP,))

    for call in (
        svc.update_schedule("t1", "system.sweep", {"interval_seconds": 60}),
        svc.delete_schedule("t1", "system.sweep"),
        svc.run_schedule("t1", "system.sweep"),
    ):
        with pytest.raises(PermissionDenied) as info:
            await call
        assert info.value.reason == "OPERATOR_ONLY"
    assert stored(db, "system.sweep").interval_seconds == 30
    assert db.state["schedule_runs"] == {}

    changed = await svc.update_schedule(
        "t1", "system.sweep", {"interval_seconds": 0.5}, operator=True
    )
    assert changed.interval_seconds == 0.5  # below the user minimum: allowed for the platform
    with pytest.raises(FailedPrecondition) as other_field:
        await svc.update_schedule("t1", "system.sweep", {"enabled": False}, operator=True)
    assert other_field.value.reason == "SYSTEM_SCHEDULE"
    with pytest.raises(FailedPrecondition):
        await svc.delete_schedule("t1", "system.sweep", operator=True)
    assert "system.sweep" in db.state["schedules"]


async def test_an_operator_run_of_a_system_schedule_sends_its_task_through_the_outbox(
    db, clock, launcher
):
    svc = make(db, clock, launcher, builtin=(SWEEP,))

    run = await svc.run_schedule("t1", "system.sweep", operator=True)

    assert run.state == RunState.STARTED and run.manual and run.fired_by == "api"
    [message] = db.published
    assert (message.task_name, message.queue, message.task_id) == (
        "platform.sweep",
        "platform",
        run.request_id,
    )
    assert launcher.starts == []  # a task, not a workflow
    assert stored(db, "system.sweep").next_run_time == NOW + dt.timedelta(seconds=30)


async def test_a_system_schedule_of_an_uninstalled_task_records_a_failed_run(svc, db, clock):
    await svc.ensure_builtin([BuiltinSchedule("system.m", "m", "missing.task", 1)])
    await svc.acquire_leadership("a", "beat-a", 600)
    clock.advance(1)

    report = await svc.fire_due("a")

    [run] = runs(db, "system.m")
    assert report.fired == 1
    assert run.state == RunState.FAILED and "not installed" in (run.error or "")
    assert db.published == []


# ------------------------------------------------------------------ firing


async def test_a_slot_fires_exactly_once(svc, db, clock, launcher):
    s = await ping_every(svc, 60, args={"message": "tick"})
    await svc.acquire_leadership("a", "beat-a", 600)

    assert (await svc.fire_due("a")).fired == 0  # not due yet
    clock.advance(60)
    report = await svc.fire_due("a")
    again = await svc.fire_due("a")
    clock.advance(30)
    later = await svc.fire_due("a")

    assert (report.fired, report.started, again.fired, later.fired) == (1, 1, 0, 0)
    slot = NOW + dt.timedelta(seconds=60)
    assert launcher.starts == [("t1", "platform.ping", f"schedule:{s.id}:{slot.isoformat()}")]
    [run] = runs(db, s.id)
    assert (run.fire_time, run.state, run.fired_by, run.args) == (
        slot,
        RunState.STARTED,
        "a",
        {"message": "tick"},
    )
    schedule = stored(db, s.id)
    assert schedule.last_run_time == slot
    assert schedule.next_run_time == slot + dt.timedelta(seconds=60)
    assert schedule.last_operation == run.operation == "operations/platform.op0"
    assert report.next_due == schedule.next_run_time


async def test_missed_slots_fire_once_and_catch_up_fires_each_bounded(svc, db, clock):
    once = await ping_every(svc, 10)
    each = await ping_every(svc, 10, catch_up=True)
    await svc.acquire_leadership("a", "beat-a", 600)
    clock.advance(45)  # slots at +10, +20, +30, +40 were missed

    report = await svc.fire_due("a")

    assert report.fired == 1 + 4
    assert [r.fire_time for r in runs(db, once.id)] == [NOW + dt.timedelta(seconds=40)]
    assert [r.fire_time for r in runs(db, each.id)] == [
        NOW + dt.timedelta(seconds=s) for s in (10, 20, 30, 40)
    ]
    assert stored(db, each.id).next_run_time == NOW + dt.timedelta(seconds=50)

    clock.advance(100)  # ten more missed slots: catch_up fires only the latest max_catch_up (5)
    await svc.fire_due("a")
    assert [r.fire_time for r in runs(db, each.id)][4:] == [
        NOW + dt.timedelta(seconds=s) for s in (100, 110, 120, 130, 140)
    ]


async def test_a_cron_schedule_fires_at_its_local_time_across_daylight_saving(db, launcher):
    clock = Clock(dt.datetime(2026, 3, 28, 12, 0, tzinfo=dt.UTC))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(schedule_service, "utcnow", clock)
        svc = make(db, clock, launcher)
        s = await svc.create_schedule(
            "t1", workflow="platform.ping", cron="0 6 * * *", time_zone="Europe/Paris"
        )
        await svc.acquire_leadership("a", "beat-a", 10 * 86400)
        # Paris moves to summer time on 29 March: 06:00 local is then 04:00 UTC.
        assert stored(db, s.id).next_run_time == dt.datetime(2026, 3, 29, 4, 0, tzinfo=dt.UTC)
        clock.now = dt.datetime(2026, 3, 29, 4, 0, 1, tzinfo=dt.UTC)
        assert (await svc.fire_due("a")).fired == 1
        assert stored(db, s.id).next_run_time == dt.datetime(2026, 3, 30, 4, 0, tzinfo=dt.UTC)


async def test_a_stale_leader_cannot_record_a_slot_twice(svc, db, clock, launcher):
    s = await ping_every(svc, 60)
    await svc.acquire_leadership("a", "beat-a", 600)
    clock.advance(60)
    before = await svc.get_schedule("t1", s.id)

    first = await svc.fire_due("a")
    async with svc._uow() as uow:
        again = await svc._record(uow, before, before.next_run_time, fired_by="stale")
        await uow.commit()

    assert first.fired == 1 and again is None
    assert len(runs(db, s.id)) == 1 and len(launcher.starts) == 1


async def test_a_failed_start_is_retried_with_the_same_request_id(svc, db, clock, launcher):
    s = await ping_every(svc, 60)
    await svc.acquire_leadership("a", "beat-a", 600)
    clock.advance(60)
    launcher.fail_next.append(ConnectionError("imports database down"))

    report = await svc.fire_due("a")

    assert (report.fired, report.started, report.failed) == (1, 0, 0)
    [pending] = runs(db, s.id)
    assert pending.state == RunState.PENDING and pending.attempts == 1
    assert "database down" in (pending.error or "")
    assert await svc.start_pending() == (1, 0)
    [started] = runs(db, s.id)
    assert (started.state, started.attempts, started.error) == (RunState.STARTED, 1, None)
    assert launcher.starts == [("t1", "platform.ping", pending.request_id)]
    assert await svc.start_pending() == (0, 0)


async def test_a_permanent_start_error_fails_the_run_at_once(svc, db, clock, launcher):
    s = await ping_every(svc, 60)
    await svc.acquire_leadership("a", "beat-a", 600)
    clock.advance(60)
    launcher.fail_next.append(InvalidArgument("args.steps: no longer valid"))

    assert (await svc.fire_due("a")).failed == 1
    [run] = runs(db, s.id)
    assert run.state == RunState.FAILED and "no longer valid" in (run.error or "")
    assert await svc.start_pending() == (0, 0)


async def test_transient_start_errors_fail_the_run_after_start_attempts(svc, db, clock, launcher):
    s = await ping_every(svc, 60)
    await svc.acquire_leadership("a", "beat-a", 600)
    clock.advance(60)
    launcher.fail_next.extend(TransientError("busy") for _ in range(3))

    await svc.fire_due("a")
    assert runs(db, s.id)[0].state == RunState.PENDING
    assert await svc.start_pending() == (0, 0)
    assert await svc.start_pending() == (0, 1)  # third failure = start_attempts
    [run] = runs(db, s.id)
    assert (run.state, run.attempts) == (RunState.FAILED, 3)
    assert launcher.starts == []


async def test_run_fires_now_without_moving_the_next_slot(svc, db, clock, launcher):
    s = await ping_every(svc, 60)
    clock.advance(5)

    run = await svc.run_schedule("t1", s.id)

    assert (run.state, run.manual, run.fire_time) == (RunState.STARTED, True, clock.now)
    assert run.operation == "operations/platform.op0"
    schedule = stored(db, s.id)
    assert schedule.next_run_time == NOW + dt.timedelta(seconds=60)
    assert schedule.last_run_time == clock.now and schedule.last_operation == run.operation
    assert [r.fire_time for r in await svc.list_runs("t1", s.id, limit=10)] == [clock.now]


async def test_list_runs_is_newest_first_and_purge_keeps_pending_runs(svc, db, clock, launcher):
    s = await ping_every(svc, 10)
    await svc.acquire_leadership("a", "beat-a", 600)
    for _ in range(3):
        clock.advance(10)
        await svc.fire_due("a")
    clock.advance(10)
    launcher.fail_next.append(ConnectionError("down"))
    await svc.fire_due("a")  # the fourth run stays PENDING

    listed = await svc.list_runs("t1", s.id, limit=10)
    assert [r.fire_time for r in listed] == [
        NOW + dt.timedelta(seconds=k) for k in (40, 30, 20, 10)
    ]
    assert len(await svc.list_runs("t1", s.id, limit=2)) == 2

    assert await svc.purge_runs(clock.now + dt.timedelta(seconds=1)) == 3
    [left] = runs(db, s.id)
    assert left.state == RunState.PENDING


# ------------------------------------------------------------------ the leader lease


async def test_only_the_lease_holder_fires(svc, db, clock):
    s = await ping_every(svc, 60)
    clock.advance(60)

    assert (await svc.fire_due("a")).leader is False  # nobody holds it yet
    assert await svc.acquire_leadership("a", "beat-a", 30)
    assert not await svc.acquire_leadership("b", "beat-b", 30)
    assert (await svc.fire_due("b")).leader is False
    assert runs(db, s.id) == []
    assert (await svc.fire_due("a")).fired == 1


async def test_the_leader_renews_and_another_beat_takes_over_once_the_lease_lapses(svc, clock):
    assert await svc.acquire_leadership("a", "beat-a", 30)
    first, _ = await svc.leader_status(60)
    assert first is not None and first.acquired_at == NOW

    clock.advance(20)
    assert await svc.acquire_leadership("a", "beat-a", 30)  # renewal
    renewed, nodes = await svc.leader_status(60)
    assert renewed is not None and renewed.valid
    assert renewed.acquired_at == NOW and renewed.expires_at == clock.now + dt.timedelta(seconds=30)
    assert {(n.node, n.leader) for n in nodes} == {("beat-a", True)}

    clock.advance(29)  # still within the renewed lease
    assert not await svc.acquire_leadership("b", "beat-b", 30)
    _, nodes = await svc.leader_status(60)
    assert {(n.node, n.leader) for n in nodes} == {("beat-a", True), ("beat-b", False)}

    clock.advance(2)  # "a" stopped renewing (killed): its lease has lapsed
    lapsed, _ = await svc.leader_status(60)
    assert lapsed is not None and not lapsed.valid
    assert (await svc.fire_due("a")).leader is False  # the fence
    assert await svc.acquire_leadership("b", "beat-b", 30)
    taken, _ = await svc.leader_status(60)
    assert taken is not None and (taken.holder, taken.node, taken.acquired_at) == (
        "b",
        "beat-b",
        clock.now,
    )
    assert not await svc.acquire_leadership("a", "beat-a", 30)


async def test_release_frees_the_lease_at_once(svc, clock):
    assert await svc.acquire_leadership("a", "beat-a", 30)
    await svc.release_leadership("b")  # not the holder: nothing happens
    assert (await svc.leader_status(60))[0] is not None

    await svc.release_leadership("a")

    lease, nodes = await svc.leader_status(60)
    assert lease is None and nodes == []
    assert await svc.acquire_leadership("b", "beat-b", 30)


async def test_beats_not_seen_for_a_while_are_forgotten(svc, clock):
    await svc.acquire_leadership("a", "beat-a", 5)
    clock.advance(30)
    await svc.acquire_leadership("b", "beat-b", 5)
    assert [n.node for n in (await svc.leader_status(10))[1]] == ["beat-b"]  # "a" is stale
    assert [n.node for n in (await svc.leader_status(60))[1]] == ["beat-a", "beat-b"]

    clock.advance(61)  # forgotten after max(60, 10 x lease) seconds without a heartbeat
    await svc.acquire_leadership("b", "beat-b", 5)
    assert [n.node for n in (await svc.leader_status(3600))[1]] == ["beat-b"]


# ------------------------------------------------------------------ tenancy, built-ins, defaults


async def test_schedules_are_tenant_isolated_and_system_ones_shared(db, clock, launcher):
    svc = make(db, clock, launcher, builtin=(SWEEP,))
    mine = await ping_every(svc, 60)

    for call in (
        svc.get_schedule("t2", mine.id),
        svc.update_schedule("t2", mine.id, {"display_name": "x"}),
        svc.delete_schedule("t2", mine.id),
        svc.run_schedule("t2", mine.id),
        svc.list_runs("t2", mine.id, limit=5),
    ):
        with pytest.raises(NotFound) as info:
            await call
        assert info.value.reason == "SCHEDULE_NOT_FOUND"
    assert [s.id for s in (await svc.list_schedules("t2", page_size=50)).schedules] == [
        "system.sweep"
    ]
    t1 = [s.id for s in (await svc.list_schedules("t1", page_size=50)).schedules]
    assert set(t1) == {mine.id, "system.sweep"}
    assert stored(db, mine.id).display_name == ""


async def test_list_pages_by_id(svc):
    ids = sorted([(await ping_every(svc, 60)).id for _ in range(3)])

    first = await svc.list_schedules("t1", page_size=2)
    rest = await svc.list_schedules("t1", page_size=2, after_id=first.last_id)

    assert [s.id for s in first.schedules] == ids[:2] and first.last_id == ids[1]
    assert [s.id for s in rest.schedules] == ids[2:] and rest.last_id is None


async def test_delete_removes_the_schedule_and_its_runs(svc, db):
    s = await ping_every(svc, 60)
    await svc.run_schedule("t1", s.id)

    await svc.delete_schedule("t1", s.id)

    assert s.id not in db.state["schedules"] and runs(db, s.id) == []
    with pytest.raises(NotFound):
        await svc.get_schedule("t1", s.id)


async def test_builtin_schedules_appear_on_first_use_and_keep_their_edits(db, clock, launcher):
    svc = make(db, clock, launcher, builtin=(SWEEP,))
    [listed] = (await svc.list_schedules("t1", page_size=10)).schedules
    assert (listed.id, listed.system, listed.task, listed.tenant) == (
        "system.sweep",
        True,
        "platform.sweep",
        "system",
    )
    await svc.update_schedule("t1", "system.sweep", {"interval_seconds": 90}, operator=True)

    # Another process starting up (or the beat) ensures them again: the edit stays.
    assert await make(db, clock, launcher).ensure_builtin([SWEEP]) == 0
    assert stored(db, "system.sweep").interval_seconds == 90


async def test_a_default_schedule_is_created_once_and_stays_deleted(svc, db):
    digest = DefaultSchedule(
        id="daily-digest",
        tenant="default",
        display_name="Daily digest",
        workflow="platform.ping",
        args={"message": "digest"},
        cron="0 6 * * *",
    )
    assert await svc.ensure_builtin([], [digest]) == 1
    assert await svc.ensure_builtin([], [digest]) == 0
    schedule = await svc.get_schedule("default", "daily-digest")
    assert schedule.cron == "0 6 * * *" and not schedule.system
    assert schedule.next_run_time == dt.datetime(2026, 3, 11, 6, 0, tzinfo=dt.UTC)

    await svc.delete_schedule("default", "daily-digest")

    assert await svc.ensure_builtin([], [digest]) == 0
    with pytest.raises(NotFound):
        await svc.get_schedule("default", "daily-digest")


async def test_a_default_that_no_longer_fits_its_workflow_is_skipped(svc, db):
    broken = DefaultSchedule("old", "default", "Old", "platform.ping", {"gone": 1}, "0 6 * * *")
    assert await svc.ensure_builtin([], [broken]) == 0
    assert db.state["schedules"] == {} and db.state["schedule_seeds"] == {}
