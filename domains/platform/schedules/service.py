"""Schedules use cases: CRUD and ``:run`` (called by the API), firing due slots and the leader
lease (called by the beat), built-in schedules.

Firing a slot happens in two steps, because the platform schema and the target workflow's
schema may be different databases (two transactions cannot be atomic):

1. in one platform transaction, the slot is recorded in ``schedule_runs`` (primary key
   ``(schedule_id, fire_time)``: a slot another beat already fired is skipped) and the
   schedule's ``next_run_time`` moves on. A system task's message is written to the platform
   outbox in that same transaction;
2. the workflow is started with the AIP-155 request id ``schedule:{id}:{fire time}``, so a
   retry after a crash between the two steps returns the same operation instead of a second
   one. Runs still PENDING are retried on every beat tick.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from domains.platform.schedules.model import (
    SYSTEM_TENANT,
    BeatNode,
    LeaderLease,
    RunState,
    Schedule,
    ScheduleRun,
    parse_time_zone,
    validate_timing,
)
from domains.platform.unit_of_work import PlatformUoW
from domains.shared import idempotency
from domains.shared.clock import utcnow
from domains.shared.errors import (
    DomainError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    TransientError,
)
from domains.shared.ids import new_id
from domains.shared.outbox import OutboxMessage

log = logging.getLogger(__name__)

MAX_DISPLAY_NAME = 200
MAX_ARGS_BYTES = 16_384
UPDATABLE = frozenset(
    {
        "display_name",
        "workflow",
        "args",
        "cron",
        "interval_seconds",
        "time_zone",
        "enabled",
        "catch_up",
    }
)
"""Fields a PATCH may change."""
SYSTEM_UPDATABLE = frozenset({"interval_seconds"})
"""Fields a PATCH may change on a system schedule."""


class Launcher(Protocol):
    """Starts what schedules name; implemented by the composition root (workflows registry)."""

    def validate(self, workflow: str, args: Mapping[str, Any]) -> dict[str, Any]:
        """Checks ``args`` against the workflow's input model.

        Args:
            workflow: Workflow name.
            args: Arguments.

        Returns:
            The arguments to store (JSON).

        Raises:
            InvalidArgument: Unknown workflow or bad arguments, saying why.
        """
        ...

    async def start(
        self,
        workflow: str,
        args: Mapping[str, Any],
        *,
        tenant: str,
        request_id: str,
        correlation_id: str | None,
    ) -> str:
        """Starts the workflow (idempotent per ``request_id``).

        Args:
            workflow: Workflow name.
            args: Arguments.
            tenant: Tenant the operation belongs to.
            request_id: AIP-155 request id.
            correlation_id: Id for logs.

        Returns:
            The operation name.
        """
        ...

    def task_queue(self, task: str) -> str | None:
        """Returns the queue of a system task, or ``None`` if this build has no such task.

        Args:
            task: Celery task name.

        Returns:
            The queue.
        """
        ...


@dataclasses.dataclass(frozen=True)
class SchedulePolicy:
    """Limits of schedules.

    Attributes:
        min_interval_seconds: Smallest interval a user schedule may have.
        max_catch_up: Most missed slots fired at once by a ``catch_up`` schedule.
        start_attempts: Failed starts of a run before it is FAILED.
        leader_name: Name of the beat leader lease.
    """

    min_interval_seconds: float = 1.0
    max_catch_up: int = 100
    start_attempts: int = 10
    leader_name: str = "beat"


@dataclasses.dataclass(frozen=True)
class BuiltinSchedule:
    """A system schedule: sends a platform task on an interval.

    Attributes:
        id: Stable id, e.g. ``system.sweep``.
        display_name: What it does.
        task: Celery task name.
        interval_seconds: Initial interval (editable through the API).
    """

    id: str
    display_name: str
    task: str
    interval_seconds: float


@dataclasses.dataclass(frozen=True)
class DefaultSchedule:
    """A user-visible schedule created once by default (a user may change or delete it).

    Attributes:
        id: Stable id.
        tenant: Owning tenant.
        display_name: What it does.
        workflow: Workflow name.
        args: Arguments.
        cron: Cron expression.
        time_zone: Zone of the cron expression.
    """

    id: str
    tenant: str
    display_name: str
    workflow: str
    args: Mapping[str, Any]
    cron: str
    time_zone: str = "UTC"


@dataclasses.dataclass(frozen=True)
class SchedulePage:
    """One page of schedules.

    Attributes:
        schedules: The schedules, by id.
        last_id: Keyset position of the next page, ``None`` at the end.
    """

    schedules: list[Schedule]
    last_id: str | None


@dataclasses.dataclass(frozen=True)
class FireReport:
    """What one beat pass did.

    Attributes:
        leader: Whether this beat held the lease.
        fired: Slots recorded.
        started: Runs started.
        failed: Runs that could not be started.
        next_due: Earliest next slot of any schedule.
    """

    leader: bool
    fired: int = 0
    started: int = 0
    failed: int = 0
    next_due: dt.datetime | None = None


def _args_size(args: Mapping[str, Any]) -> int:
    return len(json.dumps(args, default=str))


def _check_operator(schedule: Schedule, operator: bool, verb: str) -> None:
    # System schedules run the platform for every tenant: only its operator tunes or fires them.
    if schedule.system and not operator:
        raise PermissionDenied(
            f"{schedule.name} is a system schedule: only an operator key (scope platform:admin)"
            f" may {verb} it; tenants may read it",
            reason="OPERATOR_ONLY",
            metadata={"schedule": schedule.name},
        )


def _check_display_name(value: str) -> str:
    if len(value) > MAX_DISPLAY_NAME:
        raise InvalidArgument(
            f"display_name must be at most {MAX_DISPLAY_NAME} characters",
            reason="INVALID_DISPLAY_NAME",
            metadata={"field": "display_name"},
        )
    return value


class ScheduleService:
    """Schedules and the beat's firing."""

    def __init__(
        self,
        uow_factory: Callable[[], PlatformUoW],
        launcher: Launcher,
        *,
        policy: SchedulePolicy | None = None,
        builtin: Sequence[BuiltinSchedule] = (),
        defaults: Sequence[DefaultSchedule] = (),
    ) -> None:
        """Creates the service.

        Args:
            uow_factory: Platform unit of work factory.
            launcher: Validates and starts workflows, resolves system tasks' queues.
            policy: Limits.
            builtin: System schedules (created when missing).
            defaults: Default user-visible schedules (created once).
        """
        self._uow = uow_factory
        self._launcher = launcher
        self.policy = policy or SchedulePolicy()
        self._builtin = tuple(builtin)
        self._defaults = tuple(defaults)
        self._ensured = False

    def _validate_args(self, workflow: str, args: Mapping[str, Any]) -> dict[str, Any]:
        if _args_size(args) > MAX_ARGS_BYTES:
            raise InvalidArgument(
                f"args must be at most {MAX_ARGS_BYTES} bytes of JSON",
                reason="INVALID_ARGS",
                metadata={"field": "args"},
            )
        return self._launcher.validate(workflow, args)

    async def _ready(self) -> None:
        # Built-in schedules appear on the first use in each process (and the beat makes sure
        # of them at start): no separate seeding step to forget.
        if not self._ensured:
            await self.ensure_builtin(self._builtin, self._defaults)
            self._ensured = True

    # ------------------------------------------------------------------ API use cases

    async def create_schedule(
        self,
        tenant: str,
        *,
        workflow: str,
        args: Mapping[str, Any] | None = None,
        cron: str | None = None,
        interval_seconds: float | None = None,
        time_zone: str = "UTC",
        enabled: bool = True,
        catch_up: bool = False,
        display_name: str = "",
        request_id: str | None = None,
    ) -> Schedule:
        """Creates a schedule of ``workflow`` (once per AIP-155 ``request_id``).

        Args:
            tenant: Caller's tenant.
            workflow: Workflow name (``platform.ping``...).
            args: Its arguments, validated against its input model.
            cron: Cron expression (or ``interval_seconds``).
            interval_seconds: Interval (or ``cron``).
            time_zone: IANA zone of the cron expression.
            enabled: Whether it fires.
            catch_up: Fire every missed slot after downtime instead of one.
            display_name: Free text.
            request_id: AIP-155 request id: a retry with the same body returns the schedule
                the first call created.

        Returns:
            The schedule, with its ``next_run_time``.

        Raises:
            InvalidArgument: Unknown workflow, bad arguments, bad cron or interval, saying why.
            AlreadyExists: If ``request_id`` was used with a different body.
        """
        idempotency.check_request_id(request_id)
        fingerprint = idempotency.request_fingerprint(
            {
                "workflow": workflow,
                "args": dict(args or {}),
                "cron": cron,
                "interval_seconds": interval_seconds,
                "time_zone": time_zone,
                "enabled": enabled,
                "catch_up": catch_up,
                "display_name": display_name,
            }
        )
        cron, interval_seconds = validate_timing(
            cron, interval_seconds, min_interval_seconds=self.policy.min_interval_seconds
        )
        parse_time_zone(time_zone)
        stored_args = self._validate_args(workflow, args or {})
        now = utcnow()
        schedule = Schedule(
            id=str(new_id()),
            tenant=tenant,
            display_name=_check_display_name(display_name),
            workflow=workflow,
            task=None,
            args=stored_args,
            cron=cron,
            interval_seconds=interval_seconds,
            time_zone=time_zone,
            enabled=enabled,
            catch_up=catch_up,
            system=False,
            create_time=now,
            update_time=now,
            request_id=request_id,
            request_hash=fingerprint if request_id else None,
        )
        schedule.reschedule(now)
        async with self._uow() as uow:
            if await uow.schedules.add(schedule):
                await uow.commit()
                return schedule
        # The request id is taken (a retry, or a concurrent twin that committed first).
        async with self._uow() as uow:
            first = await uow.schedules.get_by_request_id(tenant, str(request_id))
        if first is None:  # pragma: no cover - the first one was deleted in between
            raise idempotency.vanished(str(request_id))
        idempotency.ensure_same_request(
            request_id=str(request_id),
            resource=first.name,
            stored_hash=first.request_hash,
            request_hash=fingerprint,
        )
        return first

    async def get_schedule(self, tenant: str, schedule_id: str) -> Schedule:
        """Returns a schedule the tenant sees.

        Args:
            tenant: Caller's tenant.
            schedule_id: Its id.

        Returns:
            The schedule.

        Raises:
            NotFound: If it does not exist (or belongs to another tenant).
        """
        await self._ready()
        async with self._uow() as uow:
            schedule = await uow.schedules.get(schedule_id, tenant)
        if schedule is None:
            raise self._not_found(schedule_id)
        return schedule

    async def list_schedules(
        self, tenant: str, *, page_size: int, after_id: str | None = None
    ) -> SchedulePage:
        """Lists the tenant's schedules and the system ones, by id.

        Args:
            tenant: Caller's tenant.
            page_size: Page size.
            after_id: Keyset position.

        Returns:
            The page.
        """
        await self._ready()
        async with self._uow() as uow:
            found = await uow.schedules.list(tenant, after_id=after_id, limit=page_size + 1)
        page = found[:page_size]
        return SchedulePage(schedules=page, last_id=page[-1].id if len(found) > page_size else None)

    async def update_schedule(
        self, tenant: str, schedule_id: str, changes: Mapping[str, Any], *, operator: bool = False
    ) -> Schedule:
        """Changes a schedule (only the fields in ``changes``); takes effect at the beat's next
        pass, without a restart. A timing change recomputes ``next_run_time`` from now.

        Args:
            tenant: Caller's tenant.
            schedule_id: Its id.
            changes: Field -> new value (``cron`` replaces ``interval_seconds`` and vice versa).
            operator: Whether the caller is the platform's operator (system schedules).

        Returns:
            The changed schedule.

        Raises:
            NotFound: If it does not exist.
            PermissionDenied: If it is a system schedule and the caller is not the operator.
            InvalidArgument: If a value is invalid.
            FailedPrecondition: If a system schedule field other than its interval is changed.
        """
        unknown = set(changes) - UPDATABLE
        if unknown:
            raise InvalidArgument(
                f"cannot change {', '.join(sorted(unknown))}; updatable fields:"
                f" {', '.join(sorted(UPDATABLE))}",
                reason="INVALID_UPDATE",
            )
        await self._ready()
        async with self._uow() as uow:
            schedule = await uow.schedules.get(schedule_id, tenant, for_update=True)
            if schedule is None:
                raise self._not_found(schedule_id)
            _check_operator(schedule, operator, "change")
            if schedule.system and set(changes) - SYSTEM_UPDATABLE:
                raise FailedPrecondition(
                    f"{schedule.name} is a system schedule: only interval_seconds can change",
                    reason="SYSTEM_SCHEDULE",
                )
            now = utcnow()
            self._apply(schedule, changes, now)
            await uow.schedules.save(schedule)
            await uow.commit()
        return schedule

    def _apply(self, schedule: Schedule, changes: Mapping[str, Any], now: dt.datetime) -> None:
        cron = changes.get("cron", schedule.cron)
        interval = changes.get("interval_seconds", schedule.interval_seconds)
        if changes.get("cron") is not None and "interval_seconds" not in changes:
            interval = None
        if changes.get("interval_seconds") is not None and "cron" not in changes:
            cron = None
        minimum = 0.1 if schedule.system else self.policy.min_interval_seconds
        cron, interval = validate_timing(cron, interval, min_interval_seconds=minimum)
        time_zone = str(changes.get("time_zone", schedule.time_zone))
        parse_time_zone(time_zone)
        if "workflow" in changes or "args" in changes:
            workflow = str(changes.get("workflow") or schedule.workflow)
            args = changes["args"] if "args" in changes else schedule.args
            schedule.args = self._validate_args(workflow, args or {})
            schedule.workflow = workflow
        if "display_name" in changes:
            schedule.display_name = _check_display_name(str(changes["display_name"] or ""))
        if "catch_up" in changes:
            schedule.catch_up = bool(changes["catch_up"])
        retime = (
            cron != schedule.cron
            or interval != schedule.interval_seconds
            or time_zone != schedule.time_zone
            or ("enabled" in changes and bool(changes["enabled"]) != schedule.enabled)
        )
        schedule.cron, schedule.interval_seconds, schedule.time_zone = cron, interval, time_zone
        if "enabled" in changes:
            schedule.enabled = bool(changes["enabled"])
        if retime or schedule.next_run_time is None:
            schedule.reschedule(now)
        schedule.update_time = now

    async def delete_schedule(
        self, tenant: str, schedule_id: str, *, operator: bool = False
    ) -> None:
        """Deletes a schedule and its run history.

        Args:
            tenant: Caller's tenant.
            schedule_id: Its id.
            operator: Whether the caller is the platform's operator (system schedules).

        Raises:
            NotFound: If it does not exist.
            PermissionDenied: For a system schedule if the caller is not the operator.
            FailedPrecondition: For a system schedule.
        """
        await self._ready()
        async with self._uow() as uow:
            schedule = await uow.schedules.get(schedule_id, tenant, for_update=True)
            if schedule is None:
                raise self._not_found(schedule_id)
            _check_operator(schedule, operator, "delete")
            schedule.check_deletable()
            await uow.schedules.delete(schedule_id)
            await uow.commit()

    async def run_schedule(
        self, tenant: str, schedule_id: str, *, operator: bool = False
    ) -> ScheduleRun:
        """Fires a schedule now (``:run``), outside its timing; ``next_run_time`` is unchanged.

        Args:
            tenant: Caller's tenant.
            schedule_id: Its id.
            operator: Whether the caller is the platform's operator (system schedules).

        Returns:
            The run, STARTED with its operation (FAILED with the reason otherwise).

        Raises:
            NotFound: If it does not exist.
            PermissionDenied: For a system schedule if the caller is not the operator.
        """
        await self._ready()
        async with self._uow() as uow:
            schedule = await uow.schedules.get(schedule_id, tenant, for_update=True)
            if schedule is None:
                raise self._not_found(schedule_id)
            _check_operator(schedule, operator, "run")
            run = await self._record(uow, schedule, utcnow(), fired_by="api", manual=True)
            if run is None:  # pragma: no cover - two :run calls in the same microsecond
                raise FailedPrecondition("that slot already fired; try again", reason="RETRY")
            schedule.last_run_time = max(run.fire_time, schedule.last_run_time or run.fire_time)
            await uow.schedules.save(schedule)
            await uow.commit()
        if run.state == RunState.PENDING:
            run = await self._start(run)
        return run

    async def list_runs(self, tenant: str, schedule_id: str, *, limit: int) -> list[ScheduleRun]:
        """Returns a schedule's latest runs, newest first.

        Args:
            tenant: Caller's tenant.
            schedule_id: Its id.
            limit: Maximum runs.

        Returns:
            Runs.

        Raises:
            NotFound: If it does not exist.
        """
        await self._ready()
        async with self._uow() as uow:
            if await uow.schedules.get(schedule_id, tenant) is None:
                raise self._not_found(schedule_id)
            return await uow.schedule_runs.list(schedule_id, limit)

    async def ensure_builtin(
        self, builtin: Sequence[BuiltinSchedule], defaults: Sequence[DefaultSchedule] = ()
    ) -> int:
        """Creates the system schedules that are missing (edits of existing ones are kept) and
        the default schedules never created before.

        Args:
            builtin: System schedules.
            defaults: Default user-visible schedules (created once: deleting one is final).

        Returns:
            Schedules created.
        """
        now = utcnow()
        created = 0
        async with self._uow() as uow:
            for spec in builtin:
                schedule = Schedule(
                    id=spec.id,
                    tenant=SYSTEM_TENANT,
                    display_name=spec.display_name,
                    workflow=None,
                    task=spec.task,
                    args={},
                    cron=None,
                    interval_seconds=spec.interval_seconds,
                    time_zone="UTC",
                    enabled=True,
                    catch_up=False,
                    system=True,
                    create_time=now,
                    update_time=now,
                )
                schedule.reschedule(now)
                created += await uow.schedules.add_if_absent(schedule)
            for default in defaults:
                try:
                    args = self._launcher.validate(default.workflow, default.args)
                except InvalidArgument as exc:
                    # A default that no longer fits its workflow must not break the API.
                    log.warning("default schedule %s skipped: %s", default.id, exc.message)
                    continue
                if not await uow.schedules.seed_once(default.id, now):
                    continue
                schedule = Schedule(
                    id=default.id,
                    tenant=default.tenant,
                    display_name=default.display_name,
                    workflow=default.workflow,
                    task=None,
                    args=args,
                    cron=validate_timing(default.cron, None, min_interval_seconds=1)[0],
                    interval_seconds=None,
                    time_zone=default.time_zone,
                    enabled=True,
                    catch_up=False,
                    system=False,
                    create_time=now,
                    update_time=now,
                )
                schedule.reschedule(now)
                created += await uow.schedules.add_if_absent(schedule)
            await uow.commit()
        return created

    # ------------------------------------------------------------------ beat

    async def acquire_leadership(self, holder: str, node: str, lease_seconds: float) -> bool:
        """Takes or renews the leader lease, and records this beat as alive.

        Args:
            holder: This beat process's unique id.
            node: Its display name.
            lease_seconds: Lease length (renew every third of it).

        Returns:
            True if this beat is the leader.
        """
        async with self._uow() as uow:
            held = await uow.beat.acquire(self.policy.leader_name, holder, node, lease_seconds)
            await uow.beat.forget_nodes(max(60.0, lease_seconds * 10))
            await uow.commit()
        return held

    async def release_leadership(self, holder: str) -> None:
        """Gives the lease up (clean shutdown): another beat takes over at its next renewal.

        Args:
            holder: This beat process's unique id.
        """
        async with self._uow() as uow:
            await uow.beat.release(self.policy.leader_name, holder)
            await uow.commit()

    async def leader_status(self, seen_within: float) -> tuple[LeaderLease | None, list[BeatNode]]:
        """Returns the lease and the beats seen recently (status, metrics).

        Args:
            seen_within: Seconds a beat counts as alive after its last heartbeat.

        Returns:
            ``(lease, nodes)``.
        """
        async with self._uow() as uow:
            return (
                await uow.beat.lease(self.policy.leader_name),
                await uow.beat.nodes(seen_within),
            )

    async def fire_due(self, holder: str, *, limit: int = 100) -> FireReport:
        """Fires every due slot, if ``holder`` holds the lease, then starts pending runs.

        Args:
            holder: This beat process's unique id.
            limit: Maximum schedules per pass.

        Returns:
            What was done, and when the next slot is due.
        """
        fired = 0
        async with self._uow() as uow:
            # The fence: a beat that lost the lease (paused, partitioned) fires nothing.
            if not await uow.beat.holds(self.policy.leader_name, holder):
                return FireReport(leader=False)
            now = utcnow()
            for schedule in await uow.schedules.due(now, limit):
                slots, next_run_time = schedule.due_slots(
                    now, max_catch_up=self.policy.max_catch_up
                )
                for slot in slots:
                    run = await self._record(uow, schedule, slot, fired_by=holder)
                    fired += run is not None
                schedule.mark_fired(slots, next_run_time)
                await uow.schedules.save(schedule)
            next_due = await uow.schedules.next_due()
            await uow.commit()
        started, failed = await self.start_pending(limit=limit)
        return FireReport(
            leader=True, fired=fired, started=started, failed=failed, next_due=next_due
        )

    async def _record(
        self,
        uow: PlatformUoW,
        schedule: Schedule,
        fire_time: dt.datetime,
        *,
        fired_by: str,
        manual: bool = False,
    ) -> ScheduleRun | None:
        run = ScheduleRun(
            schedule_id=schedule.id,
            fire_time=fire_time,
            tenant=schedule.tenant,
            workflow=schedule.workflow,
            task=schedule.task,
            args=dict(schedule.args),
            state=RunState.PENDING,
            create_time=utcnow(),
            fired_by=fired_by,
            manual=manual,
        )
        if schedule.task is not None:
            queue = self._launcher.task_queue(schedule.task)
            if queue is None:
                run.state, run.error = RunState.FAILED, f"task {schedule.task} is not installed"
            else:
                run.state = RunState.STARTED
        if not await uow.schedule_runs.add(run):
            return None
        if schedule.task is not None and run.state == RunState.STARTED:
            # A system task goes out through the outbox in the slot's own transaction.
            await uow.outbox.add(
                OutboxMessage(
                    task_name=schedule.task,
                    queue=str(self._launcher.task_queue(schedule.task)),
                    args=[],
                    kwargs=dict(schedule.args),
                    task_id=run.request_id,
                    headers={"correlation_id": f"schedule:{schedule.id}"},
                )
            )
        return run

    async def start_pending(self, *, limit: int = 100) -> tuple[int, int]:
        """Starts the workflows of recorded runs not started yet (also those a crashed beat
        left behind; the request id makes a repeated start return the same operation).

        Args:
            limit: Maximum runs.

        Returns:
            ``(started, failed)``.
        """
        async with self._uow() as uow:
            pending = await uow.schedule_runs.pending(limit)
        started = failed = 0
        for run in pending:
            done = await self._start(run)
            started += done.state == RunState.STARTED
            failed += done.state == RunState.FAILED
        return started, failed

    async def _start(self, run: ScheduleRun) -> ScheduleRun:
        assert run.workflow is not None
        try:
            operation = await self._launcher.start(
                run.workflow,
                run.args,
                tenant=run.tenant,
                request_id=run.request_id,
                correlation_id=f"schedule:{run.schedule_id}",
            )
        except DomainError as exc:
            run.attempts += 1
            run.error = exc.message
            transient = isinstance(exc, TransientError) or exc.code == "UNAVAILABLE"
            if not transient or run.attempts >= self.policy.start_attempts:
                run.state = RunState.FAILED
            log.warning("schedule %s: start failed: %s", run.schedule_id, exc.message)
        except Exception as exc:  # a database or broker outage: retried at the next pass
            run.attempts += 1
            run.error = f"{type(exc).__name__}: {exc}"[:2000]
            if run.attempts >= self.policy.start_attempts:
                run.state = RunState.FAILED
            log.warning("schedule %s: start failed: %s", run.schedule_id, run.error)
        else:
            run.state, run.operation, run.error = RunState.STARTED, operation, None
        async with self._uow() as uow:
            await uow.schedule_runs.update(
                run.schedule_id,
                run.fire_time,
                state=run.state,
                operation=run.operation,
                attempts=run.attempts,
                error=run.error,
            )
            if run.operation is not None:
                await uow.schedules.set_last_operation(
                    run.schedule_id, run.fire_time, run.operation
                )
            await uow.commit()
        return run

    async def purge_runs(self, older_than: dt.datetime, *, limit: int = 10_000) -> int:
        """Deletes run history older than ``older_than``.

        Args:
            older_than: Cut-off.
            limit: Maximum rows.

        Returns:
            Rows deleted.
        """
        async with self._uow() as uow:
            count = await uow.schedule_runs.purge(older_than, limit)
            await uow.commit()
        return count

    @staticmethod
    def _not_found(schedule_id: str) -> NotFound:
        return NotFound(
            f"schedules/{schedule_id} does not exist; list schedules with GET /v1/schedules",
            reason="SCHEDULE_NOT_FOUND",
        )
